"""The train loop that Ray Train runs on every worker: ``train_loop_per_worker(config)``.

It reads like a recipe::

    setup → restore (from the runtime's newest checkpoint, else a fresh model) →
    loop over passes: sync the manifest; wait while there is no data; train the pass, and every
    ``observe_every`` steps observe and act on the directive (grow, checkpoint, pause, stop);
    checkpoint every ``checkpoint_every`` steps →
    cleanup

It never ends on its own: it ends when its decision source says stop (after a final checkpoint).

Lock-step. Every rank takes the same steps: rank 0 loads the manifest at the start of each pass and
broadcasts it, so all ranks plan the pass from the same snapshot; at every observation step rank 0
broadcasts its directive, so a growth, a pause or a stop happens at the same step everywhere. While
waiting for data or paused, rank 0 broadcasts every ``poll_interval`` seconds, so no collective ever
waits long enough to time out (gloo and NCCL time out after 30 minutes by default).

Growth. Every rank syncs BatchNorm buffers from rank 0, receives rank 0's example batch, applies the
same ``net2net`` transform with the op's seed to the unwrapped module, carries the optimizer state
over with ``net2net.transfer_optimizer``, checks that all ranks computed bit-identical parameters,
re-wraps for DDP (the runtime's ``wrap``; parameters replaced under an existing DDP wrapper would
get no gradient hooks), and checkpoints. Rank 0 measures the validation loss just before and just
after, in eval mode.

The loop is one class, :class:`TrainLoop`, on a runtime (``workers.runtime``) that gives it its
ranks, its resume point, its DDP wrap and where its checkpoints are reported: ``RayRuntime`` in a
Ray Train worker, ``LocalRuntime`` in the calling process without Ray (:func:`run_loop`).

Importing this module has no side effects (Ray is imported inside the runtime's methods).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import shutil
import time
from concurrent import futures
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

import net2net
from growth_policy.types import GrowthOp, Observation
from workers import _growth
from workers._dist import module_digest
from workers._writer import Writes, snapshot
from workers.checkpoint import (
    CheckpointKind,
    CheckpointMeta,
    GenerationInfo,
    LoadedCheckpoint,
    build_optimizer,
    checkpoint_path,
    commit_durable,
    durable_root,
    publish,
    save_durable,
    save_temporary,
    stage_durable,
)
from workers.compute import (
    ComputeMeter,
    Converged,
    ConvergenceDetector,
    attention_flops_per_token,
    eval_flops,
    spent,
    train_flops,
)
from workers.device import (
    HostToDevice,
    autocast,
    autocast_dtype,
    available_memory,
    estimate_params_after,
    growth_memory_need,
    memory_refusal,
    move_optimizer_state,
    state_values_per_param,
)
from workers.models import build_model, count_parameters
from workers.reader import DataReader
from workers.recipe import (
    StepCounters,
    learning_rate,
    param_groups,
    regroup,
    set_learning_rate,
    warmup_steps,
)
from workers.runtime import RayRuntime, Resumed, Runtime
from workers.shards import (
    Manifest,
    ManifestDelta,
    ManifestSource,
    ShardStore,
    changes_since,
    is_remote,
    wait_changes,
)
from workers.signals import group_signals
from workers.slices import SliceReport, SliceTracker, per_sample, slice_starts
from workers.sources import (
    BaseSource,
    CheckpointEvent,
    DecisionSource,
    Directive,
    GrowthEvent,
    LoopState,
    LoopStatus,
)
from workers.spec import (
    ComputeSpec,
    DataSpec,
    ModelSpec,
    OptimizerSpec,
    ReplaySpec,
    TaskSpec,
)
from workers.tasks import evaluate, loss_fn, targets
from workers.windows import TokenReader

logger = logging.getLogger(__name__)

OptimizerState = Literal["auto", "carry", "reset"]
# At an observation step, how long rank 0 waits for a growth's background checkpoint writes
# before it skips the observation instead (a small model's are done by then; a large model
# trains on rather than stall).
WRITE_WAIT_S = 1.0


class WorkerConfig(BaseModel):
    """Everything ``train_loop_per_worker`` needs: its ``config`` dict holds these keys."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    job_id: str = Field(min_length=1)
    task: TaskSpec
    model: ModelSpec = Field(description="The base spec; growth records replay on top of it.")
    optimizer: OptimizerSpec = OptimizerSpec()
    store_root: str = Field(description="Storage root URI of the shards (ShardStore).")
    manifest: Any = Field(description="A ManifestSource: where rank 0 reads the manifest.")
    source: Any = Field(default=None, description="A DecisionSource (None: never decides).")
    batch_size: int = Field(default=64, ge=1, description="Per rank.")
    observe_every: int = Field(default=50, ge=1, description="Steps between observations.")
    checkpoint_every: int = Field(
        default=500, ge=0, description="Steps between periodic checkpoints (0: none)."
    )
    checkpoint_root: str | None = Field(
        default=None,
        description="Where durable copies go (growth, close, final): a folder or a URI. "
        "None: the job's folder under store_root (workers.checkpoint.durable_root).",
    )
    checkpoint_before_growth: bool = Field(
        default=True, description="Keep generation N's last state (a durable 'close' copy)."
    )
    background_checkpoints: bool = Field(
        default=True,
        description="Write a growth's closing and opening checkpoints in a background thread "
        "while training goes on (workers._writer); the growth, and its checkpoint to the "
        "runtime, are reported once both are durable. False: write them in the pause.",
    )
    growth_val_samples: int | None = Field(
        default=256,
        ge=1,
        description="Validation samples (the first of the validation set) on which the loss is "
        "measured just before and just after a growth; None: the whole validation set, as an "
        "observation measures it.",
    )
    optimizer_state: OptimizerState = Field(
        default="auto",
        description="How a growth carries the optimizer state to the grown model "
        "(net2net.transfer_optimizer's state): 'auto' follows the init mode's rule; 'carry' and "
        "'reset' force it.",
    )
    loss_smoothing: float = Field(
        default=0.9, ge=0.0, lt=1.0, description="EMA factor of the observed train loss."
    )
    val_max_samples: int | None = Field(default=10_000, ge=1)
    eval_batch_size: int = Field(default=1024, ge=1)
    example_batch_size: int = Field(
        default=256, ge=1, description="Samples used to trace, grow and summarise."
    )
    replay: ReplaySpec = Field(
        default_factory=ReplaySpec,
        description="What each batch holds: the newest share, the history's replay, the pass "
        "length (workers.spec.ReplaySpec).",
    )
    data: DataSpec = Field(
        default_factory=DataSpec,
        description="Per rank, the bytes of decoded training samples held in memory; beyond "
        "them the history is streamed (workers.spec.DataSpec).",
    )
    poll_interval: float = Field(default=1.0, gt=0, description="Seconds, while idle.")
    seed: int = 0
    signals: bool = Field(default=True, description="Compute per-group saturation signals.")
    verify_shards: bool = True
    compute: ComputeSpec = Field(
        default_factory=ComputeSpec,
        description="Convergence (wait for new data), budgets (workers.compute).",
    )

    @field_validator("manifest")
    @classmethod
    def _is_manifest_source(cls, value: Any) -> Any:
        if not isinstance(value, ManifestSource):
            raise ValueError("'manifest' must have load() and wait_newer(version, timeout)")
        return value

    @field_validator("source")
    @classmethod
    def _is_decision_source(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, DecisionSource):
            raise ValueError(
                "'source' must implement workers.sources.DecisionSource (subclass BaseSource)"
            )
        return value

    def durable_root(self) -> str:
        """Where this job's durable checkpoints go (:func:`workers.checkpoint.durable_root`)."""
        return durable_root(self.store_root, self.job_id, self.checkpoint_root)

    def as_loop_config(self) -> dict[str, Any]:
        """The ``train_loop_config`` dict (field values as objects; Ray cloudpickles it)."""
        return {name: getattr(self, name) for name in type(self).model_fields}


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's per-worker function: runs until the decision source says stop."""
    run_loop(WorkerConfig.model_validate(config), RayRuntime())


def run_loop(config: WorkerConfig, runtime: Runtime) -> None:
    """One rank's loop on ``runtime``, from setup to cleanup: runs until the source says stop."""
    loop = TrainLoop(config, runtime=runtime)
    try:
        loop.setup()
        loop.restore()
        loop.run()
    finally:
        loop.cleanup()


@dataclass
class Progress:
    """Counters and history that a checkpoint saves and a resume restores."""

    step: int = 0
    generation: int = 0
    generation_step: int = 0
    samples_seen: int = 0
    passes: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)
    lineage: list[GenerationInfo] = field(default_factory=list)
    train_loss_ema: float | None = None
    checkpointed: tuple[int, int] | None = None  # (step, generation) of the last checkpoint


@dataclass
class _Growth:
    """One growth on this rank, step by step: what each step measured, then its event.

    Applied, it waits as ``TrainLoop._pending`` for the first training step of the grown model,
    which completes its timing (:meth:`event`).
    """

    directive: Directive
    op: GrowthOp
    decided: float  # perf_counter() at the decision: the pause runs from here
    step: int
    generation_before: int
    params_before: int = 0
    params_after: int = 0
    applied: _growth.Applied | None = None
    digests: list[str] = field(default_factory=list)
    val_before: tuple[float, float] | None = None  # (loss, metric), rank 0
    val_after: tuple[float, float] | None = None
    closing: CheckpointEvent | None = None
    opening: CheckpointEvent | None = None
    transform_s: float = 0.0
    eval_s: float = 0.0
    checkpoint_s: float = 0.0
    # Background writes (rank 0): the closing event, and the opening checkpoint staged.
    closing_write: Future[CheckpointEvent] | None = None
    opening_write: Future[_Written] | None = None
    reported: bool = False  # the opening checkpoint is durable and reported to the runtime
    first_step_s: float | None = None
    pause_s: float | None = None
    memory_before: int | None = None  # CUDA: bytes allocated at the decision
    memory_peak: int | None = None  # CUDA: the most allocated from the decision to the first step

    @property
    def ranks_identical(self) -> bool:
        return len(set(self.digests)) <= 1  # one rank: nothing to compare

    def written(self, timeout: float) -> bool:
        """Rank 0: the background writes are done (or there were none), waiting up to
        ``timeout`` seconds for them."""
        writes: list[Future[Any]] = [self.closing_write] if self.closing_write else []
        writes += [self.opening_write] if self.opening_write else []
        return not futures.wait(writes, timeout=timeout).not_done

    def timed(self, first_step_s: float, device: torch.device) -> None:
        """The grown model's first step is done: the pause ends now."""
        self.first_step_s = first_step_s
        self.pause_s = time.perf_counter() - self.decided
        if device.type == "cuda":
            self.memory_peak = torch.cuda.max_memory_allocated(device)

    def event(self) -> GrowthEvent:
        """The growth event; the pause ends at the first step, or now if there was none yet."""
        assert self.applied is not None
        writes = [c.seconds for c in (self.closing, self.opening) if c is not None]
        before, after = self.val_before, self.val_after
        return GrowthEvent(
            step=self.step,
            generation_before=self.generation_before,
            generation_after=self.generation_before + 1,
            op=self.op,
            reason=self.directive.reason,
            policy=self.directive.policy,
            record=self.applied.record,
            params_before=self.params_before,
            params_after=self.params_after,
            val_loss_before=before[0] if before else None,
            val_loss_after=after[0] if after else None,
            val_metric_before=before[1] if before else None,
            val_metric_after=after[1] if after else None,
            max_abs_error=self.applied.max_abs_error,
            ranks_identical=self.ranks_identical,
            rank_digests=self.digests,
            transform_s=self.transform_s,
            eval_s=self.eval_s,
            checkpoint_s=self.checkpoint_s,
            checkpoint_write_s=sum(writes) if self.opening_write is not None else None,
            first_step_s=self.first_step_s,
            pause_s=self.pause_s
            if self.pause_s is not None
            else time.perf_counter() - self.decided,
            memory_before_bytes=self.memory_before,
            memory_peak_bytes=self.memory_peak,
            closing_checkpoint=self.closing,
            opening_checkpoint=self.opening,
        )


class TrainLoop:
    """One rank's loop on a runtime (``workers.runtime``: Ray Train, or this process).

    :func:`run_loop` drives it (``train_loop_per_worker`` on Ray); tests may drive its parts.
    """

    def __init__(self, config: WorkerConfig, *, runtime: Runtime) -> None:
        self.cfg = config
        self.runtime = runtime
        self.progress = Progress()
        self.source: DecisionSource = config.source if config.source is not None else BaseSource()
        self.state: LoopState = "starting"
        self.stopping = False
        self._pending: _Growth | None = None
        self.writes = Writes()  # background checkpoint writes (rank 0)
        self._summary_cache: tuple[int, dict[str, Any] | None, Any] | None = None
        self._loss_sum = torch.zeros(())
        self._loss_count = 0
        self._window_start = time.perf_counter()
        self._window_samples = 0
        self._pass_fraction = 0.0
        self._replan = False  # the manifest changed while idle: start a new pass with it
        # (step, generation, (val loss, metric)) of the last observation, reused as the "before"
        # of a growth decided on it: the model has not changed since.
        self._observed_val: tuple[int, int, tuple[float, float]] | None = None
        # Compute that follows the data (workers.compute): what was spent, convergence, the best
        # weights since the data last changed (wake_from='best'), and the converged state.
        self.meter = ComputeMeter()
        self.detector = ConvergenceDetector(config.compute)
        self._best: _Snapshot | None = None
        self._busy_mark: float | None = None  # perf_counter() since which time counts as busy
        self._params = 0
        self._attention = 0.0  # attention's forward FLOPs per token (a gpt), not in _params
        self._lm = config.task.kind == "language_modeling"
        self._micro = 0  # micro-batches accumulated toward the next optimizer step
        self._step_started = 0.0
        self._warmup = warmup_steps(config.optimizer, config.task)
        self.lr = config.optimizer.lr  # the scheduled learning rate of the last step
        self._converged: _ConvergedNote | None = None
        # Rank 0: per-slice validation, forgetting and drift (workers.slices).
        self.slices = SliceTracker(higher_is_better=config.task.higher_is_better)

    # -- setup ------------------------------------------------------------------------------------

    def setup(self) -> None:
        self.group = self.runtime.start()
        lm = self.cfg.task.kind == "language_modeling"
        self.reader: DataReader | TokenReader = (TokenReader if lm else DataReader)(
            ShardStore(self.cfg.store_root),
            self.cfg.task,
            rank=self.group.rank,
            world_size=self.group.world_size,
            batch_size=self.cfg.batch_size,
            seed=self.cfg.seed,
            load_val=self.group.is_main,
            val_max_samples=self.cfg.val_max_samples,
            verify=self.cfg.verify_shards,
            replay=self.cfg.replay,
            resident_bytes=self.cfg.data.resident_bytes,
        )
        self.loss = loss_fn(self.cfg.task)
        self._loss_sum = torch.zeros((), device=self.group.device)
        self._amp = autocast_dtype(self.cfg.compute.precision, self.group.device)
        self._to_device = HostToDevice(self.group.device)

    def restore(self) -> None:
        """Resume from the runtime's newest checkpoint, or build the base model from the spec."""
        resumed = self.runtime.resume(self.group)
        if resumed is not None:
            module = self._resume(resumed.checkpoint)
            optimizer_state = resumed.checkpoint.optimizer_state
        else:
            torch.manual_seed(self.cfg.seed)  # the same initial weights on every rank
            module = build_model(self.cfg.model, self.cfg.task)
            optimizer_state = None
            self.progress.lineage = [
                GenerationInfo(
                    generation=0, opened_at_step=0, param_count=count_parameters(module), records=0
                )
            ]
        module = module.to(self.group.device).train()
        self._params = count_parameters(module)
        self._attention = attention_flops_per_token(module, self.cfg.task.context_length)
        self.optimizer = self._build_optimizer(module, optimizer_state)
        self._wrap(module)
        pids = self.group.gather_str(str(os.getpid()))
        nodes = self.group.gather_str(self.runtime.node_id())
        self._set_state(
            "starting",
            world_size=self.group.world_size,
            device=str(self.group.device),
            pids=[int(p) for p in pids],
            node_ids=nodes,
            resumed_from=_resumed_detail(resumed),
        )

    def _build_optimizer(
        self, module: nn.Module, state: dict[str, Any] | None
    ) -> torch.optim.Optimizer:
        """The optimizer with its param groups (``workers.recipe.param_groups``) and the saved
        state; a state saved with other groups (one group, before the recipe had two) loads into
        the optimizer over all parameters, as it was saved."""
        spec = self.cfg.optimizer
        optimizer = build_optimizer(spec, cast(Any, param_groups(spec, module)))
        if state is not None:
            if len(state.get("param_groups", [])) != len(optimizer.param_groups):
                optimizer = build_optimizer(spec, module.parameters())
            optimizer.load_state_dict(state)
        return optimizer

    def _resume(self, loaded: LoadedCheckpoint) -> nn.Module:
        """Take the counters, the history and the source's state from a checkpoint."""
        meta = loaded.meta
        self.progress = Progress(
            step=meta.step,
            generation=meta.generation,
            generation_step=meta.generation_step,
            samples_seen=meta.samples_seen,
            passes=meta.passes,
            records=list(meta.records),
            lineage=list(meta.lineage),
            train_loss_ema=meta.loop_state.get("train_loss_ema"),
            checkpointed=(meta.step, meta.generation),
        )
        if self.group.is_main:
            self.source.load_state_dict(meta.source_state)
        self.meter.load_state_dict(meta.loop_state.get("compute") or {})
        self.slices.load_state_dict(meta.loop_state.get("slices") or {})
        note = meta.loop_state.get("converged")
        self._converged = _ConvergedNote.model_validate(note) if note else None
        return loaded.model

    def _wrap(self, module: nn.Module) -> None:
        """Wrap for DDP (or not, with one rank); keep the plain module for growth and saving."""
        self.module = module
        self.model = self.runtime.wrap(module)

    def cleanup(self) -> None:
        self._summary_cache = None
        self.writes.close()
        reader = getattr(self, "reader", None)
        if reader is not None and hasattr(reader, "close"):
            reader.close()

    # -- the loop ---------------------------------------------------------------------------------

    def run(self) -> None:
        self._busy_mark = time.perf_counter()
        while not self.stopping:
            self.sync_manifest()
            if not self.reader.ready:
                self.idle("waiting_for_data")
                continue
            if self._still_converged():
                continue
            plan = self.reader.plan(self.progress.passes)
            self.progress.passes += 1
            self._set_state("training")
            if self._window_samples == 0:
                self._window_start = time.perf_counter()
            self._replan = False
            self._micro = 0  # a pass starts a fresh optimizer step
            for i, (features, labels) in enumerate(self.reader.batches(plan)):
                stepped = self.train_step(features, labels)
                self._pass_fraction = (i + 1) / plan.steps
                if not stepped:  # a micro-batch of gradient accumulation
                    continue
                if self.progress.step % self.cfg.observe_every == 0:
                    self.observe_and_act()
                if self.stopping:
                    break
                every = self.cfg.checkpoint_every
                if every and self.progress.step % every == 0:
                    self.checkpoint("periodic")
                if self._replan:
                    break
        self._finish_pending_growth()

    def sync_manifest(self) -> Manifest:
        """Rank 0 reads what changed in the manifest since the version every rank holds (the
        appended shards; the whole manifest only when the ranks hold none or it was rewritten)
        and broadcasts it; every rank adopts the same snapshot."""
        text = None
        if self.group.is_main:
            text = changes_since(self.cfg.manifest, self.reader.manifest).model_dump_json()
        return self._adopt_manifest(self.group.broadcast_str(text))

    def _adopt_manifest(self, text: str) -> Manifest:
        manifest = ManifestDelta.model_validate_json(text).apply(self.reader.manifest)
        if manifest.version != self.reader.manifest.version or not self.reader.manifest.job_id:
            self.reader.update(manifest)
            self._fit_head()
        return manifest

    def head_size(self) -> int:
        """Classification: the head's outputs now (num_classes, then each add_classes)."""
        size = self.cfg.task.num_classes or 0
        for rec in self.progress.records:
            if rec.get("op") == "add_classes":
                size = max(size, int(rec["classes"][1]))
        return size

    def _fit_head(self) -> None:
        """Every rank, on the same manifest: open classes (``task.max_classes``) grow the head
        to the largest label listed (op ``add_classes``, a generation of its own) before anything
        trains or validates on it. Ingest refuses labels at or beyond ``max_classes``."""
        task = self.cfg.task
        top = self.reader.manifest.max_label
        if task.kind != "classification" or not task.max_classes or top is None:
            return
        head, wanted = self.head_size(), min(top + 1, task.max_classes)
        if wanted <= head:
            return
        op = GrowthOp(op="add_classes", classes=wanted, seed=self.cfg.seed + self.progress.step)
        reason = (
            f"class {top} arrived in data version {self.reader.manifest.version}, beyond the "
            f"head's {head} classes: the head grows to {wanted} outputs (task.max_classes = "
            f"{task.max_classes})"
        )
        numbers: dict[str, float | int | str] = {"classes_before": head, "classes_after": wanted}
        directive = Directive(op=op, reason=reason, policy="open_classes", numbers=numbers)
        self.grow(directive, time.perf_counter())

    def train_step(self, features: torch.Tensor, labels: torch.Tensor) -> bool:
        """One micro-batch: forward and backward; every ``optimizer.accumulation_steps``-th one
        also steps the optimizer (clipping, the scheduled rate). Returns whether it stepped."""
        spec = self.cfg.optimizer
        if self._micro == 0:
            self._step_started = time.perf_counter()
            self.optimizer.zero_grad(set_to_none=True)
        x, y = self._to_device(features, targets(labels, self.cfg.task))
        last = self._micro + 1 >= spec.accumulation_steps
        # DDP averages gradients at the last micro-batch of a step only
        local = not last and hasattr(self.model, "no_sync")
        with cast(Any, self.model).no_sync() if local else contextlib.nullcontext():
            with autocast(self.group.device, self._amp):
                loss = self.loss(self.model(x), y)
            k = spec.accumulation_steps
            torch.autograd.backward(loss / k if k > 1 else loss)
        self._loss_sum += loss.detach()
        self._loss_count += 1
        p = self.progress
        # a language model counts tokens: its samples seen, sizes and budgets are in tokens
        samples = (x.numel() if x.dim() == 2 and self._lm else x.shape[0]) * self.group.world_size
        p.samples_seen += samples
        self._window_samples += samples
        flops = train_flops(self._params, samples, self._attention)
        if not last:
            self._micro += 1
            self._account(samples=samples, flops=flops)
            return False
        self._micro = 0
        self._optimizer_step()
        p.step += 1
        p.generation_step += 1
        self._account(steps=1, samples=samples, flops=flops)
        self._after_step(self._step_started)
        return True

    def _optimizer_step(self) -> None:
        """Clip, set the scheduled learning rate, step (``workers.recipe``)."""
        spec, p = self.cfg.optimizer, self.progress
        if spec.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), spec.clip_grad_norm)
        budget = self.cfg.compute
        counters = StepCounters(
            step=p.step,
            generation=p.generation,
            generation_step=p.generation_step,
            version_step=self.meter.version(self.reader.manifest.version).steps,
            version_budget=budget.budget_per_version.steps,
            total_budget=budget.budget_total.steps,
        )
        self.lr = learning_rate(spec, counters, self._warmup)
        set_learning_rate(self.optimizer, self.lr)
        self.optimizer.step()

    def _after_step(self, started: float) -> None:
        """The first step of a grown model: time it and report the growth once written."""
        pending = self._pending
        if pending is not None and pending.pause_s is None:
            if self.group.device.type == "cuda":
                torch.cuda.synchronize(self.group.device)
            pending.timed(time.perf_counter() - started, self.group.device)
            if pending.reported:
                self._finish_pending_growth()

    # -- observe and act --------------------------------------------------------------------------

    def observe_and_act(self) -> None:
        """Every rank: the smoothed loss; rank 0: observe and decide; every rank: act."""
        if not self._growth_announced():
            return
        window_mean = self.group.mean([self._loss_sum.item() / max(1, self._loss_count)])[0]
        self._loss_sum.zero_()
        self._loss_count = 0
        ema = self.progress.train_loss_ema
        a = self.cfg.loss_smoothing
        self.progress.train_loss_ema = (
            window_mean if ema is None else a * ema + (1 - a) * window_mean
        )
        text = None
        decided = time.perf_counter()
        if self.group.is_main:
            observation = self.observe()
            directive = self.source.decide(observation)
            decided = time.perf_counter()
            text = self._step_message(observation, directive).model_dump_json()
        message = _StepMessage.model_validate_json(self.group.broadcast_str(text))
        if message.improved:
            self._best = _Snapshot.of(self, message.improved)
        self.act(message.directive, decided)
        self._window_start = time.perf_counter()
        self._window_samples = 0
        if self.stopping or message.directive.pause:
            return
        if message.total_spent is not None:
            self.stop(message.total_spent, budget=True)
        elif message.converged is not None and message.directive.op is None:
            self.converge(message.converged)

    def _growth_announced(self) -> bool:
        """Every rank, at an observation step: once a growth's background writes are done (rank 0
        waits up to ``WRITE_WAIT_S`` for them), the growth is reported first; while they are not,
        this observation is skipped and training goes on. So the source never observes generation
        N+1 before it hears of the growth (the controller and the supervisor count on that), and
        a crash before then resumes from before the growth with nothing of it announced."""
        pending = self._pending
        if pending is None or pending.reported:
            return True
        done = pending.written(WRITE_WAIT_S) if self.group.is_main else False
        if not self.group.broadcast_str(("1" if done else "") if self.group.is_main else None):
            return False
        self._finish_pending_growth()
        return True

    def _step_message(self, observation: Observation, directive: Directive) -> _StepMessage:
        """Rank 0: the directive, with what convergence and the budgets say of this step."""
        compute = self.cfg.compute
        p = self.progress
        version = self.reader.manifest.version
        total = spent(compute.budget_total, self.meter.total)
        if total is not None:
            total = f"the job's total compute budget is spent: {total} (compute.budget_total)"
        converged: _ConvergedNote | None = None
        improved = None
        if compute.idle_when_converged:
            verdict = self.detector.update(
                step=p.step, samples_seen=p.samples_seen, dataset_version=version,
                dataset_size=self.reader.train_size, generation=p.generation,
                val_loss=observation.val_loss,
            )  # fmt: skip
            val = (observation.val_loss, observation.val_metric)
            if verdict.improved and compute.wake_from == "best" and None not in val:
                improved = (float(val[0] or 0.0), float(val[1] or 0.0))
            if verdict.converged is not None:
                converged = _ConvergedNote.of(verdict.converged)
        used = spent(compute.budget_per_version, self.meter.version(version))
        if used is not None:
            converged = _ConvergedNote(
                reason=f"the compute budget of data version {version} is spent: {used} "
                "(compute.budget_per_version): waiting for new data",
                numbers={"dataset_version": version, **self.meter.version(version).as_dict()},
                budget=True,
            )
        return _StepMessage(
            directive=directive, improved=improved, converged=converged, total_spent=total
        )

    def observe(self) -> Observation:
        """Rank 0's observation of the model and the data now."""
        p = self.progress
        elapsed = time.perf_counter() - self._window_start
        val_loss = val_metric = None
        report = SliceReport()
        if self.reader.val_size:
            val_loss, val_metric, report = self.validate_slices()
            self._observed_val = (p.step, p.generation, (val_loss, val_metric))
            window = self.cfg.task.context_length if self._lm else 1  # val_max_samples: windows
            cap = (self.cfg.val_max_samples or self.reader.val_size) * window
            val_n = min(self.reader.val_size, cap)
            self.meter.add(p.generation, self.reader.manifest.version,
                           flops=eval_flops(self._params, val_n, self._attention))  # fmt: skip
        summary, groups = self._summary()
        signals: dict[str, dict[str, float]] = {}
        if self.cfg.signals and groups is not None:
            try:
                signals = group_signals(self.module, self._example(), groups)
            except Exception as exc:
                logger.warning("group signals failed: %s", exc)
        return Observation(
            step=p.step,
            generation=p.generation,
            generation_step=p.generation_step,
            samples_seen=p.samples_seen,
            passes=max(0.0, p.passes - 1 + self._pass_fraction),
            dataset_size=self.reader.train_size,
            val_size=self.reader.val_size,
            dataset_version=self.reader.manifest.version,
            train_loss=float(p.train_loss_ema if p.train_loss_ema is not None else math.nan),
            val_loss=val_loss,
            val_metric=val_metric,
            metric_name=self.cfg.task.metric_name,
            data_unit="tokens" if self._lm else "samples",
            param_count=count_parameters(self.module),
            throughput=self._window_samples / elapsed if elapsed > 0 else 0.0,
            wall_time=time.time(),
            summary=summary,
            group_signals=signals,
            compute=self.meter.snapshot(),
            **report.fields(),
        )

    def act(self, directive: Directive, decided: float) -> None:
        """Every rank, at the same step: apply what rank 0's source said; pause if it says so."""
        self.apply(directive, decided)
        if directive.pause and not self.stopping:
            self.idle("paused")

    def apply(self, directive: Directive, decided: float) -> None:
        """Every rank: grow, checkpoint and stop as ``directive`` says (training or idle)."""
        if directive.op is not None:
            self.grow(directive, decided)
        if directive.checkpoint:
            self.checkpoint("periodic")
        if directive.stop:
            self.stop(directive.reason or "stopped by the decision source")

    def idle(self, state: LoopState) -> str:
        """Wait for data or for a resume, without spinning and in lock-step with every rank.

        Idle time is not busy time (``ComputeMeter``). Returns what ended the wait: 'data' (a new
        manifest), 'command' (a resume, a wake, a stop) or 'ready' (data was there already).
        """
        self._account()
        self._busy_mark = None
        try:
            return self._idle(state)
        finally:
            self._busy_mark = time.perf_counter()

    def _idle(self, state: LoopState) -> str:
        while not self.stopping:
            if state == "waiting_for_data" and self.reader.ready:
                return "ready"
            # A growth is reported at the grown model's first step (to time the pause); idling
            # may last long, so one applied just before is reported now, ahead of the idle state.
            self._finish_pending_growth()
            self._set_state(state)
            text = self._poll(state).model_dump_json() if self.group.is_main else None
            message = _IdleMessage.model_validate_json(self.group.broadcast_str(text))
            if message.change is not None:
                self.reader.update(message.change.apply(self.reader.manifest))
                self._fit_head()
                self._replan = True
            directive = message.directive
            self.apply(directive, time.perf_counter())
            if self.stopping or (state == "paused" and not directive.pause):
                return "command"
            if state == "converged" and not directive.pause:
                if message.change is not None:
                    return "data"
                if directive.wake:
                    return "command"
            if state in ("waiting_for_data", "converged") and directive.pause:
                state = "paused"
        return "command"

    def _poll(self, state: LoopState) -> _IdleMessage:
        """Rank 0, idle: wait ``poll_interval`` (or for a newer manifest), then ask the source."""
        known = self.reader.manifest
        if state in ("waiting_for_data", "converged"):
            change = wait_changes(self.cfg.manifest, known, self.cfg.poll_interval)
        else:
            time.sleep(self.cfg.poll_interval)
            change = changes_since(self.cfg.manifest, known)
        directive = self.source.poll(self._status(state))
        return _IdleMessage(
            directive=directive, change=change if change.version != known.version else None
        )

    def stop(self, reason: str, *, budget: bool = False) -> None:
        self._finish_pending_growth()
        self.checkpoint("final")
        self.stopping = True
        self._set_state("stopped", reason=reason, budget=budget)

    # -- converged: compute that follows the data ------------------------------------------------

    def converge(self, note: _ConvergedNote) -> None:
        """Every rank: the job has learned what its data holds (or spent its budget for this data
        version). Hold the best weights or the last ones (``compute.wake_from``), checkpoint them,
        and wait for new data, blocked on the manifest as while waiting for a first push; a push,
        or a resume or grow command (``Directive.wake``), ends the wait."""
        self._converged = note.model_copy(update=self._hold(note))
        self.progress.checkpointed = None  # the weights held may be older than the last checkpoint
        self.checkpoint("periodic")
        self._wake(self.idle("converged"))

    def _hold(self, note: _ConvergedNote) -> dict[str, Any]:
        """Every rank: restore the best weights where wanted and known; what is held, in words."""
        best, p = self._best, self.progress
        if (
            self.cfg.compute.wake_from == "best"
            and not note.budget
            and best is not None
            and best.generation == p.generation
        ):
            best.restore(self)
            self._summary_cache = None
            return {"held": "best", "held_step": best.step, "held_val_loss": best.val_loss,
                    "held_val_metric": best.val_metric}  # fmt: skip
        seen = self._observed_val
        val = seen[2] if seen is not None and seen[:2] == (p.step, p.generation) else (None, None)
        return {"held": "last", "held_step": p.step, "held_val_loss": val[0],
                "held_val_metric": val[1]}  # fmt: skip

    def _wake(self, woken_by: str) -> None:
        """Every rank: out of the converged wait; convergence is measured afresh from here."""
        self._converged = None
        self.detector.reset()
        self._window_start, self._window_samples = time.perf_counter(), 0  # throughput: no wait
        if not self.stopping:
            self._set_state("training", woken_by=woken_by)

    def _still_converged(self) -> bool:
        """Every rank, after a resume: a checkpoint written while converged waits again, unless
        the data changed since."""
        note = self._converged
        if note is None or self.state == "converged":
            return False
        if note.numbers.get("dataset_version") != self.reader.manifest.version:
            self._converged = None
            return False
        self._wake(self.idle("converged"))
        return True

    def _account(self, *, steps: int = 0, samples: int = 0, flops: float = 0.0) -> None:
        """Book the busy time since the last mark (none while idle) and what the step spent."""
        busy = 0.0
        if self._busy_mark is not None:
            now = time.perf_counter()
            busy, self._busy_mark = now - self._busy_mark, now
        if steps or samples or flops or busy:
            self.meter.add(self.progress.generation, self.reader.manifest.version,
                           steps=steps, samples=samples, flops=flops, busy_s=busy)  # fmt: skip

    # -- growth -----------------------------------------------------------------------------------

    def grow(self, directive: Directive, decided: float) -> None:
        """Every rank: apply ``directive.op`` to the same module with the same example and seed.

        The steps: share rank 0's buffers and example; close generation N (a durable copy);
        validate before; transform (on failure the model stays and the source hears why); open
        generation N+1; validate after; checkpoint it. The event goes out after the grown model's
        first step (:meth:`_finish_pending_growth`).
        """
        assert directive.op is not None
        self._finish_pending_growth()
        p = self.progress
        growth = _Growth(
            directive, directive.op, decided=decided, step=p.step, generation_before=p.generation
        )
        if self.group.device.type == "cuda":  # the growth's peak memory (GrowthEvent)
            growth.memory_before = torch.cuda.memory_allocated(self.group.device)
            torch.cuda.reset_peak_memory_stats(self.group.device)
        example = self._shared_example()
        self._close_generation(growth)
        self._validate_before(growth)
        if not self._transform(growth, example):
            if growth.closing_write is not None:  # generation N's copy stands: announce it
                self.source.on_checkpoint(growth.closing_write.result())
            return
        self._open_generation(growth)
        self._validate_after(growth)
        _fault_point(self.cfg.job_id, "transform")  # test-only crash points (docs/reliability.md)
        self._open_checkpoint(growth)
        if growth.reported:  # written in the pause; else once the background writes are done
            _fault_point(self.cfg.job_id, "checkpoint")
        self._pending = growth
        if not growth.ranks_identical:
            logger.error("ranks disagree after growth: %s", growth.digests)

    def _shared_example(self) -> torch.Tensor:
        """Every rank: rank 0's buffers, and rank 0's example batch to grow with."""
        self.group.sync_buffers(self.module)
        return self.group.broadcast_tensor(self._example() if self.group.is_main else None)

    def _close_generation(self, growth: _Growth) -> None:
        """Rank 0: generation N's last state, a durable 'close' copy (``checkpoint_before_growth``),
        written in the pause or in the background. A widen or deepen leaves the old model and
        optimizer untouched, so the background write reads them as they are; an op that changes
        them in place gets a copy."""
        started = time.perf_counter()
        if self.cfg.checkpoint_before_growth and self.group.is_main:
            if not self.cfg.background_checkpoints:
                growth.closing = self._save_durable("close")
            else:
                p = self.progress
                in_place = growth.op.op not in ("widen", "deepen", "add_classes")
                weights, optimizer = snapshot(self.module, self.optimizer, copy=in_place)
                growth.closing_write = self.writes.submit(
                    _write_closing,
                    checkpoint_path(self.cfg.durable_root(), p.generation, p.step),
                    weights,
                    optimizer,
                    self._meta("close"),
                )
        growth.checkpoint_s += time.perf_counter() - started

    def _validate_before(self, growth: _Growth) -> None:
        """Rank 0: the validation loss before: on ``growth_val_samples`` (the samples measured
        after), else reused from the deciding observation when that measured these same
        weights."""
        started = time.perf_counter()
        if self.group.is_main and self.reader.val_size:
            seen = self._observed_val
            limit = self.cfg.growth_val_samples
            if (
                limit is None
                and seen is not None
                and seen[:2] == (growth.step, growth.generation_before)
            ):
                growth.val_before = seen[2]
            else:
                growth.val_before = self.validate(limit, classes=_old_classes(growth))
        growth.eval_s += time.perf_counter() - started

    def _transform(self, growth: _Growth, example: torch.Tensor) -> bool:
        """Every rank: the transform, the optimizer carried over, the rank check and the re-wrap.

        Every rank computes the same thing, so a failure is the same everywhere: then the model
        is left as it was, the source hears why, and False is returned.
        """
        started = time.perf_counter()
        growth.params_before = count_parameters(self.module)
        error = self._memory_refusal(growth.op)  # each rank its own device
        if not error:
            try:
                growth.applied = _growth.apply_op(
                    self.module,
                    self.optimizer,
                    example,
                    growth.op,
                    optimizer_state=self.cfg.optimizer_state,
                )
            except Exception as exc:  # same model, example and seed: every rank fails alike
                error = f"{type(exc).__name__}: {exc}"
        errors = [e for e in self.group.gather_str(error) if e]
        if errors or growth.applied is None:
            logger.warning("growth %s failed: %s", growth.op.model_dump_json(), errors[0])
            if self.group.is_main:
                self.source.on_growth_failed(growth.op, growth.step, errors[0])
            return False
        grown = growth.applied.model.to(self.group.device).train()
        move_optimizer_state(growth.applied.optimizer, self.group.device)  # a no-op when there
        if self.group.world_size > 1:  # one rank has nothing to compare with
            growth.digests = self.group.gather_str(module_digest(grown))
        self.optimizer = growth.applied.optimizer
        regroup(self.optimizer, self.cfg.optimizer, grown)  # the groups a resume builds
        if grown is not self.module:
            self._wrap(grown)
        growth.transform_s = time.perf_counter() - started
        return True

    def _memory_refusal(self, op: GrowthOp) -> str:
        """Why this rank's device cannot hold the grown model ('' if it can, or not a GPU)."""
        available = available_memory(self.group.device)
        if available is None:
            return ""
        groups = (self._summary()[1] or []) if op.op == "widen" and op.widths else []
        after = estimate_params_after(self.module, op, {g.name: g.width for g in groups})
        need = growth_memory_need(
            after,
            state_per_param=state_values_per_param(self.optimizer, count_parameters(self.module)),
            snapshot=self.cfg.background_checkpoints,
        )
        refusal = memory_refusal(need, available, device=self.group.device, params_after=after)
        return refusal or ""

    def _open_generation(self, growth: _Growth) -> None:
        """Every rank: generation N+1 begins, with the growth record and its lineage entry."""
        applied = growth.applied
        assert applied is not None
        p = self.progress
        p.generation += 1
        p.generation_step = 0
        if applied.record is not None:
            p.records.append(applied.record)
        growth.params_after = count_parameters(self.module)
        self._params = growth.params_after
        self._attention = attention_flops_per_token(self.module, self.cfg.task.context_length)
        self._best = None  # the best weights so far belong to the model before the growth
        p.lineage.append(
            GenerationInfo(
                generation=p.generation,
                opened_at_step=p.step,
                op=growth.op.model_dump(mode="json"),
                reason=growth.directive.reason,
                policy=growth.directive.policy,
                param_count=growth.params_after,
                max_abs_error=applied.max_abs_error,
                records=len(p.records),
            )
        )
        self._summary_cache = None

    def _validate_after(self, growth: _Growth) -> None:
        """Rank 0: the validation loss of the grown model (on the samples measured before)."""
        started = time.perf_counter()
        if self.group.is_main and self.reader.val_size:
            growth.val_after = self.validate(
                self.cfg.growth_val_samples, classes=_old_classes(growth)
            )
        growth.eval_s += time.perf_counter() - started

    def _open_checkpoint(self, growth: _Growth) -> None:
        """Every rank: generation N+1's first state (durable, and reported to the runtime).

        In the background (``background_checkpoints``), rank 0 snapshots the state and the writer
        stages it; :meth:`_report_growth` puts it in place and reports it once it is whole.
        """
        started = time.perf_counter()
        if not self.cfg.background_checkpoints:
            growth.opening = self.checkpoint("growth")
            growth.reported = True
        else:
            self.group.sync_buffers(self.module)
            if self.group.is_main:
                p = self.progress
                weights, optimizer = snapshot(self.module, self.optimizer, copy=True)
                growth.opening_write = self.writes.submit(
                    _write_opening,
                    checkpoint_path(self.cfg.durable_root(), p.generation, p.step),
                    weights,
                    optimizer,
                    self._meta("growth"),
                )
            self.progress.checkpointed = (self.progress.step, self.progress.generation)
        growth.checkpoint_s += time.perf_counter() - started

    def _finish_pending_growth(self) -> None:
        """Every rank: the pending growth's checkpoints awaited and reported, then its event."""
        pending = self._pending
        if pending is None:
            return
        if not pending.reported:
            self._report_growth(pending)
        self._pending = None
        if self.group.is_main:
            self.source.on_growth(pending.event())

    def _report_growth(self, growth: _Growth) -> None:
        """Every rank: rank 0 waits for the background writes and puts the opening checkpoint in
        place; every rank reports it to the runtime (a barrier); the source hears of both."""
        folder: Path | None = None
        written: _Written | None = None
        if self.group.is_main:
            if growth.closing_write is not None:
                growth.closing = growth.closing_write.result()
                self.source.on_checkpoint(growth.closing)
            assert growth.opening_write is not None
            written = growth.opening_write.result()
            folder = written.commit()
        generation = growth.generation_before + 1
        runtime_path = self.runtime.report(
            {"step": growth.step, "generation": generation, "kind": "growth"},
            folder,
            generation=generation,
            step=growth.step,
            background=True,
            delete_after=written is not None and is_remote(written.path),
        )
        growth.reported = True
        if written is not None:
            growth.opening = written.event(ray_path=runtime_path)
            self.source.on_checkpoint(growth.opening)
        _fault_point(self.cfg.job_id, "checkpoint")

    # -- evaluation -------------------------------------------------------------------------------

    def validate(
        self, limit: int | None = None, *, classes: int | None = None
    ) -> tuple[float, float]:
        """Rank 0: ``(loss, metric)`` on the validation set (its first ``limit`` samples), in
        eval mode; with ``classes``, on the samples of the classes below it alone (a growth of
        the head measures the old classes before and after)."""
        features, labels = self.reader.validation()
        if classes is not None:
            keep = labels < classes
            features, labels = features[keep], labels[keep]
        if limit is not None:
            features, labels = features[:limit], labels[:limit]
        with autocast(self.group.device, self._amp):  # the model as it trains
            return evaluate(
                self.module,
                features,
                labels,
                self.cfg.task,
                batch_size=self.cfg.eval_batch_size,
                device=self.group.device,
            )

    def validate_slices(self) -> tuple[float, float, SliceReport]:
        """Rank 0: :meth:`validate` on the whole set, measured per sample once and grouped by
        data version into slices (``workers.slices``): forgetting, backward transfer, drift."""
        if self.cfg.task.kind not in ("classification", "regression"):
            return (*self.validate(), SliceReport())
        features, labels = self.reader.validation()
        with autocast(self.group.device, self._amp):  # the model as it trains
            losses, metrics = per_sample(
                self.module,
                features,
                labels,
                self.cfg.task,
                batch_size=self.cfg.eval_batch_size,
                device=self.group.device,
            )
        counts: dict[int, int] = {}
        for info in self.reader.manifest.val_shards:
            counts[info.version] = counts.get(info.version, 0) + info.num_samples
        starts = slice_starts(sorted(counts.items()))
        report = self.slices.update(starts, self.reader.validation_versions(), losses, metrics)
        return float(losses.mean()), float(metrics.mean()), report

    def _example(self) -> torch.Tensor:
        """Rank 0: real inputs to trace, grow and summarise with (random ones without data)."""
        if self.reader.val_size or self.reader.local_size:
            return self.reader.example_batch(self.cfg.example_batch_size).to(self.group.device)
        gen = torch.Generator().manual_seed(self.cfg.seed)
        shape = (min(8, self.cfg.example_batch_size), *self.cfg.task.input_shape)
        if self._lm:  # token ids
            return torch.randint(0, self.cfg.task.vocab, shape, generator=gen).to(self.group.device)
        return torch.randn(shape, generator=gen).to(self.group.device)

    def _summary(self) -> tuple[dict[str, Any] | None, Any]:
        """``net2net.summarize`` and the width groups, once per generation."""
        generation = self.progress.generation
        if self._summary_cache is None or self._summary_cache[0] != generation:
            example = self._example()
            summary = groups = None
            try:
                summary = net2net.summarize(self.module, example)
                groups = net2net.width_groups(self.module, example)
            except Exception as exc:
                logger.warning("model summary failed: %s", exc)
            self._summary_cache = (generation, summary, groups)
        return self._summary_cache[1], self._summary_cache[2]

    # -- checkpoints ------------------------------------------------------------------------------

    def checkpoint(self, kind: CheckpointKind) -> CheckpointEvent | None:
        """Every rank: report a checkpoint to the runtime (a barrier); rank 0 writes it.

        Periodic checkpoints are written to a temporary folder, which the runtime copies before
        ``report`` returns. Growth and final checkpoints are written once, durably, under the
        checkpoint root (:meth:`_save_durable_files`), and the runtime copies them into its own
        storage in the background (Ray: ``CheckpointUploadMode.ASYNC``), which keeps that copy out
        of the growth pause. Nothing is written when nothing changed since the last checkpoint.
        """
        p = self.progress
        if p.checkpointed == (p.step, p.generation):
            return None
        self._finish_pending_growth()  # a growth's own checkpoint goes first
        started = time.perf_counter()
        self.group.sync_buffers(self.module)
        durable = kind in ("growth", "final")
        folder: Path | None = None
        path = None
        if self.group.is_main:
            if durable:
                path, folder = self._save_durable_files(kind)
            else:
                folder = self._write(kind)
        try:
            runtime_path = self.runtime.report(
                {"step": p.step, "generation": p.generation, "kind": kind},
                folder,
                generation=p.generation,
                step=p.step,
                background=durable,
                # A local durable folder is kept; a temporary copy (remote root) is the runtime's.
                delete_after=path is not None and is_remote(path),
            )
        finally:
            if folder is not None and not durable:
                shutil.rmtree(folder, ignore_errors=True)
        p.checkpointed = (p.step, p.generation)
        if not self.group.is_main:
            return None
        event = CheckpointEvent(
            kind=kind,
            step=p.step,
            generation=p.generation,
            param_count=count_parameters(self.module),
            manifest_version=self.reader.manifest.version,
            path=path or runtime_path,
            durable=durable,
            ray_path=runtime_path,
            seconds=time.perf_counter() - started,
        )
        self.source.on_checkpoint(event)
        return event

    def _save_durable_files(self, kind: CheckpointKind) -> tuple[str, Path]:
        """Rank 0: write the current state under the checkpoint root, durably and atomically.

        Returns the durable location and a local folder with the same files (the durable folder
        itself where the root is local; a temporary copy where it is a URI).
        """
        p = self.progress
        destination = checkpoint_path(self.cfg.durable_root(), p.generation, p.step)
        folder = save_durable(
            destination, model=self.module, optimizer=self.optimizer, meta=self._meta(kind)
        )
        if folder is not None:
            return destination, folder
        folder = self._write(kind)
        publish(folder, destination, replace=True)
        return destination, folder

    def _save_durable(self, kind: CheckpointKind) -> CheckpointEvent:
        """Rank 0 only: a durable copy of the current state, outside the runtime."""
        started = time.perf_counter()
        p = self.progress
        path, folder = self._save_durable_files(kind)
        if is_remote(path):
            shutil.rmtree(folder, ignore_errors=True)
        event = CheckpointEvent(
            kind=kind,
            step=p.step,
            generation=p.generation,
            param_count=count_parameters(self.module),
            manifest_version=self.reader.manifest.version,
            path=path,
            durable=True,
            seconds=time.perf_counter() - started,
        )
        self.source.on_checkpoint(event)
        return event

    def _write(self, kind: CheckpointKind) -> Path:
        """Rank 0: the current state in a new temporary folder."""
        return save_temporary(model=self.module, optimizer=self.optimizer, meta=self._meta(kind))

    def _meta(self, kind: CheckpointKind) -> CheckpointMeta:
        p = self.progress
        return CheckpointMeta(
            job_id=self.cfg.job_id,
            kind=kind,
            task=self.cfg.task,
            model=self.cfg.model,
            optimizer=self.cfg.optimizer,
            records=p.records,
            lineage=p.lineage,
            step=p.step,
            generation=p.generation,
            generation_step=p.generation_step,
            samples_seen=p.samples_seen,
            passes=p.passes,
            manifest_version=self.reader.manifest.version,
            dataset_size=self.reader.train_size,
            param_count=count_parameters(self.module),
            world_size=self.group.world_size,
            source_state=self.source.state_dict(),
            loop_state={
                "train_loss_ema": p.train_loss_ema,
                "compute": self.meter.state_dict(),
                "converged": self._converged.model_dump() if self._converged else None,
                "slices": self.slices.state_dict(),
            },
        )

    # -- status -----------------------------------------------------------------------------------

    def _status(self, state: LoopState, **detail: Any) -> LoopStatus:
        return LoopStatus(
            state=state,
            step=self.progress.step,
            generation=self.progress.generation,
            dataset_version=self.reader.manifest.version,
            dataset_size=self.reader.train_size,
            detail=detail,
        )

    def _set_state(self, state: LoopState, **detail: Any) -> None:
        if state == self.state and state != "starting":
            return
        self.state = state
        if self.group.is_main:
            if state == "converged" and self._converged is not None:
                detail = {**self._converged.model_dump(), **detail}
            if state != "starting":
                self._account()
                detail["compute"] = self.meter.snapshot()
            self.source.on_status(self._status(state, **detail))


FAULT_AFTER_TRANSFORM_ENV = "LIFELONG_FAULT_AFTER_TRANSFORM"


@dataclass
class _Written:
    """Rank 0: a growth's opening checkpoint, written by the background writer."""

    path: str  # its durable location
    folder: Path  # the files: staged (local root) or a temporary copy (remote root, published)
    staged: bool
    meta: CheckpointMeta
    seconds: float

    def commit(self) -> Path:
        """Put the staged folder in place (a rename); the folder to report to the runtime."""
        if self.staged:
            self.folder, self.staged = commit_durable(self.folder, self.path), False
        return self.folder

    def event(self, *, ray_path: str) -> CheckpointEvent:
        m = self.meta
        return CheckpointEvent(
            kind="growth", step=m.step, generation=m.generation, param_count=m.param_count,
            manifest_version=m.manifest_version, path=self.path, durable=True,
            ray_path=ray_path, seconds=self.seconds,
        )  # fmt: skip


def _write_opening(
    destination: str,
    weights: dict[str, torch.Tensor],
    optimizer: dict[str, Any],
    meta: CheckpointMeta,
) -> _Written:
    """The writer thread: stage the opening checkpoint (a local root), or write it and publish it
    (a remote root)."""
    started = time.perf_counter()
    staged = stage_durable(destination, model=weights, optimizer=optimizer, meta=meta)
    folder = staged
    if folder is None:
        folder = save_temporary(model=weights, optimizer=optimizer, meta=meta)
        publish(folder, destination, replace=True)
    _fault_point(meta.job_id, "writing")
    return _Written(destination, folder, staged is not None, meta, time.perf_counter() - started)


def _write_closing(
    destination: str,
    weights: dict[str, torch.Tensor],
    optimizer: dict[str, Any],
    meta: CheckpointMeta,
) -> CheckpointEvent:
    """The writer thread: generation N's durable 'close' copy, in place when written."""
    started = time.perf_counter()
    folder = save_durable(destination, model=weights, optimizer=optimizer, meta=meta)
    if folder is None:
        temporary = save_temporary(model=weights, optimizer=optimizer, meta=meta)
        publish(temporary, destination, replace=True)
        shutil.rmtree(temporary, ignore_errors=True)
    return CheckpointEvent(
        kind="close", step=meta.step, generation=meta.generation, param_count=meta.param_count,
        manifest_version=meta.manifest_version, path=destination, durable=True,
        seconds=time.perf_counter() - started,
    )  # fmt: skip


def _old_classes(growth: _Growth) -> int | None:
    """The head's size before an ``add_classes`` growth (None for any other op)."""
    if growth.op.op != "add_classes":
        return None
    return int(growth.directive.numbers["classes_before"])


def _fault_point(job_id: str, where: Literal["transform", "writing", "checkpoint"]) -> None:
    """Test-only crashes in a growth: right after the transform, while its opening checkpoint is
    written in the background (staged, not yet in place), or after its checkpoint.

    When ``$LIFELONG_FAULT_AFTER_TRANSFORM`` names a folder that holds a file named after the job,
    and the file says ``where`` (empty means ``transform``), the rank that removes the file ends
    its process at once, as a crash would (no cleanup, no checkpoint; after the checkpoint, once
    Ray's background upload of it had 5 s to finish). One file, one crash. Unset
    (always, outside the fault tests), it costs one lookup per growth. See
    tests/reliability/test_faults.py.
    """
    folder = os.environ.get(FAULT_AFTER_TRANSFORM_ENV)
    if not folder:
        return
    trigger = Path(folder, job_id)
    try:
        if (trigger.read_text().strip() or "transform") != where:
            return
        trigger.unlink()
    except FileNotFoundError:
        return
    if where == "checkpoint":
        time.sleep(5.0)  # Ray uploads the checkpoint in the background: crash once it is whole
    logger.error("fault injection: crashing after the growth's %s (job %s)", where, job_id)
    logging.shutdown()
    os._exit(70)


@dataclass
class _Snapshot:
    """Every rank: the weights and optimizer state of the best validation loss so far (since the
    data or the generation last changed), copied where they live."""

    step: int
    generation: int
    val_loss: float
    val_metric: float
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]

    @classmethod
    def of(cls, loop: TrainLoop, val: tuple[float, float]) -> _Snapshot:
        state = {k: v.detach().clone() for k, v in loop.module.state_dict().items()}
        p = loop.progress
        return cls(p.step, p.generation, val[0], val[1], state,
                   copy.deepcopy(loop.optimizer.state_dict()))  # fmt: skip

    def restore(self, loop: TrainLoop) -> None:
        loop.module.load_state_dict(self.model)
        loop.optimizer.load_state_dict(copy.deepcopy(self.optimizer))


class _ConvergedNote(BaseModel):
    """Why the loop waits for new data, and the weights it holds meanwhile (a 'converged' status's
    detail; kept in checkpoints, so a resume waits again while the data is unchanged)."""

    model_config = ConfigDict(extra="forbid")

    reason: str
    numbers: dict[str, float | int | str] = Field(default_factory=dict)
    budget: bool = Field(default=False, description="A per-version budget was spent.")
    held: Literal["best", "last"] | None = None
    held_step: int | None = None
    held_val_loss: float | None = None
    held_val_metric: float | None = None

    @classmethod
    def of(cls, converged: Converged) -> _ConvergedNote:
        return cls(reason=converged.reason, numbers=dict(converged.numbers))


class _StepMessage(BaseModel):
    """What rank 0 broadcasts at every observation step."""

    model_config = ConfigDict(extra="forbid")

    directive: Directive
    improved: tuple[float, float] | None = Field(
        default=None, description="The best validation (loss, metric) so far: keep these weights."
    )
    converged: _ConvergedNote | None = None
    total_spent: str | None = None


class _IdleMessage(BaseModel):
    """What rank 0 broadcasts every ``poll_interval`` while the loop is idle."""

    model_config = ConfigDict(extra="forbid")

    directive: Directive
    change: ManifestDelta | None = Field(
        default=None, description="What changed in the manifest (the appended shards)."
    )


def _resumed_detail(resumed: Resumed | None) -> dict[str, Any] | None:
    """What the 'starting' status says of the checkpoint resumed from."""
    if resumed is None:
        return None
    meta = resumed.checkpoint.meta
    return {
        "step": meta.step,
        "generation": meta.generation,
        "param_count": meta.param_count,
        "records": len(meta.records),
        "kind": meta.kind,
        "path": resumed.location,
    }
