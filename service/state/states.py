"""The job state machine and the command vocabulary.

::

    pending ──▶ waiting_for_data ◀──▶ training ◀──▶ growing
       │              │   ▲              │  ▲          │
       │              ▼   │              ▼  │          │
       └────────────▶ paused ◀───────────┘  │          │
                         │  └───────────────┘          │
                     training ◀──▶ converged ──▶ paused
          pending ──▶ converged (a job restarted while converged, on unchanged data)
          every non-terminal state ──▶ stopped | failed (terminal, failed carries a reason)
          every non-terminal state ──▶ pending (the supervisor restarts the job after a fault)

``converged`` waits for new data, using no compute: the job has learned what its data holds, or
spent its compute budget for this data version (the reason says which, with its numbers). The next
push, or a resume or grow command, takes it back to ``training``.

The API creates a job as ``pending``; every later change is made by the job's supervisor
(``service.runtime.supervisor``) through :meth:`service.state.store.RedisStore.set_status`, which checks the transition
atomically and writes a ``status`` event. Commands (grow, pause, resume, stop) are requests: the
API queues them; the supervisor applies them and records their outcome.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    PENDING = "pending"
    WAITING_FOR_DATA = "waiting_for_data"
    TRAINING = "training"
    CONVERGED = "converged"
    GROWING = "growing"
    PAUSED = "paused"
    STOPPED = "stopped"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.STOPPED, JobStatus.FAILED})

_S = JobStatus
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    _S.PENDING: frozenset(
        {_S.WAITING_FOR_DATA, _S.TRAINING, _S.CONVERGED, _S.PAUSED, _S.STOPPED, _S.FAILED}
    ),
    _S.WAITING_FOR_DATA: frozenset({_S.TRAINING, _S.PAUSED, _S.PENDING, _S.STOPPED, _S.FAILED}),
    _S.TRAINING: frozenset(
        {
            _S.GROWING,
            _S.WAITING_FOR_DATA,
            _S.CONVERGED,
            _S.PAUSED,
            _S.PENDING,
            _S.STOPPED,
            _S.FAILED,
        }
    ),
    _S.CONVERGED: frozenset({_S.TRAINING, _S.PAUSED, _S.PENDING, _S.STOPPED, _S.FAILED}),
    # A growth finishes (or fails) before anything else happens to the job.
    _S.GROWING: frozenset({_S.TRAINING, _S.PENDING, _S.STOPPED, _S.FAILED}),
    _S.PAUSED: frozenset({_S.TRAINING, _S.WAITING_FOR_DATA, _S.PENDING, _S.STOPPED, _S.FAILED}),
    _S.STOPPED: frozenset(),
    _S.FAILED: frozenset(),
}


def can_transition(current: JobStatus, new: JobStatus) -> bool:
    """Whether ``current → new`` is allowed; staying in a state is always allowed."""
    return new == current or new in TRANSITIONS[current]


def allowed_sources(new: JobStatus) -> list[JobStatus]:
    """The states from which ``new`` may be entered (``new`` itself included)."""
    return [s for s in JobStatus if can_transition(s, new)]


class CommandKind(StrEnum):
    GROW = "grow"
    PAUSE = "pause"
    RESUME = "resume"
    STOP = "stop"


class CommandStatus(StrEnum):
    """``queued`` → ``in_progress`` → one of ``done``, ``rejected`` (not applicable, e.g. a
    growth the guards refuse), ``failed`` (tried and broke)."""

    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    DONE = "done"
    REJECTED = "rejected"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        return self in (CommandStatus.DONE, CommandStatus.REJECTED, CommandStatus.FAILED)


class EventType(StrEnum):
    """What a job's event stream carries (``data`` of each event in brackets)."""

    STATUS = "status"  # {status, previous, reason}
    OBSERVATION = "observation"  # growth_policy.Observation (without the model summary)
    DECISION = "decision"  # growth_policy.Decision
    COMMAND = "command"  # {command_id, kind, status, detail}: queued and every outcome
    DATA = "data"  # {version, accepted, train_samples, val_samples}
    GENERATION = "generation"  # {generation, ...}: a generation opened
    AUDIT = "audit"  # {key_id, method, route, status}: a mutating request (keys on)
