"""The language-model benchmark: nanoGPT's character-level Shakespeare through the real worker
loop, against a bare PyTorch loop, and a stream of Shakespeare on which Lifelong grows a GPT.

Data and tokenizer (``bench/_lm.py``). ``tinyshakespeare.txt`` with nanoGPT's 65-character
vocabulary as the ``ids`` tokenizer (``vocab_size`` 65) for every method, split as nanoGPT does:
the first 90% in file order is the training text, the last 10% the validation text. Validation
is the mean loss in nats per predicted token.

1. Baseline (``baseline``). nanoGPT's published CPU recipe (``config/train_shakespeare_char.py``
   with ``--block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000
   --lr_decay_iters=2000 --dropout=0.0``: AdamW lr 1e-3, betas (0.9, 0.99), weight decay 0.1 on
   matrices, 100 warm-up iterations, cosine decay to 1e-4, gradient clipping at 1.0; LayerNorm
   without bias, GELU, learned positions, tied embeddings; reported validation loss about 1.88) run
   twice in the same process: as a Lifelong job through the worker loop (``workers.loop.run_loop``
   on a ``LocalRuntime``: the loop's own passes, windows, observations and schedule) and as a bare
   PyTorch loop of the ``gpt`` family's module with the same batch shape (``_lm.bare_loop``). The
   validation loss of both final models is measured on every window of the validation text
   (consecutive windows of 65 ids overlapping by one: 1,742 windows, 111,488 predicted tokens,
   against nanoGPT's 20 batches of 12 random windows). Tokens per second: the job's from its
   observations' clocks between its first observation and its last (its observations, on 256
   windows every 500 steps, included), the bare loop's over its steps after the tenth; the bare
   loop runs before the job (all its steps) and after it (300 steps), and the ratio is against
   the mean of the two.

2. Stream (``stream``). The training text arrives in 6 stages (its first 1/32, 1/16, 1/8, 1/4,
   1/2, then all of it), each a token shard appended to the job's manifest when the step count
   reaches the stage's boundary (``bench.stream.StageSource``), with equal steps per stage.
   Every method trains on uniform windows over all the text so far and on the recipe's default
   schedule. Methods: Lifelong's default (a small GPT grown by the growth controller with its
   default configuration: data scaling in parameters per token, widening the residual stream,
   the heads and the FFNs, deepening where widening cannot go on; shrink-and-perturb when the data
   doubles), that small model fixed, a large model fixed from the start (4 layers, 4 heads, 128
   wide: nanoGPT's CPU model; 6 layers, 6 heads, 192 wide costs 3.3 times its FLOPs per token
   and does not fit the time), the large model retrained from scratch at each stage, and (on
   request) Lifelong's default with the job's default replay instead of uniform windows (half of
   every batch from the newest tokens). Per method and seed: the validation
   loss at the end of each stage and its mean, the training FLOPs (``_lm.train_flops_per_token``
   at each window's architecture, attention counted), wall time, and each growth's validation
   loss just before and just after it (the loop measures both).

3. Schedules (``schedules``). Lifelong's default on the stream (the first seed) under each
   learning-rate schedule of the recipe that a stream can use: ``constant`` after the warm-up,
   ``wsd`` (warmup-stable-decay: a linear decay over the last fifth of every stage, the stage a
   step budget per data version) and ``rewarm`` (a warm-up again after each growth). ``cosine``
   needs the stream's end and is left out.

Run: ``python -m bench.lm_stream`` (everything; writes its section of docs/benchmarks.md, the plot
``docs/img/lm-stream.png`` and the per-run results under ``bench/results/lm_stream/<tag>``),
``--quick`` (a smoke run of about 20 s: tiny models, one seed; prints only), ``--parts``,
``--seeds``, ``--seed`` and ``--methods`` (run some of the stream into the same results),
``--steps`` (per stage), ``--report-only`` (rebuild the page from the stored results). The full
run takes about 25 minutes on 2 shared cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from bench import _lm
from bench._common import fmt_duration, mean_std, pm, pyplot, save_figure, set_threads
from bench._report import table, write_section
from bench.stream import StageSource
from growth_policy import GrowthPolicyConfig, growth_config_for_task
from workers.loop import WorkerConfig, run_loop
from workers.models import build_model
from workers.runtime import LocalRuntime
from workers.shards import FileManifest, ShardInfo, ShardStore
from workers.sources import ControllerSource, DecisionSource, JsonlRecorder, read_jsonl
from workers.spec import (
    BudgetSpec,
    ComputeSpec,
    ModelSpec,
    OptimizerSpec,
    ReplaySpec,
    ScheduleSpec,
    TaskSpec,
)

JOB = "lm"
RESULTS = Path(__file__).resolve().parent / "results" / "lm_stream"
FRACTIONS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)
NANOGPT_VAL = 1.88  # nanoGPT's README, the CPU recipe on shakespeare_char
SECTION = "lm-stream"


# ----------------------------------------------------------------------------- methods


@dataclass(frozen=True)
class Method:
    """One way to train through the stream: a starting shape, growth or not, retraining or not."""

    name: str
    label: str
    shape: tuple[int, int, int]  # (n_layer, n_head, d_model) at the start
    growth: dict[str, Any] | None = None  # GrowthPolicyConfig overrides (None: never grows)
    retrain: bool = False  # a fresh model trained from scratch at every stage
    # What each batch holds; by default uniform windows over every token so far, as nanoGPT draws
    # them (the job's default newest share is for freshness; the methods compare on one text).
    replay: ReplaySpec = field(default_factory=lambda: ReplaySpec(newest_share=0.0))

    def spec(self) -> ModelSpec:
        return _lm.gpt_spec(*self.shape)

    def config(self) -> GrowthPolicyConfig | None:
        if self.growth is None:
            return None
        # The job's default for a language model (the task's defaults under what the method sets),
        # as the service builds it from a job spec.
        return growth_config_for_task("language_modeling", self.growth)


SMALL = (2, 2, 64)
LARGE = (4, 4, 128)


def methods(
    small: tuple[int, int, int] = SMALL, large: tuple[int, int, int] = LARGE
) -> dict[str, Method]:
    def words(shape: tuple[int, int, int]) -> str:
        return f"{shape[0]} layers, {shape[1]} heads, {shape[2]} wide"

    out = [
        Method("default", f"Lifelong default (starts at {words(small)}, grows)", small, {}),
        Method("fixed-small", f"fixed small ({words(small)})", small),
        Method("fixed-large", f"fixed large ({words(large)})", large),
        Method("retrain-large", "large retrained from scratch at each stage", large, retrain=True),
        *_variants(small),
    ]
    return {m.name: m for m in out}


def _variants(small: tuple[int, int, int]) -> list[Method]:
    """The variants measured for the first target: the growth defaults before language models
    had their own, and the sweep that chose them."""
    return [
        Method(
            "default-sp",
            "the growth defaults before language models had their own (shrink-and-perturb on, "
            "widen only, cooldown 300 steps, 1 parameter per token)",
            small,
            BEFORE,
        ),
        Method(
            "default-no-sp",
            "the growth defaults before, without shrink-and-perturb",
            small,
            {**BEFORE, "shrink_perturb": {"enabled": False}},
        ),
        Method(
            "default-no-sp-deep",
            "the growth defaults before, without shrink-and-perturb, with the plateau policy, "
            "widening and deepening in turn",
            small,
            {
                **BEFORE,
                "shrink_perturb": {"enabled": False},
                "policies": ["data_scaling", "plateau"],
                "strategy": "alternate",
            },
        ),
        Method(
            "default-replay",
            "the growth defaults before, with the job's default replay (half of every batch from "
            f"the newest {ReplaySpec().newest_window:,} tokens)",
            small,
            BEFORE,
            replay=ReplaySpec(),
        ),
        *(
            Method(
                f"sweep-cpt{c:g}",
                "Sweep: no shrink-and-perturb, widen and deepen in turn, cooldown 100 steps, "
                f"data_scaling.coefficient_per_token = {c:g}",
                small,
                {
                    "shrink_perturb": {"enabled": False},
                    "strategy": "alternate",
                    "guards": {"cooldown_steps": 100},
                    "data_scaling": {"coefficient_per_token": c},
                },
            )
            for c in SWEEP_COEFFICIENTS
        ),
        Method(
            "sweep-exp",
            "Sweep: as the default, with data_scaling.coefficient_per_token = 63 and exponent = "
            "0.72 (early growth, less at the end)",
            small,
            {"data_scaling": {"coefficient_per_token": 63.0, "exponent": 0.72}},
        ),
    ]


# The growth defaults of every job before language models had their own (growth_policy's
# TASK_DEFAULTS), set out in full: the rows measured with them stay what they were.
BEFORE: dict[str, Any] = {
    "shrink_perturb": {"enabled": True},
    "strategy": "auto",
    "guards": {"cooldown_steps": 300},
    "data_scaling": {"coefficient_per_token": 1.0},
}

# data_scaling.coefficient_per_token values tried on this stream (one seed each).
SWEEP_COEFFICIENTS = (1.0, 2.0, 3.0, 4.0)


MAIN_METHODS = ("default", "fixed-small", "fixed-large", "retrain-large")


# ----------------------------------------------------------------------------- data


class Data:
    """The token shards of one benchmark process, written once: one per stage (the text that
    stage adds, one document), and the validation text; a manifest per run."""

    def __init__(
        self, root: Path, corpus: _lm.Corpus, fractions: Sequence[float] = FRACTIONS
    ) -> None:
        self.root = root
        self.corpus = corpus
        self.task = _lm.lm_task(corpus.vocab_size)
        self.store = ShardStore(str(root / "data"))
        n = corpus.train.size
        self.bounds = [0, *(round(n * f) for f in fractions)]
        self.stages: list[list[ShardInfo]] = []
        for a, b in zip(self.bounds, self.bounds[1:], strict=False):
            self.stages.append([self._write(corpus.train[a:b], "train")])
        self.val = self._write(corpus.val, "val")
        self._runs = 0

    def _write(self, tokens: np.ndarray, split: Literal["train", "val"]) -> ShardInfo:
        offsets = np.array([0, tokens.size], dtype=np.int64)
        return self.store.write_tokens(JOB, tokens.astype(np.int32), offsets, split)

    def manifest(self, first: Sequence[ShardInfo]) -> FileManifest:
        self._runs += 1
        manifest = FileManifest(self.root / f"manifest-{self._runs}", JOB, poll_interval=0.02)
        manifest.append([*first, self.val])
        return manifest


# ----------------------------------------------------------------------------- runs


def worker_config(
    data: Data,
    spec: ModelSpec,
    *,
    seed: int,
    source: DecisionSource,
    manifest: FileManifest,
    name: str,
    observe_every: int,
    val_windows: int,
    recipe: dict[str, Any],
    replay: ReplaySpec,
) -> WorkerConfig:
    """A job's worker config: the task, model and recipe (:func:`job_recipe`), observations every
    ``observe_every`` steps on ``val_windows`` validation windows, no periodic checkpoints, no
    idling when converged (the stages come by step count, the same for every method)."""
    return WorkerConfig(
        job_id=JOB,
        task=data.task,
        model=spec,
        store_root=str(data.store.root),
        manifest=manifest,
        source=source,
        batch_size=_lm.BATCH,
        observe_every=observe_every,
        checkpoint_every=0,
        checkpoint_root=str(data.root / "durable" / name),
        poll_interval=0.02,
        seed=seed,
        signals=False,
        val_max_samples=val_windows,
        replay=replay,
        **{"compute": ComputeSpec(idle_when_converged=False), **recipe},
    )


def _run(worker: WorkerConfig, run_dir: Path, *, keep: bool = False) -> None:
    """One job to its stop, in this process; its checkpoints are removed afterwards (``keep``:
    the last one the runtime holds is kept, for the caller to read and remove)."""
    try:
        run_loop(worker, LocalRuntime(run_dir, num_to_keep=1))
    finally:
        shutil.rmtree(worker.durable_root(), ignore_errors=True)
        if not keep:
            shutil.rmtree(run_dir, ignore_errors=True)


def _fpt_by_generation(
    task: TaskSpec, spec: ModelSpec, records: Sequence[dict[str, Any]]
) -> tuple[dict[int, float], dict[int, str]]:
    """Training FLOPs per token and the shape of every generation of a run, from its base spec
    and the growth records of its growth events (shrink-and-perturb changes no shape)."""
    model = build_model(spec, task)
    ctx = task.context_length
    fpt, shapes = {0: _lm.train_flops_per_token(model, ctx)}, {0: _lm.shape_name(model)}
    for g in sorted(records, key=lambda r: r["step"]):
        if g.get("record"):
            import net2net

            model = net2net.replay(model, [g["record"]])
        fpt[g["generation_after"]] = _lm.train_flops_per_token(model, ctx)
        shapes[g["generation_after"]] = _lm.shape_name(model)
    return fpt, shapes


@dataclass
class StreamRun:
    """One method and seed through the stream, read back from the loop's recorded events."""

    method: str
    seed: int
    steps_per_stage: int
    stage_loss: list[float]  # validation loss at the end of each stage
    train_flops: float
    final_shape: str
    growths: list[dict[str, Any]] = field(default_factory=list)
    curve: list[tuple[int, float, float]] = field(default_factory=list)  # (step, FLOPs, loss)
    wall_s: float = 0.0
    schedule: str = ""

    @property
    def final(self) -> float:
        return self.stage_loss[-1]

    @property
    def mean(self) -> float:
        return float(np.mean(self.stage_loss))


@dataclass(frozen=True)
class StreamSettings:
    """How long and how closely a stream run goes."""

    steps_per_stage: int
    observe_every: int
    val_windows: int
    recipe: _lm.Recipe = field(default_factory=_lm.Recipe)  # lr, warm-up, betas, decay, clip

    def __post_init__(self) -> None:
        if self.steps_per_stage % self.observe_every:
            raise ValueError("observe_every must divide the steps per stage (stage-end losses)")


def run_stream(
    data: Data, method: Method, seed: int, settings: StreamSettings, schedule: str = "default"
) -> StreamRun:
    """One method, one seed: one job through every stage (or a fresh one per stage)."""
    started = time.perf_counter()
    tag = f"{method.name}-{schedule}-s{seed}-{time.monotonic_ns()}"
    s = settings.steps_per_stage
    segments: list[list[dict[str, Any]]] = []
    plan = (
        [(k, [i for st in data.stages[: k + 1] for i in st], [[]]) for k in range(len(data.stages))]
        if method.retrain
        else [(0, data.stages[0], data.stages)]
    )
    for k, first, stages in plan:
        manifest = data.manifest(first)
        events = data.root / f"{tag}-{k}.jsonl"
        config = method.config()
        inner = ControllerSource(config, seed=seed) if config is not None else None
        source = JsonlRecorder(StageSource(inner, manifest, stages, s), events)
        worker = worker_config(
            data, method.spec(), seed=seed, source=source, manifest=manifest, name=f"{tag}-{k}",
            observe_every=settings.observe_every, val_windows=settings.val_windows,
            recipe=job_recipe(schedule, settings.recipe, stage_steps=s), replay=method.replay,
        )  # fmt: skip
        _run(worker, data.root / "runs" / f"{tag}-{k}")
        segments.append(read_jsonl(events))
    run = summarise(
        method,
        seed=seed,
        steps_per_stage=s,
        segments=segments,
        task=data.task,
        n_stages=len(data.stages),
    )
    run.wall_s = time.perf_counter() - started
    run.schedule = schedule
    return run


def summarise(
    method: Method,
    *,
    seed: int,
    steps_per_stage: int,
    segments: Sequence[Sequence[dict[str, Any]]],
    task: TaskSpec,
    n_stages: int,
) -> StreamRun:
    """Stage-end losses, FLOPs, growths and the loss-against-FLOPs curve of one run (of one run
    per stage, for retraining: their steps and FLOPs laid end to end)."""
    stage_loss: list[float] = []
    growths: list[dict[str, Any]] = []
    curve: list[tuple[int, float, float]] = []
    flops = 0.0
    shape = ""
    for k, records in enumerate(segments):
        grown = [r for r in records if r["type"] == "growth"]
        fpt, shapes = _fpt_by_generation(task, method.spec(), grown)
        obs = [r for r in records if r["type"] == "observation"]
        offset = k * steps_per_stage if method.retrain else 0
        seen = 0
        for o in obs:
            flops += fpt[o["generation"]] * (o["samples_seen"] - seen)
            seen = o["samples_seen"]
            if o.get("val_loss") is not None:
                curve.append((offset + o["step"], flops, float(o["val_loss"])))
        by_step = {o["step"]: o for o in obs}
        ends = [steps_per_stage * (1 if method.retrain else i + 1) for i in range(n_stages)]
        ends = ends[:1] if method.retrain else ends
        for end in ends:
            if end not in by_step:
                raise RuntimeError(f"{method.name} seed {seed}: no observation at step {end}")
            stage_loss.append(float(by_step[end]["val_loss"]))
        shape = shapes[obs[-1]["generation"]]
        growths += [
            _growth_row(g, offset, shapes, flops_at(curve, offset + g["step"])) for g in grown
        ]
    return StreamRun(method.name, seed, steps_per_stage, stage_loss, flops, shape, growths, curve)


def flops_at(curve: Sequence[tuple[int, float, float]], step: int) -> float:
    """The FLOPs spent by ``step`` (at the last observation at or before it)."""
    before = [f for s, f, _ in curve if s <= step]
    return before[-1] if before else 0.0


def _growth_row(
    g: dict[str, Any], offset: int, shapes: dict[int, str], flops: float
) -> dict[str, Any]:
    return {
        "step": offset + g["step"],
        "op": g["op"]["op"],
        "flops": flops,
        "shape_after": shapes.get(g["generation_after"], ""),
        "params_before": g["params_before"],
        "params_after": g["params_after"],
        "loss_before": g["val_loss_before"],
        "loss_after": g["val_loss_after"],
        "reason": g.get("reason", ""),
    }


# ----------------------------------------------------------------------------- baseline


@dataclass
class Baseline:
    """nanoGPT's CPU recipe as a Lifelong job and as a bare loop, in the same process."""

    steps: int
    job_val_loss: float  # the job's final model on every validation window
    job_observed_val_loss: float  # the loop's own last observation (on ``observe_windows``)
    observe_windows: int
    job_tokens_per_s: float
    job_train_tokens_per_s: float  # the loop's training windows only (median)
    job_wall_s: float
    bare_val_loss: float | None
    bare_tokens_per_s: list[float]  # before and after the job
    val_windows: int
    observe_every: int


def run_baseline(
    data: Data,
    *,
    steps: int,
    bare_steps: int,
    observe_every: int,
    observe_windows: int,
    recipe: _lm.Recipe,
    large: tuple[int, int, int] = LARGE,
) -> Baseline:
    """The bare loop (``steps`` with its validation loss), the job, then the bare loop again for
    ``bare_steps`` (its rate only, to see drift from other load on the machine). The job observes
    every ``observe_every`` steps on ``observe_windows`` validation windows (so that observing
    costs little); its final model is measured on every window afterwards, as the bare loop's."""
    recipe = dataclasses.replace(recipe, decay_iters=steps)
    windows = _lm.val_windows(data.corpus.val, data.task.context_length)
    spec = _lm.gpt_spec(*large)
    before = _lm.bare_loop(
        spec, data.task, data.corpus.train, steps=steps, recipe=recipe, val=windows
    )
    print(f"bare loop: {before.tokens_per_s:,.0f} tokens/s, val loss {before.val_loss:.4f}")
    manifest = data.manifest([i for st in data.stages for i in st])
    events = data.root / "baseline.jsonl"
    source = JsonlRecorder(StageSource(None, manifest, [[]], steps), events)
    worker = worker_config(
        data, spec, seed=0, source=source, manifest=manifest, name="baseline",
        observe_every=observe_every, val_windows=observe_windows,
        recipe=job_recipe("cosine", recipe), replay=ReplaySpec(newest_share=0.0),
    )  # fmt: skip
    run_dir = data.root / "runs" / "baseline"
    started = time.perf_counter()
    _run(worker, run_dir, keep=True)
    wall = time.perf_counter() - started
    model = _final_model(run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    after = _lm.bare_loop(spec, data.task, data.corpus.train, steps=bare_steps, recipe=recipe)
    obs = [r for r in read_jsonl(events) if r["type"] == "observation"]
    first, last = obs[0], obs[-1]
    rate = (last["samples_seen"] - first["samples_seen"]) / (last["wall_time"] - first["wall_time"])
    return Baseline(
        steps=steps,
        job_val_loss=_lm.val_loss(model, windows),
        job_observed_val_loss=float(last["val_loss"]),
        observe_windows=observe_windows,
        job_tokens_per_s=rate,
        job_train_tokens_per_s=float(np.median([o["throughput"] for o in obs[1:]])),
        job_wall_s=wall,
        bare_val_loss=before.val_loss,
        bare_tokens_per_s=[before.tokens_per_s, after.tokens_per_s],
        val_windows=int(windows.shape[0]),
        observe_every=observe_every,
    )


def _final_model(run_dir: Path) -> torch.nn.Module:
    """The model of the newest complete checkpoint the job reported (its final one)."""
    from pyarrow import fs as pafs

    from workers.checkpoint import load_checkpoint, newest_complete

    path = newest_complete(pafs.LocalFileSystem(), str(run_dir))
    if path is None:
        raise RuntimeError(f"the job left no checkpoint under {run_dir}")
    return load_checkpoint(path, with_optimizer=False).model


def job_recipe(schedule: str, recipe: _lm.Recipe, *, stage_steps: int = 0) -> dict[str, Any]:
    """The job's optimizer, training recipe and compute options (``WorkerConfig`` fields): AdamW
    with ``recipe``'s rate, betas and weight decay on matrices, its gradient clipping and warm-up,
    then the recipe's schedule ``schedule`` (``workers.spec.ScheduleSpec``): ``cosine`` to
    ``recipe.min_lr`` at ``recipe.decay_iters`` (nanoGPT's), ``constant``, ``rewarm`` (the
    recipe's re-warm-up after each growth), or ``wsd``, decaying to ``recipe.min_lr`` over the
    last fifth of each stage (a step budget of ``stage_steps`` per data version)."""
    compute = ComputeSpec(idle_when_converged=False)
    sched: dict[str, Any] = {"kind": schedule, "warmup_steps": recipe.warmup}
    if schedule == "cosine":
        sched |= {"min_lr": recipe.min_lr, "decay_steps": recipe.decay_iters}
    elif schedule == "wsd":
        sched |= {"min_lr": recipe.min_lr, "decay_steps": max(1, stage_steps // 5)}
        budget = BudgetSpec(steps=stage_steps)
        compute = ComputeSpec(idle_when_converged=False, budget_per_version=budget)
    optimizer = OptimizerSpec(
        name="adamw",
        lr=recipe.lr,
        betas=recipe.betas,
        weight_decay=recipe.weight_decay,
        decay="matrices",
        clip_grad_norm=recipe.grad_clip,
        schedule=ScheduleSpec.model_validate(sched),
    )
    return {"optimizer": optimizer, "compute": compute}


# ----------------------------------------------------------------------------- storage


def results_dir(tag: str, *, kept: bool) -> Path:
    """``bench/results/lm_stream/<tag>`` for runs whose tables the page shows (committed), the
    cache for quick ones."""
    from bench._common import cache_dir

    path = (RESULTS if kept else cache_dir() / "lm-stream-results") / tag
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_json(folder: Path, name: str, value: Any) -> None:
    (folder / f"{name}.json").write_text(json.dumps(value, indent=1))


def load_runs(folder: Path, prefix: str) -> list[StreamRun]:
    out = []
    for p in sorted(folder.glob(f"{prefix}-*.json")):
        d = json.loads(p.read_text())
        d["curve"] = [tuple(c) for c in d["curve"]]
        out.append(StreamRun(**d))
    return out


# ----------------------------------------------------------------------------- report


def verdict(ok: bool) -> str:
    return "**holds**" if ok else "**MISSED**"


def baseline_section(b: Baseline) -> str:
    """The baseline's table and its two targets."""
    bare = float(np.mean(b.bare_tokens_per_s))
    rows = [
        ["nanoGPT, published (README)", f"{NANOGPT_VAL:.2f}", "20 batches × 12 random windows", "", ""],
        ["bare PyTorch loop (before the job)", f"{b.bare_val_loss:.4f}", f"{b.val_windows:,} (all)",
         f"{b.bare_tokens_per_s[0]:,.0f}", ""],
        ["bare PyTorch loop (right after the job, rate only)", "", "", f"{b.bare_tokens_per_s[1]:,.0f}", ""],
        ["Lifelong job (worker loop), everything included", f"{b.job_val_loss:.4f}",
         f"{b.val_windows:,} (all)", f"{b.job_tokens_per_s:,.0f}", f"{b.job_tokens_per_s / bare:.3f}"],
        ["Lifelong job, training windows only", "", "", f"{b.job_train_tokens_per_s:,.0f}",
         f"{b.job_train_tokens_per_s / bare:.3f}"],
    ]  # fmt: skip
    gap = b.job_val_loss - NANOGPT_VAL
    ratio = b.job_tokens_per_s / bare
    return "\n".join(
        [
            f"nanoGPT's CPU recipe, {b.steps:,} iterations (4 layers, 4 heads, 128 wide, context "
            f"{_lm.CONTEXT}, batch {_lm.BATCH}, AdamW lr 1e-3 → 1e-4 cosine after 100 warm-up "
            "iterations, betas (0.9, 0.99), weight decay 0.1 on matrices, clipping 1.0, dropout 0, "
            "no biases, tied embeddings, learned positions, LayerNorm, GELU). Validation loss in "
            f"nats per token on every window of the validation text, measured on the final model "
            f"of each; the job observed every {b.observe_every} steps on {b.observe_windows} of "
            f"them spread evenly (its last observation: {b.job_observed_val_loss:.4f}). Ratio: "
            f"against the mean of the two bare runs. "
            f"Job wall time {fmt_duration(b.job_wall_s)}.",
            "",
            table(["run", "validation loss", "windows", "tokens/s", "ratio to bare"], rows),
            "",
            f"- Validation loss within 0.05 of 1.88: {b.job_val_loss:.4f} ({gap:+.4f}): "
            f"{verdict(abs(gap) <= 0.05)}.",
            f"- Job tokens per second at least 0.9 × the bare loop's: {ratio:.3f}: "
            f"{verdict(ratio >= 0.9)}.",
        ]
    )


GROW = frozenset({"widen", "deepen"})
SHRINK_PERTURB = frozenset({"shrink_perturb"})


def _max_rise(rs: Sequence[StreamRun], ops: frozenset[str] = GROW) -> float | None:
    """The largest rise of the validation loss across an event of ``ops``, in nats."""
    rises = [
        g["loss_after"] - g["loss_before"]
        for r in rs
        for g in r.growths
        if g["op"] in ops and g["loss_before"] is not None and g["loss_after"] is not None
    ]
    return max(rises) if rises else None


def _growth_count(r: StreamRun, ops: frozenset[str] = GROW) -> int:
    return sum(g["op"] in ops for g in r.growths)


def stream_heads(n_stages: int) -> list[str]:
    return ["method", "seeds", *(f"stage {k + 1}" for k in range(n_stages)), "mean of stages",
            "GFLOP", "vs fixed large", "wall time", "final shape", "growths",
            "max rise at growth (nats)", "shrink-perturbs", "max rise at shrink-perturb (nats)"]  # fmt: skip


def _stream_row(label: str, rs: Sequence[StreamRun], large_flops: float) -> list[Any]:
    rise, sp = _max_rise(rs), _max_rise(rs, SHRINK_PERTURB)
    flops = mean_std(r.train_flops for r in rs)[0]
    return [
        label,
        len(rs),
        *(pm([r.stage_loss[k] for r in rs], 3) for k in range(len(rs[0].stage_loss))),
        pm([r.mean for r in rs], 3),
        pm([r.train_flops / 1e9 for r in rs], _digits(flops / 1e9)),
        "–" if math.isnan(large_flops) else f"{100 * flops / large_flops:.0f}%",
        fmt_duration(float(np.mean([r.wall_s for r in rs]))),
        "/".join(sorted({r.final_shape for r in rs})),
        "/".join(str(c) for c in sorted({_growth_count(r) for r in rs})),
        "–" if rise is None else f"{rise:+.4f}",
        "/".join(str(c) for c in sorted({_growth_count(r, SHRINK_PERTURB) for r in rs})),
        "–" if sp is None else f"{sp:+.4f}",
    ]


def _digits(value: float) -> int:
    """Decimals that show about three significant digits of ``value``."""
    return max(0, 2 - math.floor(math.log10(value))) if value > 0 else 0


def acceptance(groups: dict[str, list[StreamRun]]) -> list[str]:
    """The stream's three targets on these results, each with its figures and a verdict."""
    d, large, retrain = (groups.get(n, []) for n in ("default", "fixed-large", "retrain-large"))
    if not d:
        return ["No run of the default: nothing to check."]
    d_final, d_std = mean_std(r.final for r in d)
    d_flops = mean_std(r.train_flops for r in d)[0]
    lines = []
    if large:
        l_final, l_std = mean_std(r.final for r in large)
        share = d_flops / mean_std(r.train_flops for r in large)[0]
        lines.append(
            f"Final validation loss at most the fixed large model's, at no more than 60% of its "
            f"FLOPs: {d_final:.3f} ± {d_std:.3f} against {l_final:.3f} ± {l_std:.3f}, "
            f"{100 * share:.0f}% of its FLOPs: {verdict(d_final <= l_final and share <= 0.6)}."
        )
    if retrain:
        r_final = mean_std(r.final for r in retrain)[0]
        r_mean = mean_std(r.mean for r in retrain)[0]
        d_mean = mean_std(r.mean for r in d)[0]
        lines.append(
            f"Better than retraining the large model at each stage (final and mean over the "
            f"stages): final {d_final:.3f} against {r_final:.3f}, mean {d_mean:.3f} against "
            f"{r_mean:.3f}: {verdict(d_final < r_final and d_mean < r_mean)}."
        )
    rise = _max_rise(d)
    n = sum(_growth_count(r) for r in d)
    lines.append(
        "The default did not grow: nothing to check."
        if rise is None
        else f"No growth raises the validation loss measured right after it by more than 0.001 "
        f"nats: largest rise over the default's {n} growths (widen or deepen, all seeds) "
        f"{rise:+.5f}: {verdict(rise <= 0.001)}."
    )
    return lines + _tried(groups)


def _tried(groups: dict[str, list[StreamRun]]) -> list[str]:
    """What else was run for the first target: the variants of the default, against it."""
    large = groups.get("fixed-large", [])
    if not large:
        return []
    l_final = mean_std(r.final for r in large)[0]
    l_flops = mean_std(r.train_flops for r in large)[0]
    out = []
    tried = [n for n in groups if n.startswith(("default-no-sp", "sweep-"))]
    for name in tried:
        rs = groups[name]
        if rs:
            final, std = mean_std(r.final for r in rs)
            share = mean_std(r.train_flops for r in rs)[0] / l_flops
            ok = final <= l_final and share <= 0.6
            spread = f"± {std:.3f}" if len(rs) > 1 else "(1 seed)"
            out.append(
                f"Tried for the first target, `{name}` (its row): final {final:.3f} {spread} "
                f"against {l_final:.3f}, {100 * share:.0f}% of the FLOPs: {verdict(ok)}."
            )
    return out


def _growth_table(rs: Sequence[StreamRun]) -> str:
    rows = [
        [r.seed, g["step"], g["op"], g["shape_after"], f"{g['params_before']:,} → {g['params_after']:,}",
         f"{g['loss_before']:.4f}", f"{g['loss_after']:.4f}", f"{g['loss_after'] - g['loss_before']:+.5f}"]
        for r in rs
        for g in r.growths
        if g["loss_before"] is not None and g["loss_after"] is not None
    ]  # fmt: skip
    heads = ["seed", "step", "op", "shape after", "parameters", "loss before", "loss after", "Δ"]
    return table(heads, rows) if rows else "(no growth)"


METHOD_ORDER = ("default", "default-sp", "default-no-sp", "default-no-sp-deep", "default-replay", "fixed-small",
                "fixed-large", "retrain-large")  # fmt: skip


def _by_method(runs: Sequence[StreamRun]) -> dict[str, list[StreamRun]]:
    """The runs of each method, in ``METHOD_ORDER`` and then by seed."""
    out: dict[str, list[StreamRun]] = {}
    rank = {name: i for i, name in enumerate(METHOD_ORDER)}
    for r in sorted(runs, key=lambda r: (rank.get(r.method, len(rank)), r.method, r.seed)):
        out.setdefault(r.method, []).append(r)
    return out


def stream_section(
    runs: Sequence[StreamRun], registry: dict[str, Method], meta: dict[str, Any], plot_name: str
) -> str:
    groups = _by_method(runs)
    large_flops = mean_std(r.train_flops for r in groups.get("fixed-large", []))[0]
    rows = [
        _stream_row(registry[n].label if n in registry else n, rs, large_flops)
        for n, rs in groups.items()
    ]
    s = meta["steps_per_stage"]
    return "\n".join(
        [
            f"The training text in 6 stages ({', '.join(_fraction(f) for f in FRACTIONS)} of it; "
            f"{', '.join(f'{t:,}' for t in meta['stage_tokens'])} tokens), {s:,} steps per stage "
            f"(batch {_lm.BATCH} × {_lm.CONTEXT} tokens), the same 65-character `ids` tokenizer "
            f"and learning-rate schedule ({meta['schedule']}) for every method. Cells: validation "
            f"loss (nats per token) at the end of each stage on {meta['val_windows']:,} validation "
            f"windows spread evenly over the validation text "
            f"({meta['val_windows'] * _lm.CONTEXT:,} tokens), mean ± standard "
            f"deviation over the seeds. GFLOP: training, at each observation window's "
            f"architecture, attention included (bench/_lm.py); the observations' validation is "
            f"left out. The large model is nanoGPT's CPU model, smaller than 6 layers, 6 heads, "
            f"192 wide, which costs {_large_ratio():.1f} times its training FLOPs per token and "
            "did not fit the time here. "
            f"Every method draws uniform windows over all the text so far (replay with no newest "
            f"share), but the row that says otherwise. Growths and shrink-and-perturbs: per run; "
            f"max rise: the largest increase of the validation loss from just before the event to "
            f"just after it, as the loop measured them (on the observations' windows).",
            "",
            table(stream_heads(len(runs[0].stage_loss)), rows),
            "",
            f"![validation loss against training FLOPs](img/{plot_name}.png)",
            "",
            "Targets:",
            "",
            *(f"- {line}" for line in acceptance(groups)),
            "",
            "Every growth and shrink-and-perturb of the default, with the validation loss the loop "
            "measured just before and just after it:",
            "",
            _growth_table(groups.get("default", [])),
        ]
    )


def _large_ratio() -> float:
    """Training FLOPs per token of 6 layers, 6 heads, 192 wide over those of ``LARGE``."""
    task = _lm.lm_task(65)
    big, large = (build_model(_lm.gpt_spec(*s), task) for s in ((6, 6, 192), LARGE))
    ctx = task.context_length
    return _lm.train_flops_per_token(big, ctx) / _lm.train_flops_per_token(large, ctx)


def _fraction(f: float) -> str:
    return "all" if f >= 1 else f"1/{round(1 / f)}"


def _order(schedule: str) -> int:
    return SCHEDULES.index(schedule) if schedule in SCHEDULES else len(SCHEDULES)


def schedule_section(runs: Sequence[StreamRun], current: str) -> str:
    by: dict[str, list[StreamRun]] = {}
    for r in sorted(runs, key=lambda r: (_order(r.schedule), r.seed)):
        by.setdefault(r.schedule, []).append(r)
    rows = [
        [name + (" (the recipe's default)" if name == current else ""), len(rs),
         pm([r.final for r in rs], 3), pm([r.mean for r in rs], 3),
         pm([r.train_flops / 1e9 for r in rs], _digits(rs[0].train_flops / 1e9)),
         "/".join(str(c) for c in sorted({_growth_count(r) for r in rs}))]
        for name, rs in by.items()
    ]  # fmt: skip
    best = min(by, key=lambda n: mean_std(r.mean for r in by[n])[0])
    return "\n".join(
        [
            "Lifelong's default on the same stream under each learning-rate schedule the recipe "
            "offers (seeds as shown). Lower is better.",
            "",
            table(
                ["schedule", "seeds", "final loss", "mean over stages", "GFLOP", "growths"], rows
            ),
            "",
            f"Best by the mean over the stages: **{best}**.",
        ]
    )


def plot(runs: Sequence[StreamRun], registry: dict[str, Method], name: str) -> Path:
    """Validation loss against training FLOPs, every seed, growths of the default marked."""
    plt: Any = pyplot()
    fig, ax = plt.subplots(figsize=(9, 5.5))
    colors = plt.get_cmap("tab10")
    # The table's main rows (the sweep's single runs stay in the table: ten colours at most).
    shown = {m: rs for m, rs in _by_method(runs).items() if m in METHOD_ORDER}
    for i, (method, rs) in enumerate(shown.items()):
        for j, r in enumerate(rs):
            xs = [max(f, 1.0) / 1e9 for _, f, _ in r.curve]
            ys = [loss for _, _, loss in r.curve]
            label = registry[method].label if (j == 0 and method in registry) else None
            ax.plot(xs, ys, color=colors(i), lw=1.2, alpha=0.85, label=label)
            for g in r.growths:
                if g["op"] in ("widen", "deepen") and g["loss_after"] is not None:
                    ax.plot(max(g["flops"], 1.0) / 1e9, g["loss_after"], marker="^",
                            color=colors(i), ms=6, ls="none")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("training GFLOP (log; ▲ growths)")
    ax.set_ylabel("validation loss (nats per token)")
    ax.set_title("Shakespeare stream: validation loss against compute (every seed)")
    ax.legend(fontsize=8)
    return save_figure(fig, name)


# ----------------------------------------------------------------------------- main


@dataclass(frozen=True)
class Sizes:
    """How big a run of the benchmark is (the full one, or the quick smoke run)."""

    baseline_steps: int
    bare_steps: int
    baseline_observe: int
    baseline_recipe: _lm.Recipe
    observe_windows: int
    stream: StreamSettings
    seeds: int
    schedule_seeds: int
    small: tuple[int, int, int]
    large: tuple[int, int, int]


FULL = Sizes(
    baseline_steps=2000,
    bare_steps=300,
    baseline_observe=500,
    baseline_recipe=_lm.Recipe(),
    observe_windows=256,
    stream=StreamSettings(steps_per_stage=150, observe_every=50, val_windows=128),
    seeds=3,
    schedule_seeds=1,
    small=SMALL,
    large=LARGE,
)
# The smoke run: tiny models, a few steps at a high learning rate, enough to beat the unigram loss.
_QUICK_RECIPE = _lm.Recipe(lr=1e-2, min_lr=1e-3, warmup=5)
QUICK = Sizes(
    baseline_steps=80,
    bare_steps=20,
    baseline_observe=20,
    baseline_recipe=_QUICK_RECIPE,
    observe_windows=8,
    stream=StreamSettings(60, 30, 8, _QUICK_RECIPE),
    seeds=1,
    schedule_seeds=1,
    small=(1, 2, 8),
    large=(1, 2, 16),
)
PARTS = ("baseline", "stream", "schedules")
DEFAULT_SCHEDULE: str = ScheduleSpec().kind  # the recipe's default
SCHEDULES = ("constant", "wsd", "rewarm")  # those a stream can use (cosine needs its end)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.lm_stream", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="the smoke run (prints only)")
    parser.add_argument("--parts", nargs="*", choices=PARTS, default=list(PARTS))
    parser.add_argument("--seeds", type=int, default=None, help="stream seeds (full: 3)")
    parser.add_argument(
        "--seed", type=int, action="append", default=None, help="run only this stream seed"
    )
    parser.add_argument("--methods", nargs="*", default=None, help="stream methods to run")
    parser.add_argument("--steps", type=int, default=None, help="steps per stage (full: 150)")
    parser.add_argument("--tag", default=None, help="results folder (default: full or quick)")
    parser.add_argument("--report-only", action="store_true", help="rebuild from stored results")
    parser.add_argument("--write", action="store_true", help="write the page even with --quick")
    return parser


def sizes_of(args: argparse.Namespace) -> Sizes:
    base = QUICK if args.quick else FULL
    stream = base.stream
    if args.steps:
        stream = dataclasses.replace(stream, steps_per_stage=args.steps)
    return Sizes(
        base.baseline_steps, base.bare_steps, base.baseline_observe, base.baseline_recipe,
        base.observe_windows, stream,
        args.seeds or base.seeds, base.schedule_seeds, base.small, base.large,
    )  # fmt: skip


def run_parts(args: argparse.Namespace, sizes: Sizes, folder: Path) -> None:
    """Run the parts asked for, storing each result in ``folder`` as it lands."""
    root = Path(tempfile.mkdtemp(prefix="lifelong-lm-"))
    try:
        data = Data(root, _lm.corpus())
        registry = methods(sizes.small, sizes.large)
        if "baseline" in args.parts:
            b = run_baseline(
                data, steps=sizes.baseline_steps, bare_steps=sizes.bare_steps,
                observe_every=sizes.baseline_observe, observe_windows=sizes.observe_windows,
                recipe=sizes.baseline_recipe,
                large=sizes.large,
            )  # fmt: skip
            save_json(folder, "baseline", asdict(b))
        save_json(folder, "meta", _meta(data, sizes))
        _log_command(folder)
        seeds = args.seed if args.seed is not None else list(range(sizes.seeds))
        names = args.methods or list(MAIN_METHODS)
        if "stream" in args.parts:
            for seed in seeds:
                for name in names:
                    run = run_stream(data, registry[name], seed, sizes.stream, DEFAULT_SCHEDULE)
                    _save_run(folder, "stream", run)
        if "schedules" in args.parts:  # the default schedule's runs are the stream's
            for seed in range(sizes.schedule_seeds):
                for schedule in (s for s in SCHEDULES if s != DEFAULT_SCHEDULE):
                    run = run_stream(data, registry["default"], seed, sizes.stream, schedule)
                    _save_run(folder, "schedule", run)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _log_command(folder: Path) -> None:
    """Add this run's command, revision and time to ``commands.json`` in the results folder."""
    from datetime import UTC, datetime

    from bench._report import command_line, git_revision

    path = folder / "commands.json"
    log = json.loads(path.read_text()) if path.exists() else []
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    log.append({"command": command_line(), "revision": git_revision(), "started": stamp})
    path.write_text(json.dumps(log, indent=1))


def _commands(folder: Path) -> str:
    path = folder / "commands.json"
    if not path.exists():
        return ""
    runs = json.loads(path.read_text())
    return (
        "Runs stored there: "
        + "; ".join(f"`{r['command']}` at {r['revision']}, {r['started']}" for r in runs)
        + "."
    )


def _save_run(folder: Path, prefix: str, run: StreamRun) -> None:
    save_json(folder, f"{prefix}-{run.method}-{run.schedule}-s{run.seed}", asdict(run))
    print(
        f"{prefix} {run.method:14s} {run.schedule:10s} seed {run.seed}: "
        + " ".join(f"{v:.3f}" for v in run.stage_loss)
        + f"  {run.train_flops / 1e9:8.1f} GFLOP  {run.final_shape}  growths "
        f"{_growth_count(run)}  {run.wall_s:.0f} s",
        flush=True,
    )


def _meta(data: Data, sizes: Sizes) -> dict[str, Any]:
    return {
        "steps_per_stage": sizes.stream.steps_per_stage,
        "observe_every": sizes.stream.observe_every,
        "val_windows": sizes.stream.val_windows,
        "stage_tokens": list(data.bounds[1:]),
        "schedule": DEFAULT_SCHEDULE,
        "schedule_seeds": sizes.schedule_seeds,
        "small": sizes.small,
        "large": sizes.large,
        "unigram_entropy": _lm.unigram_entropy(data.corpus.train, data.corpus.vocab_size),
    }


def report(folder: Path, *, write: bool, quick: bool) -> str:
    """The benchmark's section from the stored results (printed; written to the page if asked:
    the quick run to a section of its own)."""
    meta = json.loads((folder / "meta.json").read_text())
    registry = methods(tuple(meta["small"]), tuple(meta["large"]))
    parts = [
        f"Per-run results: `bench/results/{folder.parent.name}/{folder.name}` (committed; "
        "`--report-only` rebuilds this section from them, and a run with `--seed` or `--methods` "
        "adds its runs to them). Unigram entropy of the training text (the loss of the best "
        f"model that ignores context): {meta['unigram_entropy']:.3f} nats per token. "
        + _commands(folder)
    ]
    if (folder / "baseline.json").exists():
        b = Baseline(**json.loads((folder / "baseline.json").read_text()))
        parts += ["### nanoGPT's CPU recipe: the job against a bare loop", baseline_section(b)]
    s = meta["steps_per_stage"]
    runs = [r for r in load_runs(folder, "stream") if r.steps_per_stage == s]
    section = f"{SECTION}-quick" if quick else SECTION
    plot_name = section
    if runs:
        if write:
            plot(runs, registry, plot_name)
        parts += ["### The stream", stream_section(runs, registry, meta, plot_name)]
    schedules = [r for r in load_runs(folder, "schedule") if r.steps_per_stage == s]
    schedules += [
        r for r in runs if r.method == "default" and r.seed < meta.get("schedule_seeds", 1)
    ]
    if schedules:
        parts += [
            "### Learning-rate schedules on the stream",
            schedule_section(schedules, meta["schedule"]),
        ]
    body = "\n\n".join(parts)
    if write:
        title = "Language model: nanoGPT's recipe and the Shakespeare stream"
        write_section(section, title + (" (quick)" if quick else ""), body)
    else:
        print(body)
    return body


def main(argv: Sequence[str] | None = None) -> str:
    args = _parser().parse_args(argv)
    set_threads(1)
    sizes = sizes_of(args)
    tag = args.tag or ("quick" if args.quick else "full")
    folder = results_dir(tag, kept=not args.quick)
    if not args.report_only:
        run_parts(args, sizes, folder)
    return report(folder, write=args.write or not args.quick, quick=args.quick)


if __name__ == "__main__":
    main()
