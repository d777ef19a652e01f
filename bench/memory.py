"""Bigger than memory: a stream ten times a rank's memory budget, trained on with flat memory.

Protocol. A classification job (64 Gaussian features, 10 classes labelled by a fixed random linear
teacher, an MLP 64-64, Adam 1e-3, batch 128, the default replay) on the real worker loop in this
process (``workers.loop.TrainLoop`` on a ``LocalRuntime``: one rank; every rank of a Ray job runs
the same reader under its own budget):

1. **Growth.** The per-rank budget ``data.resident_bytes`` is ``--budget-mib``; shards of a
   quarter of the budget are pushed one per observation (every 50 steps) until the training set is
   ten times the budget. At every observation: the dataset's bytes (decoded), the reader's resident bytes
   (``DataReader.resident_bytes``: the decoded history or the streamed windows, the newest window),
   and the process's RSS. Reported: the peak RSS at one, two, five and ten times the budget, and its
   growth from the moment the history first streamed to the end.
2. **Speed and accuracy on data that fits.** The same job on a fixed training set that fits in
   memory (``--fits`` samples), once with the whole history resident (the default budget of
   1 GiB) and once streamed (a budget of a tenth of the data), for ``--steps`` steps and 3 seeds:
   samples per second of the loop (observation to observation, so start-up is left out) and the
   final validation accuracy (5,000 samples). Target: streamed ≥ 0.8 × resident samples/s, and the
   accuracies within each other's seed spread.

Run: ``python -m bench.memory`` (writes its table to docs/benchmarks.md); ``--quick`` (a 4 MiB
budget, 2 seeds of 600 steps; prints only).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench._common import set_threads
from bench._live import SAMPLE_BYTES, Callback, Teacher, push, rss_bytes, run, worker_config
from bench._report import table, write_section
from growth_policy.types import Observation
from workers.loop import TrainLoop
from workers.shards import FileManifest, ShardStore
from workers.sources import Directive

MIB = 1 << 20
SHARD = 20_000
VAL = 5_000


def grow(root: Path, budget: int, *, multiple: float = 10.0) -> dict[str, Any]:
    """Push shards of a quarter of the budget until the training set is ``multiple`` × ``budget``;
    one record per observation."""
    teacher = Teacher()
    shard = math.ceil(budget / SAMPLE_BYTES / 4)
    store, manifest = ShardStore(str(root / "data")), FileManifest(root / "manifest", "job")
    push(store, manifest, *teacher.samples(VAL, seed=10_000), split="val")
    push(store, manifest, *teacher.samples(shard, seed=0))
    target = math.ceil(multiple * budget / SAMPLE_BYTES)
    records: list[dict[str, Any]] = []
    pushed = [1]
    after = [0]

    def decide(loop: TrainLoop, observation: Observation) -> Directive:
        r = loop.reader
        records.append(
            {
                "step": observation.step,
                "train_size": r.train_size,
                "dataset_bytes": r.train_size * SAMPLE_BYTES,
                "resident_bytes": r.resident_bytes,
                "val_resident_bytes": r.val_resident_bytes,
                "rss": rss_bytes(),
                "streamed": r.streamed,
            }
        )
        if pushed[0] * shard < target:
            push(store, manifest, *teacher.samples(shard, seed=pushed[0]))
            pushed[0] += 1
            return Directive()
        after[0] += 1
        return Directive(stop=after[0] >= 4, reason="the stream is ten times the budget")

    source = Callback(decide)
    run(worker_config(root, source, resident_bytes=budget), source, root / "run")
    return {"budget": budget, "records": records}


def speed(root: Path, budget: int | None, *, samples: int, steps: int, seed: int) -> dict[str, Any]:
    """Train ``steps`` steps on a fixed set; samples/s between the first and last observations."""
    teacher = Teacher()
    store, manifest = ShardStore(str(root / "data")), FileManifest(root / "manifest", "job")
    if not manifest.path.exists():
        push(store, manifest, *teacher.samples(VAL, seed=10_000), split="val")
        for i in range(0, samples, SHARD):
            push(store, manifest, *teacher.samples(min(SHARD, samples - i), seed=i + 1))
    marks: list[tuple[float, int, float | None]] = []

    def decide(loop: TrainLoop, observation: Observation) -> Directive:
        marks.append((time.perf_counter(), observation.samples_seen, observation.val_metric))
        return Directive(stop=observation.step >= steps, reason="done")

    source = Callback(decide)
    tag = f"run-{budget}-{seed}"
    loop = run(
        worker_config(root, source, resident_bytes=budget, seed=seed, val_max_samples=VAL),
        source,
        root / tag,
    )
    shutil.rmtree(root / tag, ignore_errors=True)  # a later run on this tag starts afresh
    (t0, s0, _), (t1, s1, acc) = marks[0], marks[-1]
    return {
        "samples_per_s": (s1 - s0) / (t1 - t0),
        "accuracy": acc,
        "streamed": loop.reader.streamed,
        "resident_bytes": loop.reader.resident_bytes,
    }


def _child(kind: str, args: dict[str, Any]) -> dict[str, Any]:
    """One measurement in a fresh process (its RSS is its own)."""
    command = [sys.executable, "-m", "bench.memory", "--child", kind, json.dumps(args)]
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"bench.memory {kind} failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _growth_rows(result: dict[str, Any]) -> tuple[list[list[str]], float]:
    budget, records = result["budget"], result["records"]
    rows = []
    for multiple in (1, 2, 5, 10):
        upto = [r for r in records if r["dataset_bytes"] <= multiple * budget * 1.05]
        if not upto:
            continue
        last = upto[-1]
        rows.append(
            [
                f"{last['dataset_bytes'] / budget:.1f}×",
                f"{last['train_size']:,}",
                f"{max(r['resident_bytes'] for r in upto) / MIB:.2f}",
                f"{max(r['rss'] for r in upto) / MIB:.0f}",
                "yes" if last["streamed"] else "no",
            ]
        )
    streamed = [r for r in records if r["streamed"]]
    growth = (max(r["rss"] for r in streamed) - streamed[0]["rss"]) / MIB if streamed else math.nan
    return rows, growth


def report(growth: dict[str, Any], speeds: dict[str, list[dict[str, Any]]], write: bool) -> None:
    budget = growth["budget"]
    rows, rss_growth = _growth_rows(growth)
    resident = max(r["resident_bytes"] for r in growth["records"])
    body = [
        f"Per-rank budget (`data.resident_bytes`): {budget / MIB:.0f} MiB; the stream grows to "
        f"{growth['records'][-1]['dataset_bytes'] / budget:.1f}× it. Reader's resident bytes at "
        f"most {resident / MIB:.2f} MiB (budget {'kept' if resident <= budget else 'EXCEEDED'}); "
        f"RSS growth from the first streamed pass to the end: {rss_growth:.1f} MiB.",
        "",
        table(
            [
                "dataset / budget",
                "training samples",
                "reader resident MiB (peak)",
                "process RSS MiB (peak)",
                "streamed",
            ],
            rows,
        ),
        "",
    ]
    res, st = speeds["resident"], speeds["streamed"]
    ratio = statistics.mean(s["samples_per_s"] for s in st) / statistics.mean(
        s["samples_per_s"] for s in res
    )

    def spread(runs: list[dict[str, Any]]) -> str:
        accs = [100 * (s["accuracy"] or 0.0) for s in runs]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        return f"{statistics.mean(accs):.1f} ± {sd:.1f}"

    body += [
        table(
            ["reader", "samples/s (mean of seeds)", "final val accuracy %", "seeds"],
            [
                [
                    "resident (whole history in memory)",
                    f"{statistics.mean(s['samples_per_s'] for s in res):,.0f}",
                    spread(res),
                    len(res),
                ],
                [
                    "streamed (budget a tenth of the data)",
                    f"{statistics.mean(s['samples_per_s'] for s in st):,.0f}",
                    spread(st),
                    len(st),
                ],
            ],
        ),
        "",
        f"Streamed / resident samples/s: {ratio:.2f} (target ≥ 0.8: "
        f"{'met' if ratio >= 0.8 else 'MISSED'}).",
    ]
    text = "\n".join(body)
    if write:
        write_section("memory", "Bigger than memory", text)
    else:
        print(text)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--budget-mib", type=float, default=None, help="per-rank budget (16)")
    parser.add_argument("--fits", type=int, default=None, help="samples that fit (200,000)")
    parser.add_argument("--steps", type=int, default=None, help="steps per speed run (2,000)")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--write", action="store_true", help="write the table even with --quick")
    parser.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    set_threads(1)
    if args.child:
        kind, params = args.child[0], json.loads(args.child[1])
        root = Path(params.pop("root"))
        result = grow(root, **params) if kind == "grow" else speed(root, **params)
        print(json.dumps(result))
        return
    budget = int((args.budget_mib or (4 if args.quick else 16)) * MIB)
    fits = args.fits or (40_000 if args.quick else 200_000)
    steps = args.steps or (600 if args.quick else 2_000)
    seeds = range(args.seeds or (2 if args.quick else 3))
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        growth = _child("grow", {"root": f"{tmp}/grow", "budget": budget})
        speeds: dict[str, list[dict[str, Any]]] = {"resident": [], "streamed": []}
        small = fits * SAMPLE_BYTES // 10
        for seed in seeds:
            for name, b in (("resident", None), ("streamed", small)):
                params = {"root": f"{tmp}/speed", "budget": b, "samples": fits, "steps": steps}
                speeds[name].append(_child("speed", {**params, "seed": seed}))
    report(growth, speeds, write=args.write or not args.quick)


if __name__ == "__main__":
    main()
