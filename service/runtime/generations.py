"""A job's generations: the ledger that records them, tracks them in MLflow, and serves them.

A generation is one architecture of a job's model: generation 0 is the base model, and every
growth (or shrink-and-perturb) that the workers apply opens the next. :class:`GenerationLedger` is
the one owner of:

* each generation's record (:class:`GenerationRecord`), a JSON value in the job's
  ``Keys.generations`` hash: what ``GET /v1/jobs/{id}/generations``, ``/model`` and ``/predict``
  read;
* each generation's MLflow run: its tags and params when it opens, its metrics, its close;
* the checkpoints handed to MLflow: a generation's first checkpoint and its closing and final
  ones are logged as artifacts (``checkpoint``, ``checkpoint-final``), each from a copy that
  outlives Ray Train's clean-up of its own checkpoints;
* the releases (``service.runtime.releases``): trained checkpoints that become registered model
  versions, with the validation metric measured on those very weights, and the ``champion``.

The supervisor writes through a ledger that has a tracker; serving and the API read through one
that has none. Nothing else reads or writes those keys.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.runtime.releases import CHAMPION, Candidate, Release, better, choose
from service.runtime.samples import sample_path, start_sample
from service.runtime.tracking import TrackedIds, read_tracked_ids
from workers.checkpoint import (
    OPTIMIZER_JSON_FILE,
    OPTIMIZER_TENSORS_FILE,
    GenerationInfo,
    durable_root,
    newest_durable,
    read_meta,
    tracked_copy_path,
)
from workers.shards import is_remote

# Observations whose validation metric is kept for the checkpoints that follow them: a checkpoint
# is written at an observation's step (periodic ones every few observations), so the newest few
# suffice, whatever order the events of a growth arrive in.
VALIDATED_KEPT = 64

if TYPE_CHECKING:
    from growth_policy import Observation
    from service.jobs.spec import JobSpec
    from service.runtime.tracking import MlflowTracker
    from service.state.store import RedisStore
    from workers.sources import CheckpointEvent, GrowthEvent


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

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> GenerationRecord:
        """Read a record; fields that this version does not know (older records) are left out."""
        raw = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


class GenerationLedger:
    """The generations of one job. Reading needs the store alone; writing needs the job's spec,
    its MLflow tracker and the data root where checkpoint copies wait for MLflow."""

    def __init__(
        self,
        store: RedisStore,
        job_id: str,
        *,
        tracker: MlflowTracker | None = None,
        spec: JobSpec | None = None,
        data_root: str | None = None,
    ) -> None:
        self.store = store
        self.job_id = job_id
        self.tracker = tracker
        self.spec = spec
        self.data_root = data_root
        self._key = store.keys.generations(job_id)
        self._validated_key = f"{store.keys.releases(job_id)}:validated"
        # A growth's opening checkpoint reaches the ledger before the growth event that opens
        # its generation: kept here until then.
        self._early: dict[int, list[CheckpointEvent]] = {}
        self.sampler: threading.Thread | None = None  # the newest text sample being written

    # --- reading -----------------------------------------------------------------------------
    def records(self) -> list[GenerationRecord]:
        raw = self.store.client.hgetall(self._key)
        records = [GenerationRecord.from_json(str(v)) for v in raw.values()]
        return sorted(records, key=lambda r: r.generation)

    def get(self, generation: int) -> GenerationRecord | None:
        raw = self.store.client.hget(self._key, str(generation))
        return None if raw is None else GenerationRecord.from_json(str(raw))

    def releases(self) -> list[Release]:
        """The job's releases, oldest first."""
        raw = self.store.client.hgetall(self.store.keys.releases(self.job_id))
        found = [Release.from_json(str(v)) for k, v in raw.items() if str(k).isdigit()]
        return sorted(found, key=lambda r: r.number)

    def release(self, alias: str) -> Release | None:
        """The release an alias names now: ``champion`` or ``generation-N``; None when none."""
        if alias == CHAMPION:
            number = self.store.client.hget(self.store.keys.releases(self.job_id), CHAMPION)
            return None if number is None else self._release(int(str(number)))
        named = [r for r in self.releases() if alias in r.aliases]
        return named[-1] if named else None

    def _release(self, number: int) -> Release | None:
        raw = self.store.client.hget(self.store.keys.releases(self.job_id), str(number))
        return None if raw is None else Release.from_json(str(raw))

    def tracked_ids(self) -> TrackedIds:
        return read_tracked_ids(self.store.client, self.store.keys, self.job_id)

    def checkpoint_of(self, record: GenerationRecord) -> str | None:
        """The checkpoint that serves a generation: the newest named in its record while it
        exists, else the newest durable copy of the generation (Ray Train keeps only its latest
        periodic checkpoints)."""
        named = record.checkpoint
        if named and (is_remote(named) or Path(named).exists()):
            return named
        if self.data_root is None:
            return None
        return newest_durable(durable_root(self.data_root, self.job_id), record.generation)

    # --- writing (the supervisor) --------------------------------------------------------------
    def open(
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
        """The generation's record, created (with its MLflow run) unless it exists already."""
        tracker = self._writer()
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
        # HSETNX: a restarted supervisor replaying the same growth creates nothing twice.
        if self.store.client.hsetnx(self._key, str(generation), record.to_json()):
            tracker.open_generation(
                generation, parent=parent, step=step, tags=self._tags(record),
                params=self._params(record),
            )  # fmt: skip
        else:
            record = self.get(generation) or record
        for early in self._early.pop(generation, []):
            self._checkpointed(record, early)
        return record

    def close(self, generation: int, *, step: int) -> None:
        tracker = self._writer()
        record = self.get(generation)
        if record is None or record.closed_at is not None:
            return
        record.closed_at = time.time()
        record.closed_step = step
        self._save(record)
        if self.spec is not None:  # the story so far, drawn once the metrics before it are in
            tracker.story(generation, self.spec.task.metric_name)
        tracker.close_generation(generation)

    def catch_up(
        self,
        generation: int,
        lineage: Sequence[GenerationInfo],
        *,
        step: int,
        param_count: int | None,
    ) -> None:
        """Open every generation after the newest recorded one up to ``generation``, from a
        checkpoint's lineage (the workers resumed from a growth whose event never came)."""
        known = {info.generation: info for info in lineage}
        newest = max((r.generation for r in self.records()), default=0)
        for gen in range(newest + 1, generation + 1):
            info = known.get(gen)
            opened = info.opened_at_step if info else step
            self.close(gen - 1, step=opened)
            self.open(
                gen,
                parent=gen - 1,
                op=info.op if info else None,
                reason=info.reason if info else "found in the checkpoint the workers resumed from",
                policy=info.policy if info else "unknown",
                step=opened,
                param_count=info.param_count if info else param_count,
            )

    def checkpointed(self, event: CheckpointEvent) -> None:
        record = self.get(event.generation)
        if record is None:
            self._early.setdefault(event.generation, []).append(event)
            return
        self._checkpointed(record, event)

    def observed(self, obs: Observation) -> None:
        """An observation of the workers: MLflow metrics, and the record's latest metrics."""
        values: dict[str, float | None] = {
            "train_loss": obs.train_loss,
            "val_loss": obs.val_loss,
            f"val_{obs.metric_name}": obs.val_metric,
            "dataset_size": float(obs.dataset_size),
            "throughput": obs.throughput,
            "param_count": float(obs.param_count),
            "samples_seen": float(obs.samples_seen),
            # a language model counts its data in tokens: the same number, by its name
            "tokens_seen": float(obs.samples_seen) if self._is_lm else None,
            **compute_metrics(obs.compute, obs.generation, obs.dataset_version),
            **slice_metrics(obs),
        }
        clean = {k: v for k, v in values.items() if v is not None}
        tracker = self._writer()
        tracker.log_metrics(obs.generation, obs.step, clean, int(obs.wall_time * 1000))
        if obs.val_metric is not None:  # what a release of these weights is measured by
            seen = json.dumps([obs.generation, obs.step, obs.val_metric, obs.samples_seen])
            self.store.client.lpush(self._validated_key, seen)
            self.store.client.ltrim(self._validated_key, 0, VALIDATED_KEPT - 1)
        record = self.get(obs.generation)
        if record is not None:
            record.metrics = {"step": obs.step, **clean}
            self._save(record)

    def _validated(self, generation: int, step: int) -> tuple[float, int] | None:
        """The validation metric and samples seen observed at ``step`` of ``generation``."""
        for raw in self.store.client.lrange(self._validated_key, 0, -1):
            gen, at, metric, samples = json.loads(raw)
            if (gen, at) == (generation, step):
                return float(metric), int(samples)
        return None

    def converged(self, generation: int, step: int, reason: str, detail: dict[str, Any]) -> None:
        """The loop converged (or spent a per-version budget): its numbers as MLflow metrics, and
        its reason as the run's ``lifelong.converged`` tag."""
        numbers = detail.get("numbers") or {}
        values: dict[str, float | None] = {
            "converged": 1.0,
            "best_val_loss": _number(numbers.get("best_val_loss")),
            "held_val_loss": _number(detail.get("held_val_loss")),
            "held_val_metric": _number(detail.get("held_val_metric")),
            **compute_metrics(
                detail.get("compute") or {}, generation, numbers.get("dataset_version")
            ),
        }
        tracker = self._writer()
        tracker.log_metrics(generation, step, {k: v for k, v in values.items() if v is not None})
        tracker.set_tags(
            generation, {"lifelong.converged": reason, "lifelong.converged_step": str(step)}
        )

    def woken(self, generation: int, step: int) -> None:
        """The loop trains again after converging."""
        self._writer().log_metrics(generation, step, {"converged": 0.0})

    # --- internals -----------------------------------------------------------------------------
    @property
    def _is_lm(self) -> bool:
        return self.spec is not None and self.spec.task.kind == "language_modeling"

    def _writer(self) -> MlflowTracker:
        if self.tracker is None:
            raise RuntimeError("this generation ledger reads only: it was made without a tracker")
        return self.tracker

    def _save(self, record: GenerationRecord) -> None:
        self.store.client.hset(self._key, str(record.generation), record.to_json())

    def _checkpointed(self, record: GenerationRecord, event: CheckpointEvent) -> None:
        """Keep the generation's newest checkpoint; send its first and its last to MLflow as
        artifacts; release it when it is trained weights worth a model version."""
        if record.checkpoint_step is None or event.step >= record.checkpoint_step:
            record.checkpoint = event.path
            record.checkpoint_step = event.step
            self._save(record)
        if self._first_time(record.generation, "first"):
            self._track_checkpoint(event, "checkpoint")
        if event.kind in ("close", "final"):
            final = self._track_checkpoint(event, "checkpoint-final")
            self._maybe_sample(record.generation, final)
        self._maybe_release(record, event)
        if event.kind == "final" and self.spec is not None:  # the job stops: its whole story
            self._writer().story(record.generation, self.spec.task.metric_name)
            self._writer().finish_job(record.generation)

    def _first_time(self, generation: int, what: str) -> bool:
        return bool(
            self.store.client.sadd(self.store.keys.tracked(self.job_id), f"{generation}:{what}")
        )

    def _track_checkpoint(self, event: CheckpointEvent, dest: str) -> str | None:
        path = self._stable_copy(event, dest)
        if path is None:
            return None
        self._writer().log_artifacts(event.generation, path, dest)
        return path

    def _maybe_sample(self, generation: int, checkpoint: str | None) -> None:
        """A language model's closing checkpoint writes a text sample for the generation's run
        (``service.runtime.samples``), once, in the background."""
        if checkpoint is None or not self._is_lm:
            return
        if self._first_time(generation, "sample"):
            target = sample_path(self.data_root, self.job_id, generation)
            self.sampler = start_sample(self._writer(), checkpoint, target, generation)

    # --- releases ------------------------------------------------------------------------------
    def _candidate(self, record: GenerationRecord, event: CheckpointEvent) -> Candidate | None:
        """The checkpoint as a release candidate: trained weights whose validation metric was
        measured on those very weights (the observation of the same step, or the converged
        loop's held weights), else None. An opening ('growth'/'start') copy never is one."""
        if event.kind not in ("periodic", "close", "final") or self.spec is None:
            return None
        seen = self._validated(record.generation, event.step)
        held = _held(event.path)
        if seen is None:
            return None
        value = seen[0] if held is None else held
        return Candidate(record.generation, event.step, event.kind, value, event.wall_time, seen[1])

    def _maybe_release(self, record: GenerationRecord, event: CheckpointEvent) -> None:
        candidate = self._candidate(record, event)
        if candidate is None or not self._first_time(record.generation, f"release@{event.step}"):
            return
        assert self.spec is not None
        key, client = self.store.keys.releases(self.job_id), self.store.client
        state = {str(k): str(v) for k, v in client.hgetall(key).items() if not str(k).isdigit()}
        champion = self._release(int(state[CHAMPION])) if CHAMPION in state else None
        opened = self._classes_opened()
        if champion is not None and champion.generation < opened:
            # It cannot answer the classes that arrived since: its metric, measured on fewer
            # classes, is not comparable, and the first release that knows them is champion.
            champion = None
        best = state.get(f"best:{record.generation}")
        last = state.get("last")
        higher = self.spec.task.metric_name == "accuracy"
        release, crowned = choose(
            candidate, spec=self.spec.release, higher=higher,
            generation_best=float(best) if best is not None else None,
            last=_pair(last) if last else None,
            champion=champion.val_metric if champion else None,
        )  # fmt: skip
        if not release:
            return
        crowned = crowned and record.generation >= opened
        number = int(client.hincrby(key, "count", 1))
        path = self._stable_copy(event, f"release-{number}", weights_only=True)
        if path is None:
            return
        made = Release(
            number=number, generation=record.generation, step=event.step,
            samples_seen=candidate.samples_seen, kind=event.kind,
            metric_name=self.spec.task.metric_name, val_metric=candidate.val_metric, path=path,
            dest=f"release-{number}",
            aliases=[f"generation-{record.generation}", *([CHAMPION] if crowned else [])],
            parent_version=number - 1 if number > 1 else None,
            growth_op=record.op["op"] if record.op else "base", made_at=time.time(),
        )  # fmt: skip
        updates: dict[Any, Any] = {
            str(number): made.to_json(),
            "last": f"{event.step},{candidate.wall_time}",
        }
        if best is None or better(candidate.val_metric, float(best), higher=higher):
            updates[f"best:{record.generation}"] = repr(candidate.val_metric)
        if crowned:
            updates[CHAMPION] = str(number)
        client.hset(key, mapping=updates)
        self._writer().release(record.generation, made.to_json())

    def _classes_opened(self) -> int:
        """The newest generation that a head's growth (add_classes) opened; 0 if none."""
        grown = [r.generation for r in self.records() if r.op and r.op.get("op") == "add_classes"]
        return max(grown, default=0)

    def _stable_copy(
        self, event: CheckpointEvent, dest: str, *, weights_only: bool = False
    ) -> str | None:
        """A copy of the checkpoint that lives until MLflow has it (Ray may delete its own).

        A release serves and exports its weights only, so its copy (``weights_only``) leaves out
        the optimizer state, which is twice the weights' size under Adam."""
        if event.durable or not event.path:
            return event.path or None
        source = Path(event.path)
        if not source.exists() or self.data_root is None:
            return None
        target = Path(tracked_copy_path(self.data_root, self.job_id, event.generation, dest))
        if not target.exists():
            skip = (OPTIMIZER_TENSORS_FILE, OPTIMIZER_JSON_FILE) if weights_only else ()
            shutil.copytree(source, target, ignore=shutil.ignore_patterns(*skip))
        return str(target)

    def _tags(self, record: GenerationRecord) -> dict[str, str]:
        assert self.spec is not None, "a writing ledger has the job's spec"
        tags = {
            "lifelong.op": record.op["op"] if record.op else "base",
            "lifelong.policy": record.policy,
            "lifelong.reason": record.reason[:5000],
            "lifelong.job_name": self.spec.name,
        }
        if record.max_abs_error is not None:
            tags["lifelong.max_abs_error"] = f"{record.max_abs_error:.3e}"
        return tags

    def _params(self, record: GenerationRecord) -> dict[str, str]:
        spec = self.spec
        assert spec is not None, "a writing ledger has the job's spec"
        return {
            "param_count": str(record.param_count),
            "model_family": spec.model.family,
            "model_base": spec.model.model_dump_json(),
            "growth_op": json.dumps(record.op) if record.op else "none",
            "task": spec.task.model_dump_json(),
            "optimizer": spec.optimizer.model_dump_json(),
            "batch_size": str(spec.batch_size),
            "num_workers": str(spec.scaling.num_workers),
        }


def _held(path: str) -> float | None:
    """The validation metric of the weights a converged loop holds, from a local checkpoint's
    meta, when they are the best ones (restored: not the weights of the step's observation)."""
    if not path or is_remote(path):
        return None
    try:
        note = read_meta(path).loop_state.get("converged") or {}
    except (OSError, ValueError):
        return None
    value = note.get("held_val_metric")
    return float(value) if note.get("held") == "best" and isinstance(value, int | float) else None


def _pair(text: str) -> tuple[int, float]:
    step, wall = text.split(",", 1)
    return int(step), float(wall)


def slice_metrics(obs: Observation) -> dict[str, float | None]:
    """Forgetting, backward transfer, drift and the reported slices' metrics (workers.slices) as
    MLflow metrics: ``slice_v<first version>_<metric>`` for each slice the observation carries."""
    out: dict[str, float | None] = {
        "forgetting": obs.forgetting,
        "average_forgetting": obs.average_forgetting,
        "backward_transfer": obs.backward_transfer,
        "drift": obs.drift,
        "slices": float(obs.slice_count) if obs.slice_count else None,
    }
    for name, numbers in obs.slices.items():
        out[f"slice_{name}_{obs.metric_name}"] = numbers.get("metric")
    return out


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def compute_metrics(
    compute: dict[str, Any], generation: int, version: Any
) -> dict[str, float | None]:
    """MLflow metrics of a compute snapshot (``workers.compute.ComputeMeter.snapshot``): the job's
    totals and duty cycle, and what this generation and this data version spent."""
    if not compute:
        return {}
    gen = (compute.get("per_generation") or {}).get(str(generation)) or {}
    ver = (compute.get("per_version") or {}).get(str(version)) or {}
    return {
        "compute_flops": _number(compute.get("flops")),
        "compute_busy_s": _number(compute.get("busy_s")),
        "duty_cycle": _number(compute.get("duty_cycle")),
        "generation_flops": _number(gen.get("flops")),
        "generation_busy_s": _number(gen.get("busy_s")),
        "version_flops": _number(ver.get("flops")),
        "version_busy_s": _number(ver.get("busy_s")),
    }
