"""Classes that arrive: class-incremental digits, Lifelong's default against naive and joint.

Protocol. scikit-learn's digits (1,797 real 8×8 images, 10 classes), split once, stratified: 20%
test (held out, never pushed), and of the rest 10% validation (the loop's own validation shards).
The classes come in 5 tasks of 2, in order (0-1, 2-3, 4-5, 6-7, 8-9); each task's data arrives once,
as one push of its training and validation samples, and the job trains ``--steps`` steps per task
(batch 32, Adam lr 1e-3) before the next task arrives. After each task, the accuracy on every task
seen so far is measured on the test set: ``R[k][j]``, task j after training task k.

Methods, each with 3 seeds:

* ``lifelong``: Lifelong's default through the real worker loop (``workers.loop.run_loop`` on a
  ``LocalRuntime``, one rank): open classes (the head starts at 2 outputs, ``max_classes`` 10, and
  grows by ``add_classes`` as each task's labels arrive), the default replay (``ReplaySpec()``: half
  of each batch from the newest samples, half uniform over the history), and the default growth
  policy (``GrowthPolicyConfig()``), from an MLP [16, 16];
* ``lifelong-uniform``: the same with replay uniform over the history (``newest_share`` 0);
* ``lifelong+drift``: the default with the ``drift`` policy added (``growth.policies``:
  ``data_scaling`` and ``drift``);
* ``naive``: fine-tuning on the new data only: a plain torch loop over task k's samples alone, an
  MLP [64, 64] with a 10-way head from the start;
* ``joint``: the upper bound: the same MLP trained on all the tasks' samples from the start, for
  the same total number of steps.

Reported: the final average accuracy over all 10 classes (the whole test set), and the average
forgetting (Chaudhry et al., 2018): the mean over the first 4 tasks of ``max_k R[k][j] − R[4][j]``.
Target: Lifelong within 3 points of joint, and far above naive.

Run: ``python -m bench.classes`` (about 3 minutes on 2 cores; writes its table to
docs/benchmarks.md), ``--quick`` (1 seed, 60 steps per task: the smoke test), ``--steps N``,
``--seeds N``, ``--methods a,b``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.nn import functional

from bench._common import mean_std, pm, set_threads
from bench._report import table, write_section
from growth_policy import GrowthPolicyConfig
from growth_policy.types import GrowthOp, Observation
from workers.checkpoint import load_checkpoint
from workers.loop import WorkerConfig, run_loop
from workers.runtime import LocalRuntime
from workers.shards import FileManifest, ShardInfo, ShardStore
from workers.sources import (
    BaseSource,
    CheckpointEvent,
    ControllerSource,
    DecisionSource,
    Directive,
    GrowthEvent,
    LoopStatus,
)
from workers.spec import ComputeSpec, ModelSpec, OptimizerSpec, ReplaySpec, TaskSpec

TASKS = ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))
STEPS = 300
BATCH = 32
LR = 1e-3
JOB = "classes"
BASELINE_HIDDEN = (64, 64)
LIFELONG_HIDDEN = (16, 16)
METHODS = ("lifelong", "lifelong-uniform", "lifelong+drift", "naive", "joint")


@dataclass(frozen=True)
class Split:
    """Per task: training, validation (the loop's) and test samples."""

    train: list[tuple[np.ndarray, np.ndarray]]
    val: list[tuple[np.ndarray, np.ndarray]]
    test: list[tuple[np.ndarray, np.ndarray]]

    @property
    def all_test(self) -> tuple[np.ndarray, np.ndarray]:
        return np.concatenate([x for x, _ in self.test]), np.concatenate([y for _, y in self.test])


def digits_split(seed: int = 0) -> Split:
    """The digits, split 80/20 (train/test) and 90/10 (train/validation), stratified, by task."""
    x, y = load_digits(return_X_y=True)
    x, y = (x / 16.0).astype(np.float32), y.astype(np.int64)
    xr, xt, yr, yt = train_test_split(x, y, test_size=0.2, stratify=y, random_state=seed)
    xr, xv, yr, yv = train_test_split(xr, yr, test_size=0.1, stratify=yr, random_state=seed)

    def by_task(a: np.ndarray, b: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(a[np.isin(b, t)], b[np.isin(b, t)]) for t in TASKS]

    return Split(by_task(xr, yr), by_task(xv, yv), by_task(xt, yt))


@dataclass
class RunResult:
    method: str
    seed: int
    matrix: list[list[float]]  # R[k][j]: task j's test accuracy after training task k (j <= k)
    final: float  # accuracy over all classes after the last task
    params: int
    growths: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    drift_max: float | None = None  # the loop's largest drift observed (workers.slices)
    loop_forgetting: float | None = None  # the loop's average forgetting at its last observation

    @property
    def forgetting(self) -> float:
        last = self.matrix[-1]
        drops = [max(r[j] for r in self.matrix[j:]) - last[j] for j in range(len(last) - 1)]
        return float(np.mean(drops)) if drops else 0.0


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    out = model(torch.from_numpy(x))
    return float((out.argmax(dim=1).numpy() == y).mean())


def _row(model: torch.nn.Module, split: Split, k: int) -> list[float]:
    return [accuracy(model, *split.test[j]) for j in range(k + 1)]


# ----------------------------------------------------------------------------- baselines


def _mlp(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    a, b = BASELINE_HIDDEN
    return torch.nn.Sequential(
        torch.nn.Linear(64, a), torch.nn.ReLU(), torch.nn.Linear(a, b), torch.nn.ReLU(),
        torch.nn.Linear(b, 10),
    )  # fmt: skip


def run_baseline(method: str, split: Split, seed: int, steps: int) -> RunResult:
    """``naive`` (task k's samples alone) or ``joint`` (every task's from the start)."""
    started = time.perf_counter()
    model = _mlp(seed)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    gen = torch.Generator().manual_seed(seed)
    every = (
        np.concatenate([x for x, _ in split.train]),
        np.concatenate([y for _, y in split.train]),
    )
    matrix = []
    for k in range(len(TASKS)):
        x, y = every if method == "joint" else split.train[k]
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        model.train()
        for _ in range(steps):
            i = torch.randint(0, len(xt), (BATCH,), generator=gen)
            opt.zero_grad()
            torch.autograd.backward(functional.cross_entropy(model(xt[i]), yt[i]))
            opt.step()
        matrix.append(_row(model, split, k))
    params = sum(p.numel() for p in model.parameters())
    final = accuracy(model, *split.all_test)
    return RunResult(method, seed, matrix, final, params, wall_s=time.perf_counter() - started)


# ----------------------------------------------------------------------------- the worker loop


class TaskSource(BaseSource):
    """The job's own source, plus the tasks: task k+1's shards at the first observation at or past
    step (k+1) × steps, after a checkpoint of the model that finished task k (copied, as the
    runtime keeps only its newest); stop after the last task."""

    def __init__(
        self,
        inner: DecisionSource,
        manifest: FileManifest,
        tasks: Sequence[Sequence[ShardInfo]],
        steps: int,
        copies: Path,
    ) -> None:
        self.inner, self.manifest, self.tasks = inner, manifest, [list(t) for t in tasks]
        self.steps, self.copies = steps, copies
        self.done = 0  # tasks finished
        self.boundary = -1  # the step at which the last one finished
        self.saved: list[Path] = []
        self.growths: list[GrowthEvent] = []
        self.last: Observation | None = None
        self.drift_max: float | None = None

    def decide(self, observation: Observation) -> Directive:
        directive = self.inner.decide(observation)
        self.last = observation
        if observation.drift is not None:
            self.drift_max = max(self.drift_max or 0.0, observation.drift)
        if observation.step < (self.done + 1) * self.steps:
            return directive
        self.done += 1
        self.boundary = observation.step
        if self.done >= len(self.tasks):
            return Directive(stop=True, reason="the last task is done")
        self.manifest.append(self.tasks[self.done])
        return directive.model_copy(update={"checkpoint": True, "pause": True})

    def poll(self, status: LoopStatus) -> Directive:
        return Directive()

    def on_checkpoint(self, event: CheckpointEvent) -> None:
        """The first checkpoint at a task's last step (periodic, final, or the closing or opening
        copy of a growth there: the same function) is that task's model."""
        if event.step == self.boundary and len(self.saved) < self.done:
            target = self.copies / f"task-{len(self.saved)}"
            shutil.copytree(event.path, target)
            self.saved.append(target)

    def on_growth(self, event: GrowthEvent) -> None:
        self.growths.append(event)
        self.inner.on_growth(event)

    def on_growth_failed(self, op: GrowthOp, step: int, error: str) -> None:
        self.inner.on_growth_failed(op, step, error)


def _task_shards(store: ShardStore, split: Split) -> list[list[ShardInfo]]:
    return [
        [store.write(JOB, *split.train[k], "train"), store.write(JOB, *split.val[k], "val")]
        for k in range(len(TASKS))
    ]


def _growth_words(event: GrowthEvent) -> str:
    op = event.op
    if op.op == "add_classes":
        return f"add_classes→{op.classes}"
    return f"{op.op}@{event.step} ({event.policy})"


def run_lifelong(method: str, split: Split, seed: int, steps: int, root: Path) -> RunResult:
    """Lifelong's default through the worker loop (``lifelong-uniform``: with uniform replay;
    ``lifelong+drift``: with the drift policy)."""
    started = time.perf_counter()
    folder = Path(tempfile.mkdtemp(prefix=f"{method}-s{seed}-", dir=root))
    store = ShardStore(str(folder / "data"))
    tasks = _task_shards(store, split)
    manifest = FileManifest(folder / "manifest", JOB, poll_interval=0.02)
    manifest.append(tasks[0])
    policies = ["data_scaling", "drift"] if method == "lifelong+drift" else None
    config = GrowthPolicyConfig() if policies is None else GrowthPolicyConfig(policies=policies)
    source = TaskSource(ControllerSource(config, seed=seed), manifest, tasks, steps, folder)
    worker = _worker(store, manifest, source, seed, folder)
    if method == "lifelong-uniform":
        worker = worker.model_copy(update={"replay": ReplaySpec(newest_share=0.0)})
    run_loop(worker, LocalRuntime(folder / "run"))
    matrix, final, params = [], 0.0, 0
    for k, path in enumerate(source.saved):
        model = load_checkpoint(path, with_optimizer=False).model
        matrix.append(_row(model, split, k))
        final, params = accuracy(model, *split.all_test), sum(p.numel() for p in model.parameters())
    growths = [_growth_words(g) for g in source.growths]
    shutil.rmtree(folder, ignore_errors=True)
    result = RunResult(method, seed, matrix, final, params, growths, time.perf_counter() - started)
    result.drift_max = source.drift_max
    result.loop_forgetting = source.last.average_forgetting if source.last else None
    return result


def _worker(
    store: ShardStore, manifest: FileManifest, source: DecisionSource, seed: int, folder: Path
) -> WorkerConfig:
    return WorkerConfig(
        job_id=JOB,
        task=TaskSpec(
            kind="classification", input_shape=(64,), num_classes=2, max_classes=len(TASKS) * 2
        ),
        model=ModelSpec.model_validate({"family": "mlp", "hidden": list(LIFELONG_HIDDEN)}),
        optimizer=OptimizerSpec(name="adam", lr=LR),
        store_root=store.root,
        manifest=manifest,
        source=source,
        batch_size=BATCH,
        observe_every=25,
        checkpoint_every=0,
        checkpoint_root=str(folder / "durable"),
        poll_interval=0.02,
        seed=seed,
        signals=False,
        compute=ComputeSpec(idle_when_converged=False),  # each task gets its steps
    )


# ----------------------------------------------------------------------------- report


def report(results: Sequence[RunResult], steps: int, seeds: int) -> str:
    by: dict[str, list[RunResult]] = {}
    for r in results:
        by.setdefault(r.method, []).append(r)
    rows: list[list[Any]] = []
    for name in METHODS:
        rs = by.get(name)
        if not rs:
            continue
        growths = "; ".join(dict.fromkeys(g for r in rs[:1] for g in r.growths)) or "–"
        rows.append([
            name, pm([r.final for r in rs], 1, 100), pm([r.forgetting for r in rs], 1, 100),
            pm([r.params for r in rs], 0), _loop_numbers(rs), growths,
            f"{np.mean([r.wall_s for r in rs]):.0f}",
        ])  # fmt: skip
    body = table(
        ["method", "final accuracy, all classes (%)", "average forgetting (points)",
         "final parameters", "the loop's own: largest drift, forgetting (points)",
         "growths (seed 0)", "wall s"],
        rows,
    )  # fmt: skip
    return (
        f"Class-incremental digits: 5 tasks of 2 classes in order, each task's data once, {steps} "
        f"steps per task (batch {BATCH}, Adam lr {LR:g}), {seeds} seed(s), mean ± std; accuracy "
        "on the held-out 20% test set.\n\n" + body + "\n\n" + _verdict(by) + _learned(by)
    )


def _learned(by: dict[str, list[RunResult]]) -> str:
    """What the variants say, in numbers from this run."""
    default, uniform, drift = (
        by.get("lifelong"),
        by.get("lifelong-uniform"),
        by.get("lifelong+drift"),
    )
    lines = []
    if default and uniform:
        d = 100 * (mean_std(r.final for r in uniform)[0] - mean_std(r.final for r in default)[0])
        fu = 100 * mean_std(r.forgetting for r in uniform)[0]
        fd = 100 * mean_std(r.forgetting for r in default)[0]
        why = (
            ": when each class arrives once, the newest share over-weights the newest classes"
            if d > 0
            else ""
        )
        lines.append(
            f"- Replay: uniform over the history (`newest_share` 0) ends {d:+.1f} points against "
            f"the default's half-newest batches, with an average forgetting of {fu:.1f} against "
            f"{fd:.1f} points{why}."
        )
    if default and drift:
        same = all(a.growths == b.growths for a, b in zip(default, drift, strict=False))
        peak = mean_std(r.drift_max or 0.0 for r in drift)[0]
        lines.append(
            f"- The drift policy {'never grew' if same else 'grew'} here: the loop's drift peaked "
            f"at {peak:.1f}× when a task arrived and fell within the policy's window as the new "
            "classes were learned (the policy grows only on drift that stays high)."
        )
    return ("\n\nWhat was learned:\n\n" + "\n".join(lines)) if lines else ""


def _loop_numbers(rs: Sequence[RunResult]) -> str:
    """What the loop measured itself (per-slice validation): the largest drift and the final
    average forgetting over the validation slices."""
    drifts = [r.drift_max for r in rs if r.drift_max is not None]
    forgot = [r.loop_forgetting for r in rs if r.loop_forgetting is not None]
    if not drifts:
        return "–"
    return f"{pm(drifts, 1)}; {pm(forgot, 1, 100)}"


def _verdict(by: dict[str, list[RunResult]]) -> str:
    lines = []
    joint, naive = by.get("joint"), by.get("naive")
    for name in ("lifelong", "lifelong-uniform", "lifelong+drift"):
        rs = by.get(name)
        if not rs or not joint or not naive:
            continue
        mine, best = mean_std(r.final for r in rs)[0], mean_std(r.final for r in joint)[0]
        low = mean_std(r.final for r in naive)[0]
        gap = 100 * (best - mine)
        met = "met" if gap <= 3.0 else "missed"
        lines.append(
            f"- `{name}`: {gap:.1f} points below joint (target within 3: {met}); "
            f"{100 * (mine - low):.1f} points above naive."
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.classes", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1 seed, 60 steps per task")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args(argv)
    steps = args.steps or (60 if args.quick else STEPS)
    seeds = args.seeds or (1 if args.quick else 3)
    set_threads(1)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-classes-") as tmp:
        for seed in range(seeds):
            split = digits_split(seed)
            for method in args.methods.split(","):
                if method.startswith("lifelong"):
                    r = run_lifelong(method, split, seed, steps, Path(tmp))
                else:
                    r = run_baseline(method, split, seed, steps)
                print(f"{method} seed {seed}: final {r.final:.3f} forgetting {r.forgetting:.3f} "
                      f"params {r.params} {r.growths} ({r.wall_s:.0f} s)", flush=True)  # fmt: skip
                results.append(r)
    write_section("classes", "Classes that arrive", report(results, steps, seeds))


if __name__ == "__main__":
    main()
