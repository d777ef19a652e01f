"""The per-job supervisor: the body of the job's Ray actor, which runs its trainer and decides.

A lease in Redis makes sure that only one supervisor per job acts at a time, whatever Ray does
(why an actor: ``service.runtime.actor``). What it does, in order:

* takes the job's lease and keeps it alive; without the lease it does nothing;
* runs the job's ``TorchTrainer`` (``workers.runner``) in a thread, with this actor as the loop's
  decision source, and runs it again from the last checkpoint if it fails;
* turns commands from Redis (grow, pause, resume, stop) into directives at the next step, and
  records each command's outcome (``service.runtime.commands``);
* hosts the job's growth controller: every observation goes through it, and every notable
  decision goes to the event stream with its reason;
* keeps the job's status in Redis true, and its generations in the generation ledger
  (``service.runtime.generations``), which tracks them in MLflow through a durable outbox that
  never blocks (``service.runtime.tracking``).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

from growth_policy import Controller, GrowthOp, Observation
from service.runtime.actor import SupervisorConfig, actor_restarted
from service.runtime.commands import CommandBook
from service.runtime.generations import GenerationLedger
from service.runtime.lease import JobLease
from service.runtime.tracking import MlflowTracker
from service.state.manifest import RedisManifest
from service.state.records import JobRecord
from service.state.states import CommandKind, EventType, JobStatus
from service.state.store import RedisStore, StoreError, TransitionError
from workers.sources import CheckpointEvent, Directive, GrowthEvent, LoopStatus

logger = logging.getLogger(__name__)


class JobSupervisor:
    """The body of the supervisor actor (``ray.remote`` is applied by
    :func:`service.runtime.actor.actor_class`)."""

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
            self.store.keys,
            job_id=self.job_id,
            job_name=spec.name,
            tracking_uri=config.mlflow_uri,
            prefix=config.experiment_prefix,
        )
        self.generations = GenerationLedger(
            self.store, self.job_id, tracker=self.tracker, spec=spec, data_root=config.data_root
        )
        self._lock = threading.RLock()
        self.commands = CommandBook(
            self.store, self.job_id, self.controller, spec.growth, lock=self._lock
        )
        self._handle = handle
        self.lease = JobLease(self.store, self.job_id, self.owner, config.lease_ttl_ms)
        self._done = threading.Event()
        self._starts = 0
        self._generation = self.job.generation
        self._main_thread: threading.Thread | None = None
        self._last_contact = time.monotonic()
        self._stall_reported = 0.0

    # --- life cycle ----------------------------------------------------------------------------
    def start(self) -> None:
        """Start the supervisor's threads (from the actor's ``__init__``, so it returns fast)."""
        self._main_thread = threading.Thread(target=self._main, name="supervisor", daemon=True)
        self._main_thread.start()

    def _main(self) -> None:
        try:
            if not self.lease.acquire(wanted=self._wanted):
                logger.warning("job %s: another supervisor holds the lease; exiting", self.job_id)
                return
            threading.Thread(
                target=self.lease.keep_alive, args=(self._done, self._lease_lost), daemon=True
            ).start()
            threading.Thread(target=self._read_commands_forever, daemon=True).start()
            threading.Thread(target=self._watch_workers_forever, daemon=True).start()
            self.tracker.start()
            self.generations.open(0, parent=None, op=None, reason="base model", policy="base",
                                  step=0, param_count=self.job.param_count)  # fmt: skip
            self._train()
        except Exception as exc:
            logger.exception("job %s: supervisor failed", self.job_id)
            self._set_status(JobStatus.FAILED, f"supervisor error: {type(exc).__name__}: {exc}")
        finally:
            self._finish()

    def _finish(self) -> None:
        self.commands.end("the job ended first")
        self.tracker.stop(flush_timeout=20.0)
        self.lease.release()
        self._done.set()
        if self._handle is not None:
            import ray

            # A finished job's supervisor goes away for good (no restart by Ray).
            ray.kill(self._handle, no_restart=True)

    def _wanted(self) -> bool:
        job = self.store.get_job(self.job_id)
        return job is not None and not job.status.terminal

    def _lease_lost(self) -> None:
        logger.error("job %s: lease lost; stopping this supervisor", self.job_id)
        self.commands.stop("lease lost to another supervisor")

    # --- training ------------------------------------------------------------------------------
    def _train(self) -> None:
        from workers.checkpoint import run_name
        from workers.loop import WorkerConfig
        from workers.runner import TrainerSettings, run_trainer
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
            compute=spec.compute,
            replay=spec.replay,
            data=spec.data,
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
            run_name=run_name(self.job_id),
            max_failures=self.cfg.max_failures,
        )
        failures = 0
        while True:
            if self.commands.stop_requested:
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
            if self.commands.stop_requested:
                break
            # The loop never ends on its own: an end without a stop is a fault, run it again.
            self._set_status(JobStatus.PENDING, "the trainer ended unexpectedly; restarting")
        self._set_status(JobStatus.STOPPED, self.commands.stop_reason)

    def _contact(self) -> None:
        self._last_contact = time.monotonic()

    def _watch_workers_forever(self) -> None:
        """Say so in the status when the workers go quiet: not started, lost, or not placed."""
        while not self._done.wait(5.0):
            silent = time.monotonic() - self._last_contact
            quiet_enough = silent > self.cfg.stall_after_s
            recently_said = time.monotonic() - self._stall_reported < self.cfg.stall_after_s
            if not quiet_enough or recently_said or self.commands.stop_requested:
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
                self.commands.accept(command.id, command.kind, command.args)

    # --- the decision source (called by the loop's rank 0 through ActorSource) ----------------
    def decide(self, observation: Observation) -> Directive:
        self._contact()
        obs = observation
        self.store.record_observation(self.job_id, obs)
        self.generations.observed(obs)
        decision = self.commands.observe(lambda: self.controller.observe(obs))
        if decision.notable:
            self.store.record_decision(self.job_id, decision)
        if decision.op is not None:
            self._set_status(JobStatus.GROWING, decision.reason)
        return self.commands.directive(decision)

    def poll(self, status: LoopStatus) -> Directive:
        self._contact()
        return self.commands.directive()

    def on_status(self, status: LoopStatus) -> None:
        self._contact()
        state = status.state
        if state == "starting":
            self._starting(status)
        elif state == "waiting_for_data":
            self._set_status(JobStatus.WAITING_FOR_DATA, "waiting for data")
            self.commands.resolve(CommandKind.RESUME, "resumed (waiting for data)")
        elif state == "training":
            self._training(status)
        elif state == "converged":
            self._converged(status)
        elif state == "paused":
            self._set_status(JobStatus.PAUSED, "paused by command")
            self.commands.resolve(CommandKind.PAUSE, "paused")
        elif state == "stopped":
            if status.detail.get("budget"):  # the total budget is spent: the job ends here
                self.commands.stop(str(status.detail.get("reason") or "budget spent"))
            self.commands.resolve(CommandKind.STOP, "stopped")

    def _training(self, status: LoopStatus) -> None:
        woken = status.detail.get("woken_by")
        reason = None
        if woken:
            reason = "woken by new data" if woken == "data" else "woken by a command"
            self.generations.woken(status.generation, status.step)
            self._event(EventType.STATUS, {"loop": "woken", "woken_by": woken, "step": status.step,
                                           "compute": status.detail.get("compute") or {}})  # fmt: skip
        self._set_status(JobStatus.TRAINING, reason)
        self.commands.resolve(CommandKind.RESUME, "resumed")

    def _converged(self, status: LoopStatus) -> None:
        """The loop waits for new data: the reason with its numbers in the status, an event, the
        job's metrics (its compute) and MLflow."""
        detail = _jsonable(status.detail)
        reason = str(detail.get("reason") or "converged")
        if detail.get("held"):
            reason += f"; holding the {detail['held']} weights (step {detail.get('held_step')})"
        self._set_status(JobStatus.CONVERGED, reason)
        self._event(EventType.STATUS, {"loop": "converged", "step": status.step, **detail})
        self.generations.converged(status.generation, status.step, reason, detail)
        compute = detail.get("compute")
        job = self.store.get_job(self.job_id)
        if compute and job is not None:
            self.store.update_job(self.job_id, metrics={**job.metrics, "compute": compute})
        # A resume or grow command may have come while the loop converged: it wakes it again.
        self.commands.rewake()

    def _starting(self, status: LoopStatus) -> None:
        """The loop (re)started, from a checkpoint or from the base model: say why, and give
        every grow command an outcome against what the checkpoint holds."""
        self._starts += 1
        resumed = status.detail.get("resumed_from") or {}
        reason = "starting"
        if resumed:
            # A resume only follows a fault: of the workers, or of this supervisor.
            if self._starts > 1:
                why = "workers restarted after a failure"
            elif actor_restarted():
                why = "restarted with its supervisor, whose process or node failed"
            else:
                why = "restarted after a failure"
            reason = (
                f"{why}; resumed from the checkpoint of step {resumed.get('step')} (generation "
                f"{resumed.get('generation')})"
            )
        self._set_status(JobStatus.PENDING, reason)
        self.commands.reconcile(resumed, grown=self._catch_up(resumed))
        self._event(EventType.STATUS, {"loop": "starting", **_jsonable(status.detail)})

    def _catch_up(self, resumed: dict[str, Any]) -> bool:
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
        self.generations.catch_up(
            generation,
            lineage,
            step=int(resumed.get("step") or 0),
            param_count=resumed.get("param_count"),
        )
        self._generation = generation
        self.store.update_job(
            self.job_id, generation=generation, param_count=resumed.get("param_count")
        )
        return True

    def on_growth(self, event: GrowthEvent) -> None:
        self._contact()
        with self._lock:
            request_id = self.controller.on_growth(event)
        gen = event.generation_after
        self._generation = gen
        self.store.update_job(self.job_id, generation=gen, param_count=event.params_after)
        self.generations.close(event.generation_before, step=event.step)
        self.generations.open(
            gen, parent=event.generation_before, op=event.op.model_dump(mode="json"),
            reason=event.reason, policy=event.policy, step=event.step,
            param_count=event.params_after, growth=event,
        )  # fmt: skip
        self._event(EventType.GENERATION, event.model_dump(mode="json", exclude={"rank_digests"}))
        self._set_status(JobStatus.TRAINING, None)
        self.commands.grown(request_id, event, gen)

    def on_checkpoint(self, event: CheckpointEvent) -> None:
        self._contact()
        self.generations.checkpointed(event)

    def on_growth_failed(self, op: GrowthOp, step: int, error: str) -> None:
        with self._lock:
            request_id = self.controller.notify_failed(step=step, error=error)
        self._event(
            EventType.DECISION,
            {"step": step, "op": None, "policy": "workers", "notable": True, "numbers": {},
             "reason": f"growth {op.op} failed on the workers and was not applied: {error}"},
        )  # fmt: skip
        self._set_status(JobStatus.TRAINING, None)
        self.commands.failed(request_id, error)

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
            "has_lease": self.lease.held,
            "paused": self.commands.paused,
            "stop_requested": self.commands.stop_requested,
            "generation": self._generation,
            "tracking_pending": status.pending,
            "tracking_error": status.last_error,
        }


def _jsonable(value: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(value, default=str))
    return out
