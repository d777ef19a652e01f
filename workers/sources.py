"""Decision sources: who tells the train loop to grow, pause or stop, and who hears what happened.

The loop's rank 0 talks to one :class:`DecisionSource`:

* every ``observe_every`` steps it calls ``decide(observation)`` and gets a :class:`Directive`
  (grow with a ``GrowthOp``, pause, stop, checkpoint now, or nothing);
* while it waits for data or is paused it calls ``poll(status)`` every ``poll_interval`` seconds, so a
  stop or a resume arrives without any training step;
* it reports what happened: ``on_status`` (starting, waiting for data, training, paused, stopped),
  ``on_growth`` (a :class:`GrowthEvent`, with the validation loss just before and after, the
  preservation error and the pause), ``on_growth_failed(op, step, error)`` (a growth that could not
  be applied; the model is unchanged) and ``on_checkpoint`` (a :class:`CheckpointEvent`, with where
  the checkpoint was persisted);
* ``state_dict()`` is saved in every checkpoint and given back with ``load_state_dict`` on resume.

A source is passed to the trainer inside ``train_loop_config``, so it is cloudpickled to every
worker; only rank 0 calls it. Everything it receives and returns is a JSON-serialisable pydantic
model, so it can forward them anywhere (a Ray actor, Redis, a file).

Provided here: :class:`ScriptedSource` (tests, benchmarks, demos: "widen ×2 at step 200"),
:class:`ControllerSource` (a ``growth_policy.Controller`` in-process), :class:`ActorSource` (forwards
every call to a Ray actor, e.g. the service's per-job supervisor) and :class:`JsonlRecorder` (wraps
any source and appends every call to a JSON-lines file).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from growth_policy.types import Decision, GrowthOp, Observation
from workers.checkpoint import CheckpointKind

logger = logging.getLogger(__name__)

LoopState = Literal["starting", "waiting_for_data", "training", "converged", "paused", "stopped"]


class Directive(BaseModel):
    """What the loop should do now. The default does nothing and keeps training."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    op: GrowthOp | None = Field(default=None, description="Grow now with this transform.")
    reason: str = ""
    policy: str = Field(default="", description="What decided: a policy, 'manual', 'scripted'.")
    numbers: dict[str, float | int | str] = Field(default_factory=dict)
    pause: bool = Field(
        default=False,
        description="The state wanted from now on: True pauses (or stays paused), False runs.",
    )
    stop: bool = Field(default=False, description="Checkpoint and end the loop.")
    checkpoint: bool = Field(default=False, description="Write a checkpoint now.")
    wake: bool = Field(
        default=False,
        description="Leave the converged state and train now, without new data (a resume or grow "
        "command); ignored in any other state.",
    )

    @classmethod
    def from_decision(
        cls, decision: Decision, *, pause: bool = False, stop: bool = False
    ) -> Directive:
        """A growth controller's decision as a directive: its op (grow, or not when None), reason,
        policy and numbers, with the pause and stop state wanted besides (a controller decides
        neither)."""
        return cls(
            op=decision.op,
            reason=decision.reason,
            policy=decision.policy,
            numbers=dict(decision.numbers),
            pause=pause,
            stop=stop,
        )


class LoopStatus(BaseModel):
    """The loop's state, reported when it changes (and given to ``poll``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    state: LoopState
    step: int = Field(ge=0)
    generation: int = Field(ge=0)
    dataset_version: int = Field(ge=0, default=0)
    dataset_size: int = Field(ge=0, default=0)
    detail: dict[str, Any] = Field(
        default_factory=dict,
        description="'starting': world_size, pids (per rank), device, resumed_from (a checkpoint "
        "summary or null). 'converged': reason, numbers, held ('best' or 'last'), held_step, "
        "held_val_loss, held_val_metric, budget (true when a per-version budget was spent). "
        "'training' after 'converged': woken_by ('data' or 'command'). 'stopped': reason, "
        "budget (true when the total budget was spent). Every state but 'starting': compute "
        "(workers.compute.ComputeMeter.snapshot).",
    )
    wall_time: float = Field(default_factory=time.time)


class CheckpointEvent(BaseModel):
    """A checkpoint that was persisted."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: CheckpointKind
    step: int = Field(ge=0)
    generation: int = Field(ge=0)
    param_count: int = Field(ge=0)
    manifest_version: int = Field(ge=0)
    path: str = Field(description="Where it was persisted: a folder path or a storage URI.")
    durable: bool = Field(
        description="True for the copies under the job's checkpoint root (kept for good); "
        "False for the runtime's own, which it may delete later (Ray Train's "
        "CheckpointConfig(num_to_keep)).",
    )
    ray_path: str | None = Field(
        default=None,
        description="The runtime's copy (Ray Train's run storage; LocalRuntime's run folder), "
        "if different.",
    )
    seconds: float = Field(ge=0, description="Time to write and persist it.")
    wall_time: float = Field(default_factory=time.time)


class GrowthEvent(BaseModel):
    """A growth that was applied on every rank, with what it did to the function and the clock."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    step: int = Field(ge=0, description="The step at which the decision was applied.")
    generation_before: int = Field(ge=0)
    generation_after: int = Field(ge=0)
    op: GrowthOp
    reason: str = ""
    policy: str = ""
    record: dict[str, Any] | None = Field(
        default=None, description="net2net's growth record (None for shrink_perturb)."
    )
    params_before: int = Field(ge=0)
    params_after: int = Field(ge=0)
    val_loss_before: float | None = Field(
        default=None,
        description="Validation loss (eval mode) of the model before the transform: the one the "
        "deciding observation measured at this step (same weights), else measured right before.",
    )
    val_loss_after: float | None = Field(
        default=None, description="Validation loss (eval mode) of the grown model, right after."
    )
    val_metric_before: float | None = None
    val_metric_after: float | None = None
    max_abs_error: float | None = Field(
        default=None, description="net2net's max |f_new(x) - f_old(x)| on the example batch."
    )
    ranks_identical: bool = Field(description="All ranks hold bit-identical parameters.")
    rank_digests: list[str] = Field(default_factory=list)
    transform_s: float = Field(ge=0, description="net2net transform, optimizer transfer, re-wrap.")
    eval_s: float = Field(ge=0, description="Validation before and after (rank 0).")
    checkpoint_s: float = Field(
        ge=0,
        description="Closing and opening checkpoints, in the pause: their snapshots when they are "
        "written in the background (WorkerConfig.background_checkpoints), else the writes.",
    )
    checkpoint_write_s: float | None = Field(
        default=None,
        description="Background writes of the closing and opening checkpoints, while training "
        "went on (None: written in the pause).",
    )
    first_step_s: float | None = Field(
        default=None, description="The first training step of the grown model."
    )
    memory_before_bytes: int | None = Field(
        default=None, description="CUDA: device memory allocated at the decision."
    )
    memory_peak_bytes: int | None = Field(
        default=None,
        description="CUDA: the most device memory allocated from the decision to the end of the "
        "grown model's first step.",
    )
    pause_s: float = Field(
        ge=0, description="From the decision to the end of the first step of the grown model."
    )
    closing_checkpoint: CheckpointEvent | None = Field(
        default=None, description="Generation N's last state, before the transform."
    )
    opening_checkpoint: CheckpointEvent | None = Field(
        default=None, description="Generation N+1's first state, right after the transform."
    )
    wall_time: float = Field(default_factory=time.time)


class GrowthFailure(BaseModel):
    """A growth that could not be applied; the model is left as it was on every rank."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    op: GrowthOp
    step: int = Field(ge=0)
    error: str


@runtime_checkable
class DecisionSource(Protocol):
    """What the train loop's rank 0 asks for decisions and tells about events."""

    def decide(self, observation: Observation) -> Directive:
        """Called every ``observe_every`` training steps."""
        ...

    def poll(self, status: LoopStatus) -> Directive:
        """Called every ``poll_interval`` seconds while waiting for data or paused."""
        ...

    def on_status(self, status: LoopStatus) -> None: ...

    def on_growth(self, event: GrowthEvent) -> None: ...

    def on_growth_failed(self, op: GrowthOp, step: int, error: str) -> None:
        """A growth decided at ``step`` could not be applied; the model is unchanged."""
        ...

    def on_checkpoint(self, event: CheckpointEvent) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state, saved in every checkpoint."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class BaseSource:
    """A source that never decides anything; subclass and override what you need."""

    def decide(self, observation: Observation) -> Directive:
        return Directive()

    def poll(self, status: LoopStatus) -> Directive:
        return Directive(pause=status.state == "paused")

    def on_status(self, status: LoopStatus) -> None:
        return None

    def on_growth(self, event: GrowthEvent) -> None:
        return None

    def on_checkpoint(self, event: CheckpointEvent) -> None:
        return None

    def on_growth_failed(self, op: GrowthOp, step: int, error: str) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


class ScriptedAction(BaseModel):
    """One step of a script: fires once, at the first observation that meets every condition."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    at_step: int = Field(ge=0)
    min_dataset_version: int = Field(default=0, ge=0)
    min_dataset_size: int = Field(default=0, ge=0)
    op: GrowthOp | None = None
    pause_seconds: float | None = Field(default=None, gt=0, description="Pause, then resume.")
    pause_until_dataset_version: int | None = Field(
        default=None, ge=1, description="Pause until the manifest reaches this version."
    )
    stop: bool = False
    checkpoint: bool = False
    reason: str = "scripted"


class ScriptedSource(BaseSource):
    """Decisions from a script, e.g. widen ×2 at step 200, deepen after ``act1`` at step 400.

    Which actions have fired is part of the state, so a resumed run does not repeat them (unless it
    resumed from before they fired, in which case it repeats them at the same steps). With
    ``stop_file``, the run also stops at the next observation or poll once that file exists (how a
    test or an operator ends a scripted run early).
    """

    def __init__(self, actions: list[ScriptedAction], *, stop_file: str | None = None) -> None:
        self.actions = list(actions)
        self.stop_file = stop_file
        self.fired: list[int] = []
        self._resume_at: float | None = None
        self._resume_version: int | None = None

    def _stop_requested(self) -> bool:
        return self.stop_file is not None and Path(self.stop_file).exists()

    def decide(self, observation: Observation) -> Directive:
        if self._stop_requested():
            return Directive(stop=True, reason=f"stop file {self.stop_file} exists")
        for i, action in enumerate(self.actions):
            if i in self.fired:
                continue
            if (
                observation.step >= action.at_step
                and observation.dataset_version >= action.min_dataset_version
                and observation.dataset_size >= action.min_dataset_size
            ):
                self.fired.append(i)
                if action.pause_seconds is not None:
                    self._resume_at = time.monotonic() + action.pause_seconds
                self._resume_version = action.pause_until_dataset_version
                pause = action.pause_seconds is not None or (
                    action.pause_until_dataset_version is not None
                    and observation.dataset_version < action.pause_until_dataset_version
                )
                return Directive(
                    op=action.op,
                    reason=action.reason,
                    policy="scripted",
                    pause=pause,
                    stop=action.stop,
                    checkpoint=action.checkpoint,
                )
        return Directive()

    def poll(self, status: LoopStatus) -> Directive:
        if self._stop_requested():
            return Directive(stop=True, reason=f"stop file {self.stop_file} exists")
        if self._resume_at is not None and time.monotonic() >= self._resume_at:
            self._resume_at = None
        if self._resume_version is not None and status.dataset_version >= self._resume_version:
            self._resume_version = None
        return Directive(pause=self._resume_at is not None or self._resume_version is not None)

    def state_dict(self) -> dict[str, Any]:
        return {"fired": list(self.fired)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.fired = [int(i) for i in state.get("fired", [])]


class ControllerSource(BaseSource):
    """A ``growth_policy.Controller`` running in the worker process (rank 0).

    ``config`` is the job's ``GrowthPolicyConfig`` (None: its defaults) and ``seed`` the job's
    growth seed. The controller is built on first use, in the worker, so only the config and the
    state travel. A growth applied is reported back with ``notify_grown`` and a failed one with
    ``notify_failed``, so the cooldown starts at the step actually applied.
    """

    def __init__(self, config: Any = None, *, seed: int = 0) -> None:
        self.config = config
        self.seed = seed
        self._controller: Any = None
        self._pending_state: dict[str, Any] | None = None

    @property
    def controller(self) -> Any:
        if self._controller is None:
            from growth_policy.controller import Controller

            self._controller = Controller(self.config, seed=self.seed)
            if self._pending_state is not None:
                self._controller.load_state_dict(self._pending_state)
                self._pending_state = None
        return self._controller

    def decide(self, observation: Observation) -> Directive:
        return Directive.from_decision(self.controller.observe(observation))

    def on_growth(self, event: GrowthEvent) -> None:
        self.controller.notify_grown(
            step=event.step, generation=event.generation_after, op=event.op
        )

    def on_growth_failed(self, op: GrowthOp, step: int, error: str) -> None:
        self.controller.notify_failed(step=step, error=error)

    def state_dict(self) -> dict[str, Any]:
        return {"controller": self.controller.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "controller" not in state:
            return
        if self._controller is None:
            self._pending_state = state["controller"]
        else:
            self._controller.load_state_dict(state["controller"])

    def __getstate__(self) -> dict[str, Any]:
        # Only the config travels; the controller is rebuilt (and its state restored) in the worker.
        state = dict(self.__dict__)
        if self._controller is not None:
            state["_pending_state"] = self._controller.state_dict()
        state["_controller"] = None
        return state


class ActorSource(BaseSource):
    """Forwards every call to a Ray actor that has the :class:`DecisionSource` methods.

    Decisions and polls wait for the actor's answer at most ``timeout`` seconds; past that the loop
    keeps training (and keeps its pause state) rather than stall, and the next call asks again.
    Events are sent without waiting (Ray runs one caller's calls to an actor in order).
    """

    def __init__(self, actor: Any, *, timeout: float = 30.0) -> None:
        self.actor = actor
        self.timeout = timeout
        self._paused = False

    def _ask(self, method: str, arg: BaseModel) -> Directive:
        import ray

        try:
            answer = ray.get(getattr(self.actor, method).remote(arg), timeout=self.timeout)
        except Exception as exc:  # a slow or restarting supervisor must not stop training
            logger.warning("decision source actor: %s failed (%s); carrying on", method, exc)
            return Directive(pause=self._paused)
        directive = answer if isinstance(answer, Directive) else Directive.model_validate(answer)
        self._paused = directive.pause
        return directive

    def decide(self, observation: Observation) -> Directive:
        return self._ask("decide", observation)

    def poll(self, status: LoopStatus) -> Directive:
        return self._ask("poll", status)

    def on_status(self, status: LoopStatus) -> None:
        self.actor.on_status.remote(status)

    def on_growth(self, event: GrowthEvent) -> None:
        self.actor.on_growth.remote(event)

    def on_checkpoint(self, event: CheckpointEvent) -> None:
        self.actor.on_checkpoint.remote(event)

    def on_growth_failed(self, op: GrowthOp, step: int, error: str) -> None:
        self.actor.on_growth_failed.remote(op, step, error)

    def state_dict(self) -> dict[str, Any]:
        import ray

        state: dict[str, Any] = ray.get(self.actor.state_dict.remote(), timeout=self.timeout)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        import ray

        ray.get(self.actor.load_state_dict.remote(state), timeout=self.timeout)


class JsonlRecorder(BaseSource):
    """Wraps a source and appends every call and answer to a JSON-lines file (one writer: rank 0).

    Each line is ``{"type": "observation"|"directive"|"status"|"growth"|"checkpoint", ...}``.
    """

    def __init__(self, inner: DecisionSource, path: str | Path) -> None:
        self.inner = inner
        self.path = str(path)
        self._lock = threading.Lock()

    def _write(self, kind: str, payload: BaseModel) -> None:
        line = json.dumps({"type": kind, **payload.model_dump(mode="json")})
        with self._lock:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            with Path(self.path).open("a") as f:
                f.write(line + "\n")

    def decide(self, observation: Observation) -> Directive:
        self._write("observation", observation)
        directive = self.inner.decide(observation)
        if directive != Directive():
            self._write("directive", directive)
        return directive

    def poll(self, status: LoopStatus) -> Directive:
        return self.inner.poll(status)

    def on_status(self, status: LoopStatus) -> None:
        self._write("status", status)
        self.inner.on_status(status)

    def on_growth(self, event: GrowthEvent) -> None:
        self._write("growth", event)
        self.inner.on_growth(event)

    def on_checkpoint(self, event: CheckpointEvent) -> None:
        self._write("checkpoint", event)
        self.inner.on_checkpoint(event)

    def on_growth_failed(self, op: GrowthOp, step: int, error: str) -> None:
        self._write("growth_failed", GrowthFailure(op=op, step=step, error=error))
        self.inner.on_growth_failed(op, step, error)

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)

    def __getstate__(self) -> dict[str, Any]:
        return {"inner": self.inner, "path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.inner = state["inner"]
        self.path = state["path"]
        self._lock = threading.Lock()


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records a :class:`JsonlRecorder` wrote (an absent file reads as none)."""
    p = Path(path)
    if not p.exists():
        return []
    out = []
    for line in p.read_text().splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line being written right now
                continue
    return out
