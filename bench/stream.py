"""The lifelong stream: growing through the real worker loop and the growth controller, against
fixed and retrained models, on MNIST-1D.

Protocol. Training data arrives in 6 cumulative stages, 1k → 2k → 4k
→ 8k → 16k → 32k samples, with the same number of steps in every stage (1,500 in the full run);
Adam (lr 1e-3), batch 128, an MLP 40 → w → w → 10 (ReLU), a fixed validation set of 5,000 samples.

How a run goes. ``workers.loop.train_loop_per_worker`` runs on a local Ray cluster with one worker
(``workers.runner.run_trainer``). Its decision source is :class:`StageSource`: it forwards every
observation to the job's own source (``workers.sources.ControllerSource``, i.e. the
``growth_policy.Controller`` with the method's config; a source that never decides for the fixed
models) and, when the step count reaches a stage boundary, appends the next stage's shard to the
job's ``FileManifest`` and pauses the loop for one poll: the loop picks the new manifest up while
idle and starts a new pass with it at the very next step, so every stage starts at exactly
``stage × steps_per_stage``. At the end of the last stage it stops the loop. The growth
controller sees the new data at the next observation (every 50 steps) and grows from there.

``--engine local`` runs the same loop in this process without Ray: ``workers.loop.run_loop`` on a
``workers.runtime.LocalRuntime`` (one rank, no DDP, checkpoints in a local run folder) instead of
the ``RayRuntime`` of a Ray Train worker. Everything else (passes, steps, observations, growth,
optimizer transfer, checkpoints) is the loop's own code; with one thread it gives the same figures
as the Ray engine (checked by ``--engine both``). The sweeps behind the chosen defaults use it,
because a Ray Train run costs about 30 s to start.

What is measured, per method and seed: validation accuracy at the end of every stage (the
observation at the stage boundary), the training FLOPs (``6 × params × samples`` summed over the
observation windows, each at the parameter count the window trained; see ``bench/_common.py``),
final accuracy per TFLOP, the mean of the 6 stage-end accuracies (the area under the per-stage
accuracy curve, normalised), and every growth and shrink-and-perturb with the validation accuracy
just before and just after it (measured by the loop).

Methods (``FULL``): the default config, the default without shrink-and-perturb and with the
plateau policy, each other init mode under the default policy, a fixed small and a fixed large
model (with and without shrink-and-perturb), and the large model retrained from scratch at each
stage (one run per stage). ``--sweep``: one change at a time from the default (``sweep()``).

Run: ``python -m bench.stream`` (3 seeds, 1,500 steps per stage, through Ray: about 40 minutes
here), ``--sweep`` (in-process, 3 seeds: about 20 minutes), ``--quick`` (1 seed, 200 steps per
stage, every method in-process and the default once more through Ray, which must agree; writes
nothing unless ``--write``), ``--methods`` to choose, ``--custom NAME:JSON`` for any variant,
``--engine local|ray|both``, ``--resume`` to finish an interrupted run, ``--report-only`` to
rebuild the table from the stored per-run results: ``bench/results/stream/<tag>`` (committed with
the tables they produce) for the runs that write the page, ``$LIFELONG_BENCH_CACHE`` for quick ones.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import (
    fmt_duration,
    mean_std,
    mnist1d,
    pm,
    pyplot,
    save_figure,
    set_threads,
    train_flops,
)
from growth_policy import GrowthPolicyConfig
from growth_policy.types import GrowthOp, Observation
from workers.loop import OptimizerState, WorkerConfig, run_loop
from workers.runtime import LocalRuntime
from workers.shards import FileManifest, ShardInfo, ShardStore
from workers.sources import (
    BaseSource,
    ControllerSource,
    DecisionSource,
    Directive,
    GrowthEvent,
    JsonlRecorder,
    LoopStatus,
    read_jsonl,
)
from workers.spec import ComputeSpec, ModelSpec, OptimizerSpec, ReplaySpec, TaskSpec

STAGES = (1_000, 2_000, 4_000, 8_000, 16_000, 32_000)
TASK = TaskSpec(kind="classification", input_shape=(40,), num_classes=10)
BATCH = 128
OBSERVE_EVERY = 50
JOB = "stream"
LARGE = 256


# ----------------------------------------------------------------------------- methods


@dataclass(frozen=True)
class Method:
    """One way to train through the stream."""

    name: str
    label: str
    hidden: int  # starting width of both hidden layers
    growth: dict[str, Any] | None = None  # GrowthPolicyConfig overrides (None: never grows)
    retrain: bool = False  # a fresh model trained from scratch at every stage
    note: str = ""
    # How a growth carries the optimizer state (WorkerConfig.optimizer_state): "auto" follows the
    # init mode's own rule; "carry" and "reset" force it (an experiment of the sweep).
    optimizer_state: OptimizerState = "auto"

    def config(self) -> GrowthPolicyConfig | None:
        if self.growth is None:
            return None
        return GrowthPolicyConfig.model_validate(
            _merge(GrowthPolicyConfig().model_dump(), self.growth)
        )


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def default_start() -> int:
    """The starting width of the growing methods: w16, below the data-scaling target of the
    first stage, so that the controller's first growth shows (the recommended start, about
    the target to twice it, is in docs/learning.md; ``--sweep`` measures w64)."""
    return START


START = 16

INIT_MODES = ("random_zero", "copy_zero", "net2net", "random_pad")


def methods() -> dict[str, Method]:
    start = default_start()
    out = [
        Method("default", "Lifelong default (policy + init random_zero)", start, {}),
        *(
            Method(f"init-{m}", f"default policy, init {m}", start, {"widen": {"init": m}})
            for m in INIT_MODES
            if m != "random_zero"
        ),
        Method(
            "init-net2net-noise",
            "default policy, init net2net + noise 0.3",
            start,
            {"widen": {"init": "net2net", "noise": 0.3}},
        ),
        Method(
            "default-no-sp",
            "default without shrink-and-perturb",
            start,
            {"shrink_perturb": {"enabled": False}},
        ),
        Method(
            "default-plateau",
            "default + plateau policy",
            start,
            {"policies": ["data_scaling", "plateau"]},
        ),
        Method("fixed-small", f"fixed w{start} (no growth)", start),
        Method("fixed-large", f"fixed w{LARGE} from the start", LARGE),
        Method(
            "fixed-large-sp",
            f"fixed w{LARGE} + shrink-and-perturb on new data",
            LARGE,
            # data_scaling with a tiny coefficient never grows; shrink-and-perturb stays on
            {"data_scaling": {"coefficient": 1e-3}},
        ),
        Method(
            "retrain-large", f"retrain w{LARGE} from scratch at each stage", LARGE, retrain=True
        ),
    ]
    return {m.name: m for m in out}


FULL = ("default", "default-no-sp", "default-plateau",
        *(f"init-{m}" for m in INIT_MODES if m != "random_zero"), "init-net2net-noise",
        "fixed-small", "fixed-large", "fixed-large-sp", "retrain-large")  # fmt: skip
QUICK = ("default", "fixed-small", "fixed-large", "retrain-large")


def sweep() -> dict[str, Method]:
    """The variants behind the defaults (``--sweep``), each a change of one thing from the
    default: how much capacity per sample, shrink-and-perturb, where to start, the optimizer
    state, the plateau policy, the scaling exponent; and the fixed large model for reference."""
    s = default_start()
    ds = "data_scaling"

    def m(name: str, label: str, growth: dict[str, Any] | None, **kw: Any) -> Method:
        return Method(name, label, kw.pop("hidden", s), growth, **kw)

    out = [
        m("default", "default (c=3, shrink-and-perturb 0.8/0.01)", {}),
        *(
            m(f"c{c:g}", f"coefficient {c:g} parameters per sample", {ds: {"coefficient": c}})
            for c in (2.0, 2.5, 4.0, 5.0)
        ),
        m("exp0.75", "target 40.4 × n^0.75 (96k at 32k, like c=3)", {ds: {"coefficient": 40.4, "exponent": 0.75}}),
        m("no-sp", "no shrink-and-perturb", {"shrink_perturb": {"enabled": False}}),
        m("no-sp-c4", "no shrink-and-perturb, coefficient 4", {"shrink_perturb": {"enabled": False}, ds: {"coefficient": 4.0}}),
        *(
            m(f"sp{lam:g}", f"shrink {lam:g}, perturb 0.01", {"shrink_perturb": {"shrink": lam}})
            for lam in (0.9, 0.7, 0.6)
        ),
        m("shrink-only", "shrink 0.8, perturb 0", {"shrink_perturb": {"perturb": 0.0}}),
        m("perturb-only", "shrink 1, perturb 0.01", {"shrink_perturb": {"shrink": 1.0}}),
        m("start-w64", "start at w64 instead of w16", {}, hidden=64),
        m("opt-reset", "optimizer state reset at growth", {}, optimizer_state="reset"),
        m("plateau", "+ plateau policy", {"policies": [ds, "plateau"]}),
        m("plateau-c2.5", "+ plateau policy, coefficient 2.5", {"policies": [ds, "plateau"], ds: {"coefficient": 2.5}}),
        m("copy_zero", "init copy_zero", {"widen": {"init": "copy_zero"}}),
        m("fixed-large", f"fixed w{LARGE} (reference)", None, hidden=LARGE),
        m("fixed-large-sp", f"fixed w{LARGE} + shrink-and-perturb", {ds: {"coefficient": 1e-3}}, hidden=LARGE),
    ]  # fmt: skip
    return {x.name: x for x in out}


def parse_custom(text: str) -> Method:
    """``NAME:{"hidden": 32, "growth": {...}, "retrain": false, "label": "..."}``."""
    name, _, spec = text.partition(":")
    d = json.loads(spec) if spec else {}
    return Method(
        name=name,
        label=d.get("label", name),
        hidden=int(d.get("hidden", default_start())),
        growth=d.get("growth"),
        retrain=bool(d.get("retrain", False)),
        note=d.get("note", ""),
        optimizer_state=d.get("optimizer_state", "auto"),
    )


# ----------------------------------------------------------------------------- the source


class StageSource(BaseSource):
    """The job's own source, plus the data stream: a stage's shard at its boundary; stop at the end.

    ``stages[k]`` are the shards appended when the step count reaches ``k × steps_per_stage``
    (stage 0's are in the manifest before the run starts). At a boundary the directive also asks
    for a pause: the loop re-reads the manifest while idle, sees the new data and starts a new pass
    with it, so the stage starts at exactly the boundary step. ``poll`` resumes at once.
    """

    def __init__(
        self,
        inner: DecisionSource | None,
        manifest: FileManifest,
        stages: Sequence[Sequence[ShardInfo]],
        steps_per_stage: int,
    ) -> None:
        self.inner = inner if inner is not None else BaseSource()
        self.manifest = manifest
        self.stages = [list(s) for s in stages]
        self.steps_per_stage = steps_per_stage
        self.appended = 1

    def decide(self, observation: Observation) -> Directive:
        directive = self.inner.decide(observation)
        boundary = self.appended * self.steps_per_stage
        if observation.step < boundary:
            return directive
        if self.appended >= len(self.stages):
            return Directive(stop=True, reason=f"the stream ended at step {observation.step}")
        self.manifest.append(self.stages[self.appended])
        self.appended += 1
        return directive.model_copy(update={"pause": True})

    def poll(self, status: LoopStatus) -> Directive:
        return Directive()

    def on_growth(self, event: GrowthEvent) -> None:
        self.inner.on_growth(event)

    def on_growth_failed(self, op: GrowthOp, step: int, error: str) -> None:
        self.inner.on_growth_failed(op, step, error)

    def state_dict(self) -> dict[str, Any]:
        return {"inner": self.inner.state_dict(), "appended": self.appended}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state.get("inner", {}))
        self.appended = int(state.get("appended", 1))


# ----------------------------------------------------------------------------- runs


@dataclass
class RunResult:
    method: str
    seed: int
    engine: str
    steps_per_stage: int
    stage_acc: list[float]  # validation accuracy at the end of each stage
    train_flops: float
    val_flops: float
    final_params: int
    growths: list[dict[str, Any]] = field(default_factory=list)
    curve: list[tuple[int, float, int]] = field(default_factory=list)  # (step, acc, params)
    wall_s: float = 0.0

    @property
    def final(self) -> float:
        return self.stage_acc[-1]

    @property
    def area(self) -> float:
        return float(np.mean(self.stage_acc))


class Stream:
    """The data of one benchmark process: shards written once, a manifest per run."""

    def __init__(self, root: Path, stages: Sequence[int] = STAGES) -> None:
        self.root = root
        self.stages = tuple(stages)
        x, y, xv, yv = mnist1d()  # always the same generation: a shorter stream is its prefix
        self.store = ShardStore(str(root / "data"))
        bounds = [0, *self.stages]
        self.shards = [
            [self.store.write(JOB, x[a:b], y[a:b], "train")] for a, b in itertools.pairwise(bounds)
        ]
        self.val = self.store.write(JOB, xv, yv, "val")
        self.val_size = int(xv.shape[0])
        self._runs = 0

    def new_manifest(self, first: Sequence[ShardInfo]) -> FileManifest:
        self._runs += 1
        manifest = FileManifest(self.root / f"manifest-{self._runs}", JOB, poll_interval=0.02)
        manifest.append([*first, self.val])
        return manifest


def _worker_config(
    stream: Stream,
    method: Method,
    seed: int,
    source: DecisionSource,
    manifest: FileManifest,
    *,
    name: str,
) -> WorkerConfig:
    return WorkerConfig(
        job_id=JOB,
        task=TASK,
        model=ModelSpec(family="mlp", hidden=[method.hidden, method.hidden]),
        optimizer=OptimizerSpec(name="adam", lr=1e-3),
        store_root=str(stream.store.root),
        manifest=manifest,
        source=source,
        batch_size=BATCH,
        observe_every=OBSERVE_EVERY,
        checkpoint_every=0,
        checkpoint_root=str(stream.root / "durable" / name),
        optimizer_state=method.optimizer_state,
        poll_interval=0.02,
        seed=seed,
        signals=False,  # the default policies do not read the saturation signals
        # Stages come by step count (equal steps for every method): the loop never waits when
        # converged here; bench/idle.py measures waiting, with the data on a clock.
        compute=ComputeSpec(idle_when_converged=False),
        # Uniform replay in whole passes over the history, as this stream (and bench/idle.py) were
        # measured: the job's default newest share is measured by bench/freshness.py.
        replay=ReplaySpec(newest_share=0.0, max_steps_per_pass=1_000_000),
    )


def _run_loop(engine: str, worker: WorkerConfig, name: str, storage: Path) -> None:
    """One run to its stop, in this process or through Ray. Its checkpoints are removed afterwards:
    the recorded events are its result."""
    try:
        if engine == "local":
            run_loop(worker, LocalRuntime(storage / name))
        else:
            _run_ray(worker, name, storage)
    finally:
        shutil.rmtree(storage / name, ignore_errors=True)
        shutil.rmtree(worker.durable_root(), ignore_errors=True)


def _run_ray(worker: WorkerConfig, name: str, storage: Path) -> None:
    from workers.runner import TrainerSettings, run_trainer

    result = run_trainer(
        TrainerSettings(
            worker=worker,
            num_workers=1,
            resources_per_worker={"CPU": 1},
            storage_path=str(storage),
            run_name=name,
            max_failures=0,
        )
    )
    if result.error is not None:
        raise RuntimeError(f"run {name} failed: {result.error}")


def run_one(
    stream: Stream, method: Method, seed: int, steps_per_stage: int, engine: str
) -> RunResult:
    """One method, one seed, through the loop; the result is read back from the loop's events."""
    started = time.perf_counter()
    tag = f"{method.name}-s{seed}-{engine}-{time.monotonic_ns()}"
    n = len(stream.stages)
    segments: list[list[dict[str, Any]]] = []
    if method.retrain:
        for k in range(n):
            manifest = stream.new_manifest([s for stage in stream.shards[: k + 1] for s in stage])
            events = stream.root / f"{tag}-stage{k}.jsonl"
            source = JsonlRecorder(StageSource(None, manifest, [[]], steps_per_stage), events)
            name = f"{tag}-stage{k}"
            worker = _worker_config(stream, method, seed, source, manifest, name=name)
            _run_loop(engine, worker, name, stream.root / "runs")
            segments.append(read_jsonl(events))
    else:
        config = method.config()
        inner = ControllerSource(config, seed=seed) if config is not None else None
        manifest = stream.new_manifest(stream.shards[0])
        events = stream.root / f"{tag}.jsonl"
        source = JsonlRecorder(StageSource(inner, manifest, stream.shards, steps_per_stage), events)
        worker = _worker_config(stream, method, seed, source, manifest, name=tag)
        _run_loop(engine, worker, tag, stream.root / "runs")
        segments.append(read_jsonl(events))
    result = summarise(
        method,
        seed,
        engine=engine,
        steps_per_stage=steps_per_stage,
        segments=segments,
        val_size=stream.val_size,
        n_stages=len(stream.stages),
    )
    result.wall_s = time.perf_counter() - started
    return result


def summarise(
    method: Method,
    seed: int,
    *,
    engine: str,
    steps_per_stage: int,
    segments: Sequence[Sequence[dict[str, Any]]],
    val_size: int,
    n_stages: int = len(STAGES),
) -> RunResult:
    """Stage-end accuracies, FLOPs and growths from the recorded events of one run (or of one run
    per stage, for retraining)."""
    stage_acc: list[float] = []
    flops = val_flops = 0.0
    curve: list[tuple[int, float, int]] = []
    growths: list[dict[str, Any]] = []
    final_params = 0
    n = n_stages
    for k, records in enumerate(segments):
        obs = [r for r in records if r["type"] == "observation"]
        offset = k * steps_per_stage if method.retrain else 0
        seen = 0
        for o in obs:
            flops += train_flops(o["param_count"], o["samples_seen"] - seen)
            seen = o["samples_seen"]
            if o.get("val_metric") is not None:
                val_flops += 2.0 * o["param_count"] * val_size
                curve.append((offset + o["step"], float(o["val_metric"]), int(o["param_count"])))
        by_step = {o["step"]: o for o in obs}
        ends = (
            [steps_per_stage] if method.retrain else [steps_per_stage * (i + 1) for i in range(n)]
        )
        for end in ends:
            if end not in by_step:
                raise RuntimeError(f"{method.name} seed {seed}: no observation at step {end}")
            stage_acc.append(float(by_step[end]["val_metric"]))
        final_params = int(obs[-1]["param_count"])
        for g in (r for r in records if r["type"] == "growth"):
            growths.append(
                {
                    "step": offset + g["step"],
                    "op": g["op"]["op"],
                    "init": g["op"].get("init"),
                    "params_before": g["params_before"],
                    "params_after": g["params_after"],
                    "acc_before": g["val_metric_before"],
                    "acc_after": g["val_metric_after"],
                    "reason": g["reason"],
                }
            )
    return RunResult(
        method=method.name,
        seed=seed,
        engine=engine,
        steps_per_stage=steps_per_stage,
        stage_acc=stage_acc,
        train_flops=flops,
        val_flops=val_flops,
        final_params=final_params,
        growths=growths,
        curve=curve,
    )


# ----------------------------------------------------------------------------- storage


RESULTS = Path(__file__).resolve().parent / "results" / "stream"


def results_dir(tag: str, *, kept: bool) -> Path:
    """Where a run's per-run results go: ``bench/results/stream/<tag>`` for the runs whose tables
    the benchmarks page shows (committed, so that ``--report-only`` rebuilds them from a clean
    clone), the cache for quick and ad-hoc runs."""
    from bench._common import cache_dir

    path = (RESULTS if kept else cache_dir() / "stream-results") / tag
    path.mkdir(parents=True, exist_ok=True)
    return path


def save(result: RunResult, folder: Path) -> None:
    path = folder / f"{result.method}-s{result.seed}-{result.engine}.json"
    path.write_text(json.dumps(asdict(result)))


def load_all(folder: Path) -> list[RunResult]:
    out = []
    for p in sorted(folder.glob("*.json")):
        if p.name == "meta.json":
            continue
        d = json.loads(p.read_text())
        d["curve"] = [tuple(c) for c in d["curve"]]
        out.append(RunResult(**d))
    return out


# ----------------------------------------------------------------------------- report


def _by_method(results: Sequence[RunResult], engine: str) -> dict[str, list[RunResult]]:
    out: dict[str, list[RunResult]] = {}
    for r in results:
        if r.engine == engine:
            out.setdefault(r.method, []).append(r)
    for rs in out.values():
        rs.sort(key=lambda r: r.seed)
    return out


GROW = frozenset({"widen", "deepen"})
SP = frozenset({"shrink_perturb"})


def _max_drop(rs: Sequence[RunResult], ops: frozenset[str] = GROW) -> float | None:
    """The largest fall in validation accuracy (points) across the events of ``ops``."""
    drops = [
        100 * (g["acc_before"] - g["acc_after"])
        for r in rs
        for g in r.growths
        if g["op"] in ops and g["acc_before"] is not None and g["acc_after"] is not None
    ]
    return max(drops) if drops else None


def _worst_recovery(rs: Sequence[RunResult], ops: frozenset[str] = SP) -> float | None:
    """The lowest (accuracy one observation after the event − accuracy just before it), in
    points, across the events of ``ops``: ≥ 0 means every one was made up within 50 steps."""
    out = []
    for r in rs:
        curve = {step: acc for step, acc, _ in r.curve}
        for g in r.growths:
            later = curve.get(g["step"] + OBSERVE_EVERY)
            if g["op"] in ops and later is not None and g["acc_before"] is not None:
                out.append(100 * (later - g["acc_before"]))
    return min(out) if out else None


def _count(r: RunResult, ops: frozenset[str] = GROW) -> int:
    return sum(g["op"] in ops for g in r.growths)


def acceptance(groups: dict[str, list[RunResult]], default: str = "default") -> list[str]:
    """The three acceptance targets of the stream on these results, each with its figures and a
    verdict: beat retraining, match the fixed large model at less compute, no harmful growth."""
    lines: list[str] = []
    d, retrain, large = groups.get(default), groups.get("retrain-large"), groups.get("fixed-large")
    if not d:
        return ["No run of the default method: acceptance not evaluated."]
    d_final, _ = mean_std(r.final for r in d)
    d_flops, _ = mean_std(r.train_flops for r in d)
    if retrain:
        r_final, _ = mean_std(r.final for r in retrain)
        r_flops, _ = mean_std(r.train_flops for r in retrain)
        ok = d_final > r_final and d_flops <= r_flops
        lines.append(
            f"1. Default beats retraining from scratch at each stage in final accuracy at no more "
            f"compute: {100 * d_final:.1f}% vs {100 * r_final:.1f}%, "
            f"{d_flops / 1e9:.0f} vs {r_flops / 1e9:.0f} GFLOP: **{'holds' if ok else 'MISSED'}**."
        )
    if large:
        l_final, l_std = mean_std(r.final for r in large)
        _, d_std = mean_std(r.final for r in d)
        l_flops, _ = mean_std(r.train_flops for r in large)
        spread = max(l_std, d_std)
        within = d_final >= l_final - spread
        share = d_flops / l_flops
        ok = within and share <= 0.6
        lines.append(
            f"2. Default's final accuracy within the seed spread of the fixed large model, or "
            f"better, at ≤ 60% of its FLOPs: {100 * d_final:.1f}% vs {100 * l_final:.1f}% "
            f"(spread: the larger of the two standard deviations, {100 * spread:.1f} points; "
            f"difference {100 * (d_final - l_final):+.1f}), FLOPs {100 * share:.0f}% of the "
            f"large model's: **{'holds' if ok else 'MISSED'}**."
        )
    drop = _max_drop(d)
    n = sum(_count(r) for r in d)
    if drop is not None:
        lines.append(
            f"3. No growth lowers validation accuracy measured right after it by more than 0.5 "
            f"points: largest drop over the default's {n} growths {drop:+.2f} points: "
            f"**{'holds' if drop <= 0.5 else 'MISSED'}**."
        )
    else:
        lines.append("3. The default did not grow in these runs: nothing to check.")
    return lines


HEADS = ["method", "seeds", *(f"{s // 1000}k" for s in STAGES), "mean of 6 (area)", "GFLOP",
         "vs fixed large", "final % per TFLOP", "final width", "growths",
         "max drop at growth (pts)", "shrink-perturbs", "max drop at shrink-perturb (pts)",
         "worst change 50 steps after a shrink-perturb (pts)"]  # fmt: skip


def _row(label: str, rs: Sequence[RunResult], large_flops: float) -> list[Any]:
    """One method's row of the table (``HEADS``), over its seeds."""
    drop, sp_drop, recovery = _max_drop(rs), _max_drop(rs, SP), _worst_recovery(rs)
    share = (
        f"{100 * mean_std(r.train_flops for r in rs)[0] / large_flops:.0f}%"
        if not math.isnan(large_flops)
        else "–"
    )
    return [
        label,
        len(rs),
        *(pm([r.stage_acc[k] for r in rs], 1, 100) for k in range(len(STAGES))),
        pm([r.area for r in rs], 1, 100),
        pm([r.train_flops / 1e9 for r in rs], 0),
        share,
        pm([100 * r.final / (r.train_flops / 1e12) for r in rs], 0),
        "/".join(f"w{w}" for w in sorted({_width(r.final_params) for r in rs})),
        "/".join(str(c) for c in sorted({_count(r) for r in rs})),
        "–" if drop is None else f"{drop:+.2f}",
        "/".join(str(c) for c in sorted({_count(r, SP) for r in rs})),
        "–" if sp_drop is None else f"{sp_drop:+.2f}",
        "–" if recovery is None else f"{recovery:+.2f}",
    ]


def _description(steps_per_stage: int, engine: str) -> str:
    return (
        f"MNIST-1D (generated offline), 6 cumulative stages, {steps_per_stage:,} steps per stage, "
        f"Adam lr 1e-3, batch {BATCH}, MLP 40 → w → w → 10, validation on a fixed set of 5,000 "
        f"samples. Engine: {_engine_words(engine)}. Compared at equal steps (the same data "
        "schedule for every method), with the FLOPs each spent beside. Cells: validation accuracy "
        "(%) at the end of each stage, mean ± standard deviation over the seeds. GFLOP: training "
        "only, 6 × params × samples summed over the observation windows at each window's "
        "parameter count; the observations' validation passes (2 × params × 5,000 every "
        f"{OBSERVE_EVERY} steps) are the same for every method and left out. Growths "
        "(widen/deepen) and shrink-perturbs: per run. Max drop: the largest fall in validation "
        "accuracy from just before to just after the event, measured by the loop (positive = a "
        "fall). Worst change 50 steps after: the lowest (accuracy at the next observation − "
        "accuracy just before the shrink-perturb) over all of them (negative = not yet made up)."
    )


def report(
    results: Sequence[RunResult],
    order: Sequence[str],
    all_methods: dict[str, Method],
    *,
    engine: str,
    section: str,
    title: str,
    plot_name: str,
    extra: str = "",
    write: bool = True,
    curves: bool = True,
) -> str:
    from bench._report import table, write_section

    groups = _by_method(results, engine)
    names = [m for m in order if m in groups] + [m for m in groups if m not in order]
    if not names:
        raise SystemExit(f"no {engine} results to report")
    large_flops = mean_std(r.train_flops for r in groups.get("fixed-large", []))[0]
    rows = []
    for name in names:
        m = all_methods.get(name)
        rows.append(_row(m.label if m is not None else name, groups[name], large_flops))
    body = [
        _description(groups[names[0]][0].steps_per_stage, engine),
        "",
        table(HEADS, rows),
        "",
        f"![stream](img/{plot_name}.png)",
        "",
        "Acceptance:",
        "",
        *(f"- {line}" for line in acceptance(groups)),
    ]
    if extra:
        body += ["", extra]
    text = "\n".join(body)
    if not write:
        print(text)
        return text
    plot(groups, names, all_methods, plot_name, curves=curves)
    write_section(section, title, text)
    return text


def _width(params: int) -> int:
    # params = 40w + w + w² + w + 10w + 10 = w² + 52w + 10
    return round((-52 + math.sqrt(52 * 52 - 4 * (10 - params))) / 2)


def _engine_words(engine: str) -> str:
    if engine == "ray":
        return "the real worker loop on a local Ray cluster, one worker, with the growth controller"
    return (
        "the worker loop's own class (`workers.loop.TrainLoop`) in-process on "
        "`workers.runtime.LocalRuntime`, one thread, no Ray"
    )


CURVES = ("default", "default-no-sp", "fixed-small", "fixed-large", "retrain-large")


def plot(
    groups: dict[str, list[RunResult]],
    names: Sequence[str],
    all_methods: dict[str, Method],
    name: str,
    *,
    curves: bool = True,
) -> None:
    """Left: accuracy over steps for the main methods (``CURVES``), growth events of the first
    seed marked; right: final accuracy against training FLOPs for every method."""
    plt: Any = pyplot()
    if curves:
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(14, 5.2), gridspec_kw={"width_ratios": [3, 2]})
    else:
        fig, ax2 = plt.subplots(figsize=(9, 6))
        ax = None
    cmap = plt.get_cmap("tab20")
    markers = "osD^vP*Xhp<>"
    for i, m in enumerate(names):
        rs = groups[m]
        c = cmap(i % 20)
        label = all_methods[m].label if m in all_methods else m
        if ax is not None and m in CURVES:
            steps = sorted({s for s, _, _ in rs[0].curve})
            accs = []
            for s in steps:
                v = [a for r in rs for st, a, _ in r.curve if st == s]
                accs.append(100 * float(np.mean(v)) if v else math.nan)
            ax.plot(steps, accs, color=c, lw=1.4, label=label)
            for g in rs[0].growths:
                marker = "^" if g["op"] in GROW else "v"
                acc = 100 * (g["acc_after"] or 0)
                ax.plot(g["step"], acc, marker=marker, color=c, ms=6, ls="none")
        f_m, f_s = mean_std(r.final for r in rs)
        g_m, g_s = mean_std(r.train_flops / 1e9 for r in rs)
        ax2.errorbar(g_m, 100 * f_m, xerr=g_s, yerr=100 * f_s, fmt=markers[i % len(markers)],
                     color=c, capsize=3, ms=6, label=label)  # fmt: skip
    if ax is not None:
        spst = groups[names[0]][0].steps_per_stage
        for k in range(1, len(STAGES)):
            ax.axvline(k * spst, color="0.85", lw=0.8, zorder=0)
        ax.set_xlabel("step (grey lines: new data; first seed's ▲ growths, ▼ shrink-and-perturbs)")
        ax.set_ylabel("validation accuracy (%)")
        ax.set_title("MNIST-1D stream, mean over seeds")
        ax.legend(fontsize=7.5, loc="lower right")
    ax2.set_xscale("log")
    ax2.set_xlabel("training GFLOP (log)")
    ax2.set_ylabel("final validation accuracy (%)")
    ax2.set_title("final accuracy against compute (mean ± std)")
    if curves:
        ax2.legend(fontsize=6.5, loc="upper left")
    else:  # many methods: beside the plot
        ax2.legend(fontsize=7.5, loc="center left", bbox_to_anchor=(1.02, 0.5))
    save_figure(fig, name)


# ----------------------------------------------------------------------------- main


def _ray_init() -> None:
    import ray
    import ray.cloudpickle

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.2"
    # The workers import workers/ and growth_policy/ (installed); this module travels by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    if not ray.is_initialized():
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            _temp_dir=tempfile.mkdtemp(prefix="rstream-", dir="/tmp"),
            object_store_memory=200 * 1024 * 1024,
            log_to_driver=False,
        )


def _iter_runs(
    names: Sequence[str], seeds: Sequence[int], engines: Sequence[str]
) -> Iterator[tuple[str, int, str]]:
    for seed in seeds:
        for name in names:
            for engine in engines:
                yield name, seed, engine


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 200 steps per stage")
    parser.add_argument("--seeds", type=int, default=None, help="seeds 0..n-1 (full: 3)")
    parser.add_argument("--steps", type=int, default=None, help="steps per stage (full: 1500)")
    parser.add_argument("--methods", nargs="*", default=None, help=f"from {', '.join(methods())}")
    parser.add_argument(
        "--custom", action="append", default=[], help="NAME:JSON (see parse_custom)"
    )
    parser.add_argument("--engine", choices=("ray", "local", "both"), default="ray")
    parser.add_argument("--tag", default=None, help="results folder name (default by mode)")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument(
        "--resume", action="store_true", help="keep the stored results and run only what is missing"
    )
    parser.add_argument("--no-write", action="store_true", help="do not write docs/benchmarks.md")
    parser.add_argument("--write", action="store_true", help="write the table even with --quick")
    parser.add_argument("--section", default=None)
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="the variants behind the defaults (in-process, 3 seeds)",
    )
    return parser


@dataclass
class Plan:
    """What a command runs and reports: the methods, the engines, and the runs in order."""

    registry: dict[str, Method]
    names: list[str]
    engines: list[str]
    runs: list[tuple[str, int, str]]  # (method, seed, engine)


def _plan(args: argparse.Namespace) -> Plan:
    n_seeds = args.seeds or (1 if args.quick else 3)
    registry = sweep() if args.sweep else methods()
    if args.sweep:
        args.engine = "local" if args.engine == "ray" else args.engine
    for text in args.custom:
        m = parse_custom(text)
        registry[m.name] = m
    names = list(args.methods) if args.methods else list(QUICK if args.quick else FULL)
    if args.sweep and not args.methods:
        names = list(registry)
    names += [parse_custom(t).name for t in args.custom if parse_custom(t).name not in names]
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; known: {', '.join(registry)}")
    engines = ["local", "ray"] if args.engine == "both" else [args.engine]
    runs = list(_iter_runs(names, range(n_seeds), engines))
    if args.quick and args.engine == "ray":
        # Quick: every method in-process, and the default once more through Ray to show that the
        # two engines agree (a Ray Train run costs ~30 s to start, the whole quick run ~2 min).
        engines = ["local"]
        runs = [*_iter_runs(names, range(n_seeds), ["local"]), ("default", 0, "ray")]
    return Plan(registry, names, engines, runs)


def _run_all(plan: Plan, steps: int, folder: Path, *, resume: bool) -> None:
    """Run what the plan asks for (with ``resume``, only what is not stored yet), storing each
    result in ``folder`` as it finishes."""
    done = {(r.method, r.seed, r.engine) for r in load_all(folder)} if resume else set()
    if not resume:
        for old in folder.glob("*.json"):
            old.unlink()
    root = Path(tempfile.mkdtemp(prefix="lifelong-stream-"))
    stream = Stream(root)
    if any(e == "ray" for _, _, e in plan.runs):
        _ray_init()
    for name, seed, engine in plan.runs:
        if (name, seed, engine) in done:
            continue
        result = run_one(stream, plan.registry[name], seed, steps, engine)
        save(result, folder)
        print(
            f"{name:28s} seed {seed} {engine:5s} "
            + " ".join(f"{100 * a:5.1f}" for a in result.stage_acc)
            + f"  {result.train_flops / 1e9:7.1f} GFLOP  w{_width(result.final_params)}"
            f"  growths {_count(result)}+{_count(result, SP)} sp  {result.wall_s:.0f} s",
            flush=True,
        )


def _report_engine(
    args: argparse.Namespace, plan: Plan, engine: str, results: Sequence[RunResult]
) -> None:
    """The table of one engine's runs (printed, or written to docs/benchmarks.md)."""
    names = plan.names
    rs = [r for r in results if r.engine == engine and r.method in names]
    if not rs:
        return
    consistency = _consistency(results) if args.engine == "both" or args.quick else ""
    if consistency:
        print(consistency)
    section = args.section or (
        "stream-sweep" if args.sweep else "stream-quick" if args.quick else "stream"
    )
    title = (
        "Lifelong stream: the sweep behind the defaults"
        if args.sweep
        else "Lifelong stream (quick)"
        if args.quick
        else "Lifelong stream: growth against fixed and retrained models"
    )
    runtime = (
        f"Wall time of the runs: {fmt_duration(sum(r.wall_s for r in rs))} in all "
        f"({len(rs)} runs, one after the other; mean per run: "
        + ", ".join(f"{n} {fmt_duration(float(np.mean([r.wall_s for r in rs if r.method == n])))}"
                    for n in names if any(r.method == n for r in rs))
        + ")."
    )  # fmt: skip
    rebuilt = (
        f"Rebuilt from the per-run results in `bench/results/stream/{args.tag_used}` (committed), "
        "which the same command without `--report-only` stores: same code, nothing re-run."
    )
    extra = [
        runtime,
        rebuilt if args.report_only else "",
        f"The same runs in-process and through Ray:\n\n{consistency}" if consistency else "",
    ]
    report(
        rs,
        names,
        plan.registry,
        engine=engine,
        section=section if engine == "ray" else f"{section}-local",
        title=title if engine == "ray" else f"{title} (in-process engine)",
        plot_name=section if engine == "ray" else f"{section}-local",
        curves=not args.sweep,
        extra="\n\n".join(x for x in extra if x),
        write=not (args.no_write or (args.quick and not args.write)),
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    set_threads(1)
    steps = args.steps or (200 if args.quick else 1500)
    plan = _plan(args)
    tag = args.tag or f"{'sweep' if args.sweep else 'quick' if args.quick else 'full'}-{steps}"
    args.tag_used = tag
    folder = results_dir(tag, kept=not args.quick)
    if not args.report_only:
        _run_all(plan, steps, folder, resume=args.resume)
    results = load_all(folder)
    if not results:
        raise SystemExit(
            f"no per-run results under {folder}: run the same command without --report-only"
        )
    for engine in plan.engines:
        _report_engine(args, plan, engine, results)


def _consistency(results: Sequence[RunResult]) -> str:
    """Local against Ray, run by run: the largest difference in any stage accuracy."""
    pairs: dict[tuple[str, int], dict[str, RunResult]] = {}
    for r in results:
        pairs.setdefault((r.method, r.seed), {})[r.engine] = r
    lines = []
    for (m, s), d in sorted(pairs.items()):
        if "local" in d and "ray" in d:
            diff = max(
                abs(a - b) for a, b in zip(d["local"].stage_acc, d["ray"].stage_acc, strict=True)
            )
            lines.append(
                f"- {m} seed {s}: largest stage-accuracy difference, in-process against Ray: "
                f"{100 * diff:.2f} points"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
