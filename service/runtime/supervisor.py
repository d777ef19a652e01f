"""The per-job supervisor: a detached, named Ray actor that runs the job's trainer and decides.

Why a detached named actor and not a Ray job: Ray's Jobs API runs an entrypoint once "to completion
or failure" and leaves retries to the submitter, whereas a detached actor outlives the API process
that created it, is found again by name (so a restarted API re-attaches instead of starting a second
one), and is restarted by Ray itself (``max_restarts=-1``) when its process or node dies. It also has
to answer calls: rank 0 of the train loop asks it for a decision every few steps (through
``workers.sources.ActorSource``), which a Ray job's driver cannot serve. A lease in Redis makes sure
that only one supervisor per job acts at a time, whatever Ray does.

What it does, in order:

* takes the job's lease and keeps it alive; without the lease it does nothing;
* runs the job's ``TorchTrainer`` (``workers.runner``) in a thread, with this actor as the loop's
  decision source, and runs it again from the last checkpoint if it fails;
* turns commands from Redis (grow, pause, resume, stop) into directives at the next step, and
  records each command's outcome;
* hosts the job's growth controller: every observation goes through it, and every notable
  decision goes to the event stream with its reason;
* keeps the job's status in Redis true, and one record per generation (for ``/generations``,
  ``/model`` and ``/predict``);
* tracks everything in MLflow through :class:`service.runtime.tracking.MlflowTracker`, which never blocks.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field

from growth_policy import Controller, Decision, GrowthOp, Observation
from service.runtime.tracking import MlflowTracker
from service.state.manifest import RedisManifest
from service.state.records import JobRecord
from service.state.states import CommandKind, CommandStatus, EventType, JobStatus
from service.state.store import RedisStore, StoreError, TransitionError
from workers.sources import CheckpointEvent, Directive, GrowthEvent, LoopStatus

logger = logging.getLogger(__name__)

ACTOR_NAMESPACE = "lifelong"
_F = TypeVar("_F", bound=Callable[..., Any])


class SupervisorConfig(BaseModel):
    """What a supervisor needs to find its job and its parts; travels to the actor."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str
    redis_url: str
    key_prefix: str
    data_root: str = Field(description="Storage root of the shards (and durable checkpoints).")
    ray_storage: str = Field(description="Ray Train's storage_path for the job's runs.")
    mlflow_uri: str
    events_maxlen: int = 10_000
    commands_maxlen: int = 10_000
    lease_ttl_ms: int = Field(default=15_000, ge=1000)
    max_failures: int = Field(default=3, ge=-1, description="Ray Train worker failures per fit.")
    max_restarts: int = Field(
        default=5, ge=0, description="Fits that may fail in a row before the job is failed."
    )
    stall_after_s: float = Field(
        default=90.0, gt=0, description="Silence from the workers after which the status says so."
    )
    observe_every: int = Field(default=50, ge=1)
    checkpoint_every: int = Field(default=500, ge=0)
    experiment_prefix: str = "lifelong"


@dataclass
class GenerationRecord:
    """One generation of a job, as ``GET /v1/jobs/{id}/generations`` shows it."""

    generation: int
    parent: int | None
    op: dict[str, Any] | None
    reason: str
    policy: str
    started_step: int
    param_count: int | None
    max_abs_error: float | None = None
    val_loss_before: float | None = None
    val_loss_after: float | None = None
    val_metric_before: float | None = None
    val_metric_after: float | None = None
    opened_at: float = field(default_factory=time.time)
    closed_at: float | None = None
    closed_step: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    checkpoint_step: int | None = None
    records: int = 0

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> GenerationRecord:
        return cls(**json.loads(text))


def generations_key(store: RedisStore, job_id: str) -> str:
    return f"{store.keys.job(job_id)}:generations"


def read_generations(store: RedisStore, job_id: str) -> list[GenerationRecord]:
    raw = store.client.hgetall(generations_key(store, job_id))
    records = [GenerationRecord.from_json(str(v)) for v in raw.values()]
    return sorted(records, key=lambda r: r.generation)


class JobSupervisor:
    """The body of the supervisor actor (``ray.remote`` is applied by :func:`actor_class`)."""

    def __init__(self, config: SupervisorConfig, *, handle: Any = None) -> None:
        self.cfg = config
        self.job_id = config.job_id
        self.store = RedisStore(
            config.redis_url,
            config.key_prefix,
            events_maxlen=config.events_maxlen,
            commands_maxlen=config.commands_maxlen,
        )
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.job: JobRecord = self.store.require_job(self.job_id)
        spec = self.job.spec
        self.controller = Controller(spec.growth, seed=spec.seed)
        self.tracker = MlflowTracker.for_job(
            self.store.client,
            self.store.keys.job(self.job_id),
            job_id=self.job_id,
            job_name=spec.name,
            tracking_uri=config.mlflow_uri,
            prefix=config.experiment_prefix,
        )
        self._handle = handle
        self._lock = threading.RLock()
        self._paused = False
        self._stop_requested = False
        self._stop_reason = "stopped by command"
        self._pending: dict[CommandKind, list[str]] = {k: [] for k in CommandKind}
        self._seen_commands: set[str] = set()
        # Grow commands in progress → their op (None: the controller chooses), and the one whose
        # growth went to the workers and has not come back as a growth or a failure.
        self._grow_ops: dict[str, dict[str, Any] | None] = {}
        self._issued: str | None = None
        self._has_lease = False
        self._done = threading.Event()
        self._starts = 0
        self._generation = self.job.generation
        self._main_thread: threading.Thread | None = None
        self._early_checkpoints: dict[int, list[CheckpointEvent]] = {}
        self._last_contact = time.monotonic()
        self._stall_reported = 0.0

    # --- life cycle ----------------------------------------------------------------------------
    def start(self) -> None:
        """Start the supervisor's threads (from the actor's ``__init__``, so it returns fast)."""
        self._main_thread = threading.Thread(target=self._main, name="supervisor", daemon=True)
        self._main_thread.start()

    def _main(self) -> None:
        try:
            if not self._acquire_lease():
                logger.warning("job %s: another supervisor holds the lease; exiting", self.job_id)
                return
            threading.Thread(target=self._renew_lease_forever, daemon=True).start()
            threading.Thread(target=self._read_commands_forever, daemon=True).start()
            threading.Thread(target=self._watch_workers_forever, daemon=True).start()
            self.tracker.start()
            self._ensure_generation(0, parent=None, op=None, reason="base model", policy="base",
                                    step=0, param_count=self.job.param_count)  # fmt: skip
            self._train()
        except Exception as exc:
            logger.exception("job %s: supervisor failed", self.job_id)
            self._set_status(JobStatus.FAILED, f"supervisor error: {type(exc).__name__}: {exc}")
        finally:
            self._finish()

    def _finish(self) -> None:
        for kind in (CommandKind.GROW, CommandKind.PAUSE, CommandKind.RESUME):
            for command_id in self._pending[kind]:
                self._command(command_id, CommandStatus.REJECTED, "the job ended first")
        self.tracker.stop(flush_timeout=20.0)
        if self._has_lease:
            self.store.release_lease(self.job_id, self.owner)
        self._done.set()
        if self._handle is not None:
            import ray

            # A finished job's supervisor goes away for good (no restart by Ray).
            ray.kill(self._handle, no_restart=True)

    def _acquire_lease(self) -> bool:
        # After a crash the dead supervisor's lease lives on until its TTL: wait that long.
        deadline = time.monotonic() + 2 * self.cfg.lease_ttl_ms / 1000
        while time.monotonic() < deadline:
            job = self.store.get_job(self.job_id)
            if job is None or job.status.terminal:
                return False
            if self.store.acquire_lease(self.job_id, self.owner, self.cfg.lease_ttl_ms):
                self._has_lease = True
                return True
            time.sleep(0.5)
        return False

    def _renew_lease_forever(self) -> None:
        interval = self.cfg.lease_ttl_ms / 3000
        while not self._done.wait(interval):
            try:
                if not self.store.renew_lease(self.job_id, self.owner, self.cfg.lease_ttl_ms):
                    logger.error("job %s: lease lost; stopping this supervisor", self.job_id)
                    self._has_lease = False
                    with self._lock:
                        self._stop_requested = True
                        self._stop_reason = "lease lost to another supervisor"
                    return
            except Exception:  # Redis blip: the TTL leaves room for the next try
                logger.warning("job %s: lease renewal failed; retrying", self.job_id)

    # --- training ------------------------------------------------------------------------------
    def _train(self) -> None:
        from workers.loop import WorkerConfig
        from workers.runner import TrainerSettings, run_name_for, run_trainer
        from workers.sources import ActorSource

        spec = self.job.spec
        worker = WorkerConfig(
            job_id=self.job_id,
            task=spec.task,
            model=spec.model,
            optimizer=spec.optimizer,
            store_root=self.cfg.data_root,
            manifest=RedisManifest(self.cfg.redis_url, self.cfg.key_prefix, self.job_id),
            source=ActorSource(self._handle) if self._handle is not None else None,
            batch_size=spec.batch_size,
            observe_every=self.cfg.observe_every,
            checkpoint_every=self.cfg.checkpoint_every,
            seed=spec.seed,
        )
        settings = TrainerSettings(
            worker=worker,
            num_workers=spec.scaling.num_workers,
            min_workers=spec.scaling.min_workers,
            use_gpu=spec.scaling.use_gpu,
            resources_per_worker={
                ("GPU" if spec.scaling.use_gpu else "CPU"): 1.0,
                "CPU": spec.scaling.cpus_per_worker,
            },
            storage_path=self.cfg.ray_storage,
            run_name=run_name_for(self.job_id),
            max_failures=self.cfg.max_failures,
        )
        failures = 0
        while True:
            with self._lock:
                if self._stop_requested:
                    break
            try:
                run_trainer(settings)
                failures = 0
            except Exception as exc:
                failures += 1
                text = f"training failed ({type(exc).__name__}: {str(exc)[:300]})"
                if failures > self.cfg.max_restarts:
                    self._set_status(JobStatus.FAILED, f"{text}; gave up after {failures} tries")
                    return
                self._set_status(
                    JobStatus.PENDING,
                    f"{text}; restarting from the last checkpoint (try {failures})",
                )
                time.sleep(min(30.0, 2.0**failures))
                continue
            with self._lock:
                if self._stop_requested:
                    break
            # The loop never ends on its own: an end without a stop is a fault, run it again.
            self._set_status(JobStatus.PENDING, "the trainer ended unexpectedly; restarting")
        self._set_status(JobStatus.STOPPED, self._stop_reason)

    def _contact(self) -> None:
        self._last_contact = time.monotonic()

    def _watch_workers_forever(self) -> None:
        """Say so in the status when the workers go quiet: not started, lost, or not placed."""
        while not self._done.wait(5.0):
            silent = time.monotonic() - self._last_contact
            quiet_enough = silent > self.cfg.stall_after_s
            recently_said = time.monotonic() - self._stall_reported < self.cfg.stall_after_s
            with self._lock:
                stopping = self._stop_requested
            if not quiet_enough or recently_said or stopping:
                continue
            self._stall_reported = time.monotonic()
            self._set_status(
                JobStatus.PENDING,
                f"no word from the workers for {silent:.0f}s; {self._placement_note()}",
            )

    def _placement_note(self) -> str:
        """What Ray has for this job's workers right now."""
        scaling = self.job.spec.scaling
        need = "GPU" if scaling.use_gpu else "CPU"
        per_worker = 1.0 if scaling.use_gpu else scaling.cpus_per_worker
        wanted = scaling.min_workers or scaling.num_workers
        try:
            import ray

            free = float(ray.available_resources().get(need, 0.0))
            total = float(ray.cluster_resources().get(need, 0.0))
            nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        except Exception as exc:
            return f"Ray cannot be asked what it has ({type(exc).__name__})"
        return (
            f"waiting for Ray to place {wanted} worker(s) × {per_worker:g} {need}; the cluster "
            f"has {free:g} of {total:g} {need} free on {nodes} alive node(s)"
        )

    # --- status ----------------------------------------------------------------------------------
    def _set_status(self, status: JobStatus, reason: str | None = None) -> None:
        try:
            self.store.set_status(self.job_id, status, reason)
        except TransitionError as exc:
            logger.info("job %s: %s", self.job_id, exc)
        except StoreError as exc:
            logger.warning("job %s: status %s not recorded: %s", self.job_id, status, exc)

    def _event(self, type: EventType, data: dict[str, Any]) -> None:
        try:
            self.store.append_event(self.job_id, type, data)
        except StoreError as exc:
            logger.warning("job %s: event not recorded: %s", self.job_id, exc)

    # --- commands --------------------------------------------------------------------------------
    def _read_commands_forever(self) -> None:
        while not self._done.is_set():
            try:
                commands = self.store.read_commands(self.job_id, block_ms=1000)
            except Exception:
                logger.warning("job %s: reading commands failed; retrying", self.job_id)
                time.sleep(1.0)
                continue
            for command in commands:
                if command.id in self._seen_commands:
                    continue
                self._seen_commands.add(command.id)
                self._accept(command.id, command.kind, command.args)

    def _accept(self, command_id: str, kind: CommandKind, args: dict[str, Any]) -> None:
        if kind == CommandKind.GROW:
            if args.get("op") == "widen":
                # What the request leaves unsaid comes from the job's growth config, not from
                # GrowthOp's defaults: the paper's exact copies learn nothing new under Adam.
                widen = self.job.spec.growth.widen
                args = {"init": widen.init, "noise": widen.noise, "split": widen.split, **args}
            try:
                op = GrowthOp.model_validate(args) if args else None
            except ValueError as exc:
                self._command(command_id, CommandStatus.REJECTED, f"invalid growth: {exc}")
                return
        self._command(command_id, CommandStatus.IN_PROGRESS)
        with self._lock:
            self._pending[kind].append(command_id)
            if kind == CommandKind.PAUSE:
                self._paused = True
            elif kind == CommandKind.RESUME:
                self._paused = False
            elif kind == CommandKind.STOP:
                self._stop_requested = True
            elif kind == CommandKind.GROW:
                self._grow_ops[command_id] = None if op is None else op.model_dump(mode="json")
                self.controller.request(op, reason=f"command {command_id}")

    def _command(
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

    def _resolve(
        self, kind: CommandKind, detail: str, result: dict[str, Any] | None = None
    ) -> None:
        with self._lock:
            ids, self._pending[kind] = self._pending[kind], []
        for command_id in ids:
            self._command(command_id, CommandStatus.DONE, detail, result)

    def _directive(self, **kwargs: Any) -> Directive:
        with self._lock:
            return Directive(pause=self._paused, stop=self._stop_requested, **kwargs)

    # --- the decision source (called by the loop's rank 0 through ActorSource) ----------------
    def decide(self, observation: Observation) -> Directive:
        self._contact()
        obs = observation
        self.store.record_observation(self.job_id, obs)
        self._track_observation(obs)
        with self._lock:
            manual_waiting = bool(self._pending[CommandKind.GROW])
            decision = self.controller.observe(obs)
        if decision.notable:
            self.store.record_decision(self.job_id, decision)
        if manual_waiting and decision.policy == "manual" and decision.op is None:
            with self._lock:
                command_id = self._pending[CommandKind.GROW].pop(0)
            self._command(command_id, CommandStatus.REJECTED, decision.reason)
        if decision.op is None:
            return self._directive()
        if decision.policy == "manual":
            with self._lock:
                pending = self._pending[CommandKind.GROW]
                self._issued = pending[0] if pending else None
        self._set_status(JobStatus.GROWING, decision.reason)
        return self._directive(
            op=decision.op, reason=decision.reason, policy=decision.policy,
            numbers=dict(decision.numbers),
        )  # fmt: skip

    def poll(self, status: LoopStatus) -> Directive:
        self._contact()
        return self._directive()

    def on_status(self, status: LoopStatus) -> None:
        self._contact()
        state = status.state
        if state == "starting":
            self._starts += 1
            resumed = status.detail.get("resumed_from")
            if resumed:
                reason = (
                    f"resumed from the checkpoint of step {resumed.get('step')} (generation "
                    f"{resumed.get('generation')})"
                )
                # A resume only follows a fault: of the workers, or of this supervisor.
                if self._starts > 1:
                    why = "workers restarted after a failure"
                elif _actor_restarted():
                    why = "restarted with its supervisor, whose process or node failed"
                else:
                    why = "restarted after a failure"
                reason = f"{why}; {reason}"
            else:
                reason = "starting"
            self._set_status(JobStatus.PENDING, reason)
            self._reconcile_grow_commands(status)
            self._event(EventType.STATUS, {"loop": "starting", **_jsonable(status.detail)})
        elif state == "waiting_for_data":
            self._set_status(JobStatus.WAITING_FOR_DATA, "waiting for data")
            self._resolve(CommandKind.RESUME, "resumed (waiting for data)")
        elif state == "training":
            self._set_status(JobStatus.TRAINING, None)
            self._resolve(CommandKind.RESUME, "resumed")
        elif state == "paused":
            self._set_status(JobStatus.PAUSED, "paused by command")
            self._resolve(CommandKind.PAUSE, "paused")
        elif state == "stopped":
            self._resolve(CommandKind.STOP, "stopped")

    def _reconcile_grow_commands(self, status: LoopStatus) -> None:
        """After the loop (re)started from a checkpoint, make sure every grow command gets an outcome.

        The controller's state came back from the checkpoint, which may predate a command (its
        request is then missing) or hold the request of a growth that was sent to the workers
        and lost with them. A growth lost that way is not sent again (it might be what made the
        workers fail): its command fails and says where the job resumed. Every other command in
        progress is requested again if the restored state lacks it.
        """
        resumed = status.detail.get("resumed_from") or {}
        where = (
            f"the checkpoint of step {resumed.get('step')} (generation {resumed.get('generation')})"
            if resumed
            else "the base model"
        )
        with self._lock:
            lost = self._issued
            self._issued = None
            grow = self._pending[CommandKind.GROW]
            if lost is not None and lost in grow:
                grow.remove(lost)
                self._grow_ops.pop(lost, None)
            else:
                lost = None
            state = self.controller.state_dict()
            before = state.get("requests", [])
            restored = {r.get("reason"): r for r in before}
            requests = [r for r in before if not str(r.get("reason")).startswith("command ")]
            for command_id in grow:
                reason = f"command {command_id}"
                requests.append(
                    restored.get(reason) or {"op": self._grow_ops.get(command_id), "reason": reason}
                )
            if requests != before:
                self.controller.load_state_dict({**state, "requests": requests})
        grown = self._adopt_resumed_generations(resumed)
        if lost is not None and grown:
            self._command(
                lost,
                CommandStatus.DONE,
                f"grown to generation {resumed['generation']} (the workers restarted after the "
                "growth's checkpoint)",
                {"generation": resumed["generation"], "params_after": resumed.get("param_count")},
            )
        elif lost is not None:
            self._command(
                lost,
                CommandStatus.FAILED,
                "the workers failed while applying this growth, before its checkpoint was "
                f"complete; the job resumed from {where}, without it. Send the request again "
                "to retry.",
            )

    def _adopt_resumed_generations(self, resumed: dict[str, Any]) -> bool:
        """The loop resumed from a checkpoint newer than the last growth heard of (the workers
        failed after a growth's checkpoint, before its event): open what the growth opens, from
        the checkpoint's lineage. Returns whether there was such a growth."""
        generation = resumed.get("generation")
        if not isinstance(generation, int) or generation <= self._generation:
            return False
        from workers.checkpoint import GenerationInfo, read_meta

        lineage: list[GenerationInfo] = []
        try:
            lineage = list(read_meta(str(resumed.get("path"))).lineage)
        except (OSError, ValueError) as exc:  # a remote checkpoint: what the status tells
            logger.info("job %s: lineage of %s unread: %s", self.job_id, resumed.get("path"), exc)
        known = {info.generation: info for info in lineage}
        for gen in range(self._generation + 1, generation + 1):
            info = known.get(gen)
            step = info.opened_at_step if info else int(resumed.get("step") or 0)
            self._close_generation(gen - 1, step=step)
            self._ensure_generation(
                gen,
                parent=gen - 1,
                op=info.op if info else None,
                reason=info.reason if info else "found in the checkpoint the workers resumed from",
                policy=info.policy if info else "unknown",
                step=step,
                param_count=info.param_count if info else resumed.get("param_count"),
            )
        self._generation = generation
        self.store.update_job(
            self.job_id, generation=generation, param_count=resumed.get("param_count")
        )
        return True

    def on_growth(self, event: GrowthEvent) -> None:
        self._contact()
        with self._lock:
            self.controller.on_growth(event)
            manual = event.policy == "manual" and bool(self._pending[CommandKind.GROW])
            command_id = self._pending[CommandKind.GROW].pop(0) if manual else None
            if command_id is not None:
                self._grow_ops.pop(command_id, None)
                self._issued = None
        gen = event.generation_after
        self._generation = gen
        self.store.update_job(self.job_id, generation=gen, param_count=event.params_after)
        self._close_generation(event.generation_before, step=event.step)
        record = self._ensure_generation(
            gen, parent=event.generation_before, op=event.op.model_dump(mode="json"),
            reason=event.reason, policy=event.policy, step=event.step,
            param_count=event.params_after, growth=event,
        )  # fmt: skip
        # The new generation's first checkpoint reached on_checkpoint before this event.
        for early in self._early_checkpoints.pop(gen, []):
            self._checkpointed(record, early)
        data = event.model_dump(mode="json", exclude={"rank_digests"})
        self._event(EventType.GENERATION, data)
        self._set_status(JobStatus.TRAINING, None)
        if command_id is not None:
            self._command(
                command_id, CommandStatus.DONE, f"grown to generation {gen}",
                {"generation": gen, "params_before": event.params_before,
                 "params_after": event.params_after, "max_abs_error": event.max_abs_error},
            )  # fmt: skip

    def on_checkpoint(self, event: CheckpointEvent) -> None:
        self._contact()
        key = generations_key(self.store, self.job_id)
        raw = self.store.client.hget(key, str(event.generation))
        if raw is None:
            # A growth's opening checkpoint comes before the growth event that opens the record.
            self._early_checkpoints.setdefault(event.generation, []).append(event)
            return
        self._checkpointed(GenerationRecord.from_json(str(raw)), event)

    def _checkpointed(self, record: GenerationRecord, event: CheckpointEvent) -> None:
        """Keep the generation's newest checkpoint; send its first and its last to MLflow.

        A generation's first checkpoint (for generation N > 0, the one that opened it: exactly the
        previous generation's function) is its registered model version; its closing and final
        checkpoints are logged beside it as ``checkpoint-final``.
        """
        key = generations_key(self.store, self.job_id)
        if record.checkpoint_step is None or event.step >= record.checkpoint_step:
            record.checkpoint = event.path
            record.checkpoint_step = event.step
            self.store.client.hset(key, str(record.generation), record.to_json())
        if not self._tracked(record, "first"):
            self._track_checkpoint(record, event, "checkpoint", register=True)
        if event.kind in ("close", "final"):
            self._track_checkpoint(record, event, "checkpoint-final", register=False)

    def on_growth_failed(self, op: GrowthOp, step: int, error: str) -> None:
        with self._lock:
            self.controller.notify_failed(step=step, error=error)
            pending = self._pending[CommandKind.GROW]
            command_id = pending.pop(0) if pending else None
            if command_id is not None:
                self._grow_ops.pop(command_id, None)
                self._issued = None
        self._event(
            EventType.DECISION,
            {"step": step, "op": None, "policy": "workers", "notable": True, "numbers": {},
             "reason": f"growth {op.op} failed on the workers and was not applied: {error}"},
        )  # fmt: skip
        self._set_status(JobStatus.TRAINING, None)
        if command_id is not None:
            self._command(command_id, CommandStatus.FAILED, error)

    def state_dict(self) -> dict[str, Any]:
        with self._lock:
            return {"controller": self.controller.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "controller" in state:
            with self._lock:
                self.controller.load_state_dict(state["controller"])

    # --- introspection -----------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        status = self.tracker.status()
        return {
            "job_id": self.job_id,
            "owner": self.owner,
            "has_lease": self._has_lease,
            "paused": self._paused,
            "stop_requested": self._stop_requested,
            "generation": self._generation,
            "tracking_pending": status.pending,
            "tracking_error": status.last_error,
        }

    def wait_done(self, timeout: float) -> bool:
        return self._done.wait(timeout)

    # --- generations and tracking ----------------------------------------------------------------
    def _ensure_generation(
        self,
        generation: int,
        *,
        parent: int | None,
        op: dict[str, Any] | None,
        reason: str,
        policy: str,
        step: int,
        param_count: int | None,
        growth: GrowthEvent | None = None,
    ) -> GenerationRecord:
        key = generations_key(self.store, self.job_id)
        raw = self.store.client.hget(key, str(generation))
        if raw is not None:
            return GenerationRecord.from_json(str(raw))
        record = GenerationRecord(
            generation=generation,
            parent=parent,
            op=op,
            reason=reason,
            policy=policy,
            started_step=step,
            param_count=param_count,
        )
        if growth is not None:
            record.max_abs_error = growth.max_abs_error
            record.val_loss_before = growth.val_loss_before
            record.val_loss_after = growth.val_loss_after
            record.val_metric_before = growth.val_metric_before
            record.val_metric_after = growth.val_metric_after
            record.records = generation
        # HSETNX: a restarted supervisor replaying the same growth creates nothing twice.
        if not self.store.client.hsetnx(key, str(generation), record.to_json()):
            return GenerationRecord.from_json(str(self.store.client.hget(key, str(generation))))
        spec = self.job.spec
        tags = {
            "lifelong.op": op["op"] if op else "base",
            "lifelong.policy": policy,
            "lifelong.reason": reason[:5000],
            "lifelong.job_name": spec.name,
        }
        if record.max_abs_error is not None:
            tags["lifelong.max_abs_error"] = f"{record.max_abs_error:.3e}"
        params = {
            "param_count": str(param_count),
            "model_family": spec.model.family,
            "model_base": spec.model.model_dump_json(),
            "growth_op": json.dumps(op) if op else "none",
            "task": spec.task.model_dump_json(),
            "optimizer": spec.optimizer.model_dump_json(),
            "batch_size": str(spec.batch_size),
            "num_workers": str(spec.scaling.num_workers),
        }
        self.tracker.open_generation(generation, parent=parent, step=step, tags=tags,
                                     params=params)  # fmt: skip
        return record

    def _close_generation(self, generation: int, *, step: int) -> None:
        key = generations_key(self.store, self.job_id)
        raw = self.store.client.hget(key, str(generation))
        if raw is None:
            return
        record = GenerationRecord.from_json(str(raw))
        if record.closed_at is None:
            record.closed_at = time.time()
            record.closed_step = step
            self.store.client.hset(key, str(generation), record.to_json())
            self.tracker.close_generation(generation)

    def _tracked(self, record: GenerationRecord, what: str) -> bool:
        flag = f"{self.store.keys.job(self.job_id)}:tracked"
        return not self.store.client.sadd(flag, f"{record.generation}:{what}")

    def _track_checkpoint(
        self, record: GenerationRecord, event: CheckpointEvent, dest: str, *, register: bool
    ) -> None:
        path = self._stable_copy(event, dest)
        if path is None:
            return
        self.tracker.log_artifacts(record.generation, path, dest)
        if register:
            self.tracker.register(record.generation, dest)

    def _stable_copy(self, event: CheckpointEvent, dest: str) -> str | None:
        """A copy of the checkpoint that lives until MLflow has it (Ray may delete its own)."""
        if event.durable or not event.path:
            return event.path or None
        source = Path(event.path)
        if not source.exists():
            return None
        target = (
            Path(self.cfg.data_root) / self.job_id / "tracked" / f"gen-{event.generation}-{dest}"
        )
        if not target.exists():
            shutil.copytree(source, target)
        return str(target)

    def _track_observation(self, obs: Observation) -> None:
        values: dict[str, float | None] = {
            "train_loss": obs.train_loss,
            "val_loss": obs.val_loss,
            f"val_{obs.metric_name}": obs.val_metric,
            "dataset_size": float(obs.dataset_size),
            "throughput": obs.throughput,
            "param_count": float(obs.param_count),
            "samples_seen": float(obs.samples_seen),
        }
        clean = {k: v for k, v in values.items() if v is not None}
        self.tracker.log_metrics(obs.generation, obs.step, clean, int(obs.wall_time * 1000))
        key = generations_key(self.store, self.job_id)
        raw = self.store.client.hget(key, str(obs.generation))
        if raw is not None:
            record = GenerationRecord.from_json(str(raw))
            record.metrics = {"step": obs.step, **clean}
            self.store.client.hset(key, str(obs.generation), record.to_json())


def _actor_restarted() -> bool:
    """Whether this process is a supervisor actor that Ray restarted after a failure."""
    try:
        import ray

        return bool(ray.get_runtime_context().was_current_actor_reconstructed)
    except Exception:
        return False


def _jsonable(value: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(value, default=str))
    return out


def actor_class() -> Any:
    """The Ray actor class of the supervisor (Ray imported lazily: the API may run without it)."""
    import ray

    in_loop = cast(Callable[[_F], _F], ray.method(concurrency_group="loop"))

    # The loop's calls run one at a time, in the order rank 0 sent them (a growth event before
    # the next observation); introspection has its own threads.
    @ray.remote(
        num_cpus=0,
        max_restarts=-1,
        max_task_retries=-1,
        max_concurrency=4,
        concurrency_groups={"loop": 1},
    )
    class SupervisorActor:
        def __init__(self, config: SupervisorConfig) -> None:
            handle = ray.get_runtime_context().current_actor
            self.sup = JobSupervisor(config, handle=handle)
            self.sup.start()

        @in_loop
        def decide(self, observation: Observation) -> Directive:
            return self.sup.decide(observation)

        @in_loop
        def poll(self, status: LoopStatus) -> Directive:
            return self.sup.poll(status)

        @in_loop
        def on_status(self, status: LoopStatus) -> None:
            self.sup.on_status(status)

        @in_loop
        def on_growth(self, event: GrowthEvent) -> None:
            self.sup.on_growth(event)

        @in_loop
        def on_checkpoint(self, event: CheckpointEvent) -> None:
            self.sup.on_checkpoint(event)

        @in_loop
        def on_growth_failed(self, op: GrowthOp, step: int, error: str) -> None:
            self.sup.on_growth_failed(op, step, error)

        @in_loop
        def state_dict(self) -> dict[str, Any]:
            return self.sup.state_dict()

        @in_loop
        def load_state_dict(self, state: dict[str, Any]) -> None:
            self.sup.load_state_dict(state)

        def info(self) -> dict[str, Any]:
            return self.sup.info()

    return SupervisorActor


def decision_to_event(decision: Decision) -> dict[str, Any]:
    return decision.model_dump(mode="json")
