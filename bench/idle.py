"""Compute that follows the data: a job that waits when converged, against one that trains on.

Protocol. The MNIST-1D stream of ``bench/stream.py`` (6 cumulative stages, 1k → 32k training
samples, a fixed validation set of 5,000; Adam lr 1e-3, batch 128; an MLP starting at w16 under the
default growth policy), but the data arrives by the wall clock, as in production: stage k's shard
is appended to the job's manifest ``k × interval`` seconds after the job started training, and the
run stops ``interval`` seconds after the last stage. Between arrivals a job trains as its compute
options say:

* ``idle-best``: the default (``ComputeSpec()``): it waits once converged on the data it holds,
  holding and waking from its best weights;
* ``idle-last``: the same, waking from its last weights (``wake_from: last``);
* ``always``: ``idle_when_converged: false``, the behaviour before: it trains without end.

What is measured, per variant and seed, from the loop's own books (``workers.compute``): the total
estimated FLOPs (training and validation) and busy seconds, the duty cycle, and the validation
accuracy of the model the job holds when each next stage arrives (the end of each stage: the last
observation's, or while converged the held weights'), and at the end. With the data on a clock, a
job that trains on spends more steps on a machine that is less loaded: the busy seconds and FLOPs
of ``always`` are what the machine gave it in the interval.

Engine: the worker loop in this process (``workers.loop.run_loop`` on a ``LocalRuntime``, one
rank, torch on one thread): the same loop code as on Ray (``bench/stream.py`` checks that the two
engines agree), without Ray Train's 30 s start per run. On this 2-core machine, the default interval
of 12 s makes each run 72 s of stream, so the full run (3 variants × 3 seeds) takes about 12
minutes; ``--quick`` runs 1 seed of the first 3 stages at 4 s each (under a minute).

Run: ``python -m bench.idle`` (writes its table to docs/benchmarks.md and the per-run results to
``bench/results/idle/<tag>``), ``--quick``, ``--interval S``, ``--seeds N``, ``--variants``,
``--report-only`` (rebuild the table from the stored results).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import fmt_duration, mean_std, pm, set_threads
from bench._report import table, write_section
from bench.stream import STAGES, Stream, _worker_config, methods
from growth_policy.types import GrowthOp, Observation
from workers.loop import run_loop
from workers.runtime import LocalRuntime
from workers.shards import FileManifest, ShardInfo
from workers.sources import BaseSource, ControllerSource, Directive, GrowthEvent, LoopStatus
from workers.spec import ComputeSpec

RESULTS = Path(__file__).resolve().parent / "results" / "idle"
POLL_S = 0.1  # the loop's poll interval while it waits (the service's default is 1 s)


@dataclass(frozen=True)
class Variant:
    name: str
    label: str
    compute: dict[str, Any]

    def spec(self) -> ComputeSpec:
        return ComputeSpec.model_validate(self.compute)


def variants() -> dict[str, Variant]:
    default = ComputeSpec().wake_from
    out = [
        Variant("idle-best", "waits when converged, wakes from the best weights", {"wake_from": "best"}),
        Variant("idle-last", "waits when converged, wakes from the last weights", {"wake_from": "last"}),
        Variant("always", "trains without end (idle_when_converged: false)", {"idle_when_converged": False}),
    ]  # fmt: skip
    return {
        v.name: Variant(v.name, v.label + (" (default)" if v.compute == {"wake_from": default} else ""), v.compute)
        for v in out
    }  # fmt: skip


# ----------------------------------------------------------------------------- the clock


class WallClockSource(BaseSource):
    """The default growth controller, plus data on a clock: stage k arrives ``k × interval`` s
    after the loop started training; the loop stops ``interval`` s after the last stage. Records
    the accuracy of the model held when each stage ends, the growths, and the loop's compute."""

    def __init__(
        self, inner: ControllerSource, manifest: FileManifest, stages: Sequence[Sequence[ShardInfo]],
        interval: float,
    ) -> None:  # fmt: skip
        self.inner = inner
        self.manifest = manifest
        self.stages = [list(s) for s in stages]
        self.interval = interval
        self.start: float | None = None
        self.appended = 1
        self.current: float | None = None  # validation accuracy of the model held now
        self.stage_acc: list[float | None] = []
        self.growths = 0
        self.converged = 0
        self.compute: dict[str, Any] = {}

    def _tick(self) -> Directive | None:
        if self.start is None:
            return None
        due = int((time.monotonic() - self.start) // self.interval) + 1  # stages due so far
        while self.appended < min(due, len(self.stages)):
            self.stage_acc.append(self.current)
            self.manifest.append(self.stages[self.appended])
            self.appended += 1
        if due <= len(self.stages):
            return None
        if len(self.stage_acc) < len(self.stages):
            self.stage_acc.append(self.current)
        return Directive(stop=True, reason="the stream ended")

    def decide(self, observation: Observation) -> Directive:
        self.current = observation.val_metric
        directive = self.inner.decide(observation)
        return self._tick() or directive

    def poll(self, status: LoopStatus) -> Directive:
        return self._tick() or Directive()

    def on_status(self, status: LoopStatus) -> None:
        if status.state == "training" and self.start is None:
            self.start = time.monotonic()
        if status.state == "converged":
            self.converged += 1
            held = status.detail.get("held_val_metric")
            if held is not None:
                self.current = float(held)
        if "compute" in status.detail:
            self.compute = dict(status.detail["compute"])

    def on_growth(self, event: GrowthEvent) -> None:
        self.growths += event.op.op in ("widen", "deepen")
        self.inner.on_growth(event)

    def on_growth_failed(self, op: GrowthOp, step: int, error: str) -> None:
        self.inner.on_growth_failed(op, step, error)

    def state_dict(self) -> dict[str, Any]:
        return {"inner": self.inner.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state.get("inner", {}))


# ----------------------------------------------------------------------------- runs


@dataclass
class RunResult:
    variant: str
    seed: int
    interval: float
    stage_acc: list[float]
    flops: float
    busy_s: float
    elapsed_s: float
    steps: int
    converged: int
    growths: int
    stage_busy_s: list[float] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def final(self) -> float:
        return self.stage_acc[-1]

    @property
    def area(self) -> float:
        return float(np.mean(self.stage_acc))


def run_one(stream: Stream, variant: Variant, seed: int, interval: float) -> RunResult:
    """One variant, one seed: the loop in this process until the stream ends."""
    started = time.perf_counter()
    name = f"idle-{variant.name}-s{seed}-{time.monotonic_ns()}"
    manifest = stream.new_manifest(stream.shards[0])
    inner = ControllerSource(methods()["default"].config(), seed=seed)
    source = WallClockSource(inner, manifest, stream.shards, interval)
    worker = _worker_config(stream, methods()["default"], seed, source, manifest, name=name)
    worker = worker.model_copy(update={"compute": variant.spec(), "poll_interval": POLL_S})
    storage = stream.root / "runs"
    try:
        run_loop(worker, LocalRuntime(storage / name))
    finally:
        shutil.rmtree(storage / name, ignore_errors=True)
        shutil.rmtree(worker.durable_root(), ignore_errors=True)
    if any(a is None for a in source.stage_acc) or len(source.stage_acc) != len(stream.stages):
        raise RuntimeError(f"{name}: stage accuracies {source.stage_acc} (interval too short?)")
    c = source.compute
    versions = c.get("per_version", {})
    return RunResult(
        variant=variant.name, seed=seed, interval=interval,
        stage_acc=[float(a) for a in source.stage_acc if a is not None],
        flops=float(c["flops"]), busy_s=float(c["busy_s"]), elapsed_s=float(c["elapsed_s"]),
        steps=int(c["steps"]), converged=source.converged, growths=source.growths,
        stage_busy_s=[float(versions.get(str(k + 1), {}).get("busy_s", 0.0))
                      for k in range(len(stream.stages))],
        wall_s=time.perf_counter() - started,
    )  # fmt: skip


def save(result: RunResult, folder: Path) -> None:
    (folder / f"{result.variant}-s{result.seed}.json").write_text(json.dumps(asdict(result)))


def load_all(folder: Path) -> list[RunResult]:
    return [RunResult(**json.loads(p.read_text())) for p in sorted(folder.glob("*.json"))]


# ----------------------------------------------------------------------------- report


def _by_variant(results: Sequence[RunResult]) -> dict[str, list[RunResult]]:
    out: dict[str, list[RunResult]] = {}
    for r in sorted(results, key=lambda r: (r.variant, r.seed)):
        out.setdefault(r.variant, []).append(r)
    return out


def _row(v: Variant, rs: Sequence[RunResult], base: Sequence[RunResult] | None) -> list[Any]:
    flops = mean_std(r.flops for r in rs)[0]
    busy = mean_std(r.busy_s for r in rs)[0]
    saved = (
        f"{100 * (1 - flops / mean_std(r.flops for r in base)[0]):.0f}% / "
        f"{100 * (1 - busy / mean_std(r.busy_s for r in base)[0]):.0f}%"
        if base
        else "–"
    )
    n = len(rs[0].stage_acc)
    return [
        v.label, len(rs),
        *(pm([r.stage_acc[k] for r in rs], 1, 100) for k in range(n)),
        pm([r.area for r in rs], 1, 100), pm([r.flops / 1e12 for r in rs], 2),
        pm([r.busy_s for r in rs], 0), saved,
        pm([r.busy_s / r.elapsed_s for r in rs], 2), pm([r.steps for r in rs], 0),
        pm([r.converged for r in rs], 1), pm([r.growths for r in rs], 1),
    ]  # fmt: skip


def verdict(groups: dict[str, list[RunResult]]) -> list[str]:
    """The target (≥ 30% less compute than training on, final accuracy within the seed spread)
    and what the runs say of ``wake_from``."""
    default = "idle-best" if ComputeSpec().wake_from == "best" else "idle-last"
    d, a = groups.get(default), groups.get("always")
    out = []
    if d and a:
        saved = 1 - mean_std(r.flops for r in d)[0] / mean_std(r.flops for r in a)[0]
        busy = 1 - mean_std(r.busy_s for r in d)[0] / mean_std(r.busy_s for r in a)[0]
        (fd, sd), (fa, sa) = mean_std(r.final for r in d), mean_std(r.final for r in a)
        spread = max(sd, sa)
        ok = saved >= 0.30 and fd >= fa - spread
        out.append(
            f"- Target: the default spends at least 30% less compute than the same job training "
            f"on, at a final accuracy within the seed spread: {100 * saved:.0f}% fewer FLOPs and "
            f"{100 * busy:.0f}% fewer busy seconds; final {100 * fd:.1f}% vs {100 * fa:.1f}% "
            f"(difference {100 * (fd - fa):+.1f} points, spread: the larger standard deviation, "
            f"{100 * spread:.1f}): **{'holds' if ok else 'MISSED'}**."
        )
    b, last = groups.get("idle-best"), groups.get("idle-last")
    if b and last:
        fb, fl = mean_std(r.final for r in b)[0], mean_std(r.final for r in last)[0]
        ab, al = mean_std(r.area for r in b)[0], mean_std(r.area for r in last)[0]
        out.append(
            f"- `wake_from` (default `{ComputeSpec().wake_from}`): best weights {100 * fb:.1f}% "
            f"final, {100 * ab:.1f}% mean over the stages; last weights {100 * fl:.1f}% final, "
            f"{100 * al:.1f}% mean over the stages."
        )
    return out


def report(results: Sequence[RunResult], *, write: bool, extra: str = "") -> None:
    groups = _by_variant(results)
    registry = variants()
    interval = results[0].interval
    n = len(results[0].stage_acc)
    heads = ["variant", "seeds", *(f"{s // 1000}k" for s in STAGES[:n]), f"mean of {n}",
             "TFLOP", "busy s", "saved vs training on (FLOPs / busy)", "duty cycle", "steps",
             "times converged", "growths"]  # fmt: skip
    base = groups.get("always")
    rows = [
        _row(registry[name], rs, base if name != "always" else None)
        for name, rs in groups.items()
        if name in registry
    ]
    per_stage = [
        [registry[name].label, *(pm([r.stage_busy_s[k] for r in rs], 1) for k in range(n))]
        for name, rs in groups.items()
        if name in registry
    ]
    body = (
        f"MNIST-1D, {n} cumulative stages ({', '.join(f'{s // 1000}k' for s in STAGES[:n])} "
        f"training samples), one every {interval:g} s by the wall clock, the run ending "
        f"{interval:g} s after the last; the default growth policy from w16, Adam lr 1e-3, batch "
        "128, validation on a fixed 5,000 samples every 50 steps; the worker loop in-process, one "
        "rank, one torch thread. Cells: validation accuracy (%) of the model the job holds when "
        "the next stage arrives (the last column: when the stream ends), mean ± standard "
        "deviation over the seeds. TFLOP: estimated training and validation FLOPs, and busy s: "
        "seconds spent training, both from the loop's own books (workers.compute); duty cycle: "
        "busy seconds over the seconds since the loop started.\n\n"
        + table(heads, rows)
        + "\n\nBusy seconds per stage (data version):\n\n"
        + table(["variant", *(f"{s // 1000}k" for s in STAGES[:n])], per_stage)
        + "\n\n"
        + "\n".join(verdict(groups))
        + (f"\n\n{extra}" if extra else "")
    )
    if write:
        write_section("idle", "Compute that follows the data: waiting when converged", body)
    else:
        print(body)


# ----------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 3 stages of 4 s")
    parser.add_argument("--interval", type=float, default=None, help="seconds per stage (12)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds 0..n-1 (3)")
    parser.add_argument("--variants", nargs="*", default=None, help=f"from {', '.join(variants())}")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--write", action="store_true", help="write the table even with --quick")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    set_threads(1)
    interval = args.interval or (4.0 if args.quick else 12.0)
    stages = STAGES[:3] if args.quick else STAGES
    seeds = range(args.seeds or (1 if args.quick else 3))
    names = args.variants or list(variants())
    tag = f"{'quick' if args.quick else 'full'}-{interval:g}s"
    if args.quick:
        from bench._common import cache_dir

        folder = cache_dir() / "idle-results" / tag
    else:
        folder = RESULTS / tag
    folder.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        for old in folder.glob("*.json"):
            old.unlink()
        root = Path(tempfile.mkdtemp(prefix="lifelong-idle-"))
        try:
            stream = Stream(root, stages)
            for seed in seeds:
                for name in names:
                    r = run_one(stream, variants()[name], seed, interval)
                    save(r, folder)
                    print(f"{name:10s} seed {seed} " + " ".join(f"{100 * a:5.1f}" for a in r.stage_acc)
                          + f"  {r.flops / 1e12:6.2f} TFLOP  busy {r.busy_s:5.1f} s of "
                          f"{r.elapsed_s:5.1f}  converged {r.converged}  {r.wall_s:.0f} s", flush=True)  # fmt: skip
        finally:
            shutil.rmtree(root, ignore_errors=True)
    results = load_all(folder)
    if not results:
        raise SystemExit(f"no results under {folder}: run without --report-only")
    total = fmt_duration(sum(r.wall_s for r in results))
    note = (
        f"Wall time of the runs: {total} in all ({len(results)} runs, one after the other). "
        f"Per-run results: `{folder.relative_to(RESULTS.parents[2]) if not args.quick else folder}`."
    )
    if args.report_only:
        note += (
            " Rebuilt with `--report-only` from those per-run results (stored by the same command "
            "without it): nothing re-run; each variant sets its `wake_from` itself, so the runs "
            "do not depend on the default, which the labels and the target line follow."
        )
    report(results, write=not (args.no_write or (args.quick and not args.write)), extra=note)


if __name__ == "__main__":
    main()
