"""A supervisor's commands: what it has accepted, what the loop should do, and each outcome.

Commands (grow, pause, resume, stop) arrive through the job's command stream in Redis.
:class:`CommandBook` accepts each once, turns it into what the train loop is told at its next
step (:meth:`CommandBook.directive`), and records its outcome on the command's record. A grow
command is queued in the growth controller under the command's id, so the controller's decision,
the growth event and a failure all name the command they answer (``Decision.request_id``, the
id returned by ``Controller.on_growth`` and ``Controller.notify_failed``).

A growth sent to the workers and lost with them (they failed before its checkpoint) is not sent
again, since it may be what made them fail: its command fails and says where the job resumed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from growth_policy import Controller, Decision, GrowthOp, GrowthPolicyConfig
from growth_policy.planning import growth_op_from_request
from service.state.states import CommandKind, CommandStatus
from service.state.store import RedisStore, StoreError
from workers.sources import Directive

logger = logging.getLogger(__name__)

_ANSWERED_AT_END = (CommandKind.GROW, CommandKind.PAUSE, CommandKind.RESUME)


class CommandBook:
    """The commands of one job's supervisor. Thread-safe: the command reader and the loop's
    calls share it, and the controller is only touched under :attr:`lock`."""

    def __init__(
        self,
        store: RedisStore,
        job_id: str,
        controller: Controller,
        growth: GrowthPolicyConfig,
        *,
        lock: threading.RLock | None = None,
    ) -> None:
        self.store = store
        self.job_id = job_id
        self.controller = controller
        self.growth = growth
        self.lock = lock or threading.RLock()
        self.paused = False
        self.stop_requested = False
        # A resume or grow command wakes a converged loop (Directive.wake) at its next poll.
        self._wake = False
        self.stop_reason = "stopped by command"
        self._pending: dict[CommandKind, list[str]] = {k: [] for k in CommandKind}
        self._seen: set[str] = set()
        # Grow commands in progress → their op (None: the controller chooses), and the one whose
        # growth went to the workers and has not come back as a growth or a failure.
        self._grow_ops: dict[str, GrowthOp | None] = {}
        self._issued: str | None = None

    # --- commands in --------------------------------------------------------------------------
    def accept(self, command_id: str, kind: CommandKind, args: dict[str, Any]) -> None:
        """Take a command read from the stream (once: a command seen before is ignored)."""
        if command_id in self._seen:
            return
        self._seen.add(command_id)
        op: GrowthOp | None = None
        if kind == CommandKind.GROW:
            try:
                op = growth_op_from_request(args, self.growth)
            except ValueError as exc:
                self.answer(command_id, CommandStatus.REJECTED, f"invalid growth: {exc}")
                return
        self.answer(command_id, CommandStatus.IN_PROGRESS)
        with self.lock:
            self._pending[kind].append(command_id)
            if kind == CommandKind.PAUSE:
                self.paused = True
            elif kind == CommandKind.RESUME:
                self.paused = False
                self._wake = True
            elif kind == CommandKind.STOP:
                self.stop_requested = True
            elif kind == CommandKind.GROW:
                self._grow_ops[command_id] = op
                self._queue(command_id, op)
                self._wake = True  # a converged loop trains again, to observe and grow

    def stop(self, reason: str) -> None:
        """Stop without a command (the lease was lost)."""
        with self.lock:
            self.stop_requested = True
            self.stop_reason = reason

    def directive(self, decision: Decision | None = None) -> Directive:
        """What the loop is told now: the decision's growth, if any, and the wanted state."""
        with self.lock:
            wake, self._wake = self._wake, False
            if decision is None:
                return Directive(pause=self.paused, stop=self.stop_requested, wake=wake)
            directive = Directive.from_decision(
                decision, pause=self.paused, stop=self.stop_requested
            )
            return directive.model_copy(update={"wake": wake})

    def rewake(self) -> None:
        """The loop has just converged: a resume still in progress, or a grow command queued and
        not yet decided, wakes it again (a wake sent while it trained was spent then)."""
        with self.lock:
            if self._pending[CommandKind.RESUME] or self.controller.requests:
                self._wake = True

    # --- outcomes -----------------------------------------------------------------------------
    def answer(
        self,
        command_id: str,
        status: CommandStatus,
        detail: str | None = None,
        result: dict[str, Any] | None = None,
    ) -> None:
        try:
            self.store.update_command(self.job_id, command_id, status, detail, result)
        except StoreError as exc:
            logger.info("job %s: command %s: %s", self.job_id, command_id, exc)

    def resolve(self, kind: CommandKind, detail: str) -> None:
        """Every command of ``kind`` in progress is done (the loop reached the state it asked)."""
        with self.lock:
            ids, self._pending[kind] = self._pending[kind], []
        for command_id in ids:
            self.answer(command_id, CommandStatus.DONE, detail)

    def end(self, reason: str) -> None:
        """The job ended: every grow, pause and resume still in progress is rejected."""
        with self.lock:
            ids = [cid for kind in _ANSWERED_AT_END for cid in self._pending[kind]]
            for kind in _ANSWERED_AT_END:
                self._pending[kind] = []
        for command_id in ids:
            self.answer(command_id, CommandStatus.REJECTED, reason)

    # --- grow commands and the controller -------------------------------------------------------
    def observe(self, decide: Callable[[], Decision]) -> Decision:
        """Run the controller's decision (under the lock) and follow a grow command's part in it:
        a refused request is rejected; a granted one is remembered as sent to the workers."""
        with self.lock:
            decision = decide()
            command_id = decision.request_id
            if command_id not in self._pending[CommandKind.GROW]:
                return decision
            if decision.op is not None:
                self._issued = command_id
                return decision
            self._forget(command_id)
        self.answer(command_id, CommandStatus.REJECTED, decision.reason)
        return decision

    def grown(self, request_id: str | None, event: Any, generation: int) -> None:
        """The workers applied a growth (``event``: a ``workers.sources.GrowthEvent``)."""
        command_id = self._settle(request_id, manual=event.policy == "manual")
        if command_id is None:
            return
        self.answer(
            command_id, CommandStatus.DONE, f"grown to generation {generation}",
            {"generation": generation, "params_before": event.params_before,
             "params_after": event.params_after, "max_abs_error": event.max_abs_error},
        )  # fmt: skip

    def failed(self, request_id: str | None, error: str) -> None:
        """The workers could not apply a growth (the model is unchanged)."""
        command_id = self._settle(request_id, manual=True)
        if command_id is not None:
            self.answer(command_id, CommandStatus.FAILED, error)

    def reconcile(self, resumed: dict[str, Any], *, grown: bool) -> None:
        """After the loop (re)started from a checkpoint, give every grow command an outcome.

        The controller's state came back from the checkpoint, which may predate a command (its
        request is then missing) or hold requests already answered. Every command in progress is
        queued again if missing; requests of no command in progress are dropped. The growth that
        was sent to the workers and lost with them is not sent again: ``grown`` says whether the
        checkpoint the loop resumed from holds it after all (it was taken after the growth).
        """
        with self.lock:
            lost, self._issued = self._issued, None
            if lost is not None and lost in self._pending[CommandKind.GROW]:
                self._forget(lost)
            else:
                lost = None
            in_progress = self._pending[CommandKind.GROW]
            for request in self.controller.requests:
                if request.id not in in_progress:
                    self.controller.drop_request(request.id)
            queued = {r.id for r in self.controller.requests}
            for command_id in in_progress:
                if command_id not in queued:
                    self._queue(command_id, self._grow_ops.get(command_id))
        if lost is None:
            return
        if grown:
            generation = resumed["generation"]
            self.answer(
                lost, CommandStatus.DONE,
                f"grown to generation {generation} (the workers restarted after the growth's "
                "checkpoint)",
                {"generation": generation, "params_after": resumed.get("param_count")},
            )  # fmt: skip
            return
        where = (
            f"the checkpoint of step {resumed.get('step')} (generation {resumed.get('generation')})"
            if resumed
            else "the base model"
        )
        self.answer(
            lost, CommandStatus.FAILED,
            "the workers failed while applying this growth, before its checkpoint was complete; "
            f"the job resumed from {where}, without it. Send the request again to retry.",
        )  # fmt: skip

    def _queue(self, command_id: str, op: GrowthOp | None) -> None:
        self.controller.request(op, reason=f"command {command_id}", request_id=command_id)

    def _forget(self, command_id: str) -> None:
        self._pending[CommandKind.GROW].remove(command_id)
        self._grow_ops.pop(command_id, None)
        if self._issued == command_id:
            self._issued = None

    def _settle(self, request_id: str | None, *, manual: bool) -> str | None:
        """The grow command that an applied or failed growth answers, taken off the books: the
        one the controller names, else (a controller restored from an older state) the one sent
        to the workers."""
        with self.lock:
            pending = self._pending[CommandKind.GROW]
            command_id = request_id if request_id in pending else None
            if command_id is None and manual and self._issued in pending:
                command_id = self._issued
            if command_id is not None:
                self._forget(command_id)
            return command_id
