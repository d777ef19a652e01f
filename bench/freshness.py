"""Freshness: from a push's answer to the first gradient step that trains on one of its samples.

Protocol. A classification job (16 Gaussian features, 10 classes labelled by a fixed random linear
teacher, an MLP 64-64, Adam 1e-3, batch 128, one rank: the real worker loop in this process,
``workers.loop.TrainLoop`` on a ``LocalRuntime``) trains on a history of 10 thousand or 10 million
samples. The 10-million history is written once (100 shards of 100,000 samples, 720 MB, cached
under ``$LIFELONG_BENCH_CACHE``) and is streamed: the job's memory budget (``data.resident_bytes``)
is 64 MiB, a tenth of it; the 10-thousand history is resident under the same budget.

While the job trains, a thread pushes ``--pushes`` shards of 32 samples, one at a time, 0.3 to 0.8
s apart at random: a push is a durable shard appended to the manifest, which is when the service
answers a push. Each push's samples carry a marker in their first feature; the loop's step is timed
from that answer to the end of the first optimizer step whose batch holds a marked sample (the
wait includes the rest of the pass under way, the manifest read, and any window read).

Replay settings compared (``ReplaySpec``): ``default`` (a newest share of 0.5, at most 100 steps a
pass), ``uniform`` (no newest share: a pushed sample waits for uniform replay to draw it), and
``long-pass`` (the newest share with 1,000 steps a pass). Target: ≤ 2 s at both history sizes for
the default. A push not trained on within ``--timeout`` seconds counts as that timeout.

Run: ``python -m bench.freshness`` (writes its table to docs/benchmarks.md); ``--quick`` (5 pushes,
a 1-million history instead of 10 million; prints only).
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bench._common import cache_dir, set_threads
from bench._report import table, write_section
from growth_policy.types import Observation
from workers.loop import TrainLoop, WorkerConfig
from workers.runtime import LocalRuntime
from workers.shards import FileManifest, Manifest, ShardInfo, ShardStore
from workers.sources import BaseSource, Directive
from workers.spec import ComputeSpec, DataSpec, ModelSpec, OptimizerSpec, ReplaySpec, TaskSpec

JOB = "job"
FEATURES = 16
CLASSES = 10
TASK = TaskSpec(kind="classification", input_shape=(FEATURES,), num_classes=CLASSES)
SHARD = 100_000
PUSH = 32
BUDGET = 64 << 20
VARIANTS: dict[str, ReplaySpec] = {
    "default": ReplaySpec(),
    "uniform": ReplaySpec(newest_share=0.0),
    "long-pass": ReplaySpec(max_steps_per_pass=1_000),
}


def _teacher() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((FEATURES, CLASSES)).astype(np.float32)


def _samples(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(seed).standard_normal((n, FEATURES)).astype(np.float32)
    return x, (x @ _teacher()).argmax(axis=1).astype(np.int64)


def history(samples: int) -> tuple[ShardStore, Manifest]:
    """The history's shards and manifest, written once and cached."""
    root = cache_dir() / f"freshness-{samples}-f{FEATURES}"
    store = ShardStore(str(root / "data"))
    manifest = FileManifest(root / "manifest", JOB)
    if manifest.load().train_size != samples:
        if manifest.path.exists():
            manifest.path.unlink()
        started = time.perf_counter()
        infos = []
        for i in range(0, samples, SHARD):
            infos.append(store.write(JOB, *_samples(min(SHARD, samples - i), seed=i), "train"))
        manifest.append(infos)
        print(f"wrote a history of {samples:,} samples in {time.perf_counter() - started:.0f} s")
    return store, manifest.load()


@dataclass
class Pushes:
    """The pushes of one run: each one's marker, answer time and first-step latency."""

    count: int
    timeout: float
    markers: list[float] = field(default_factory=list)
    answered: list[float] = field(default_factory=list)
    latency: dict[int, float] = field(default_factory=dict)
    done: threading.Event = field(default_factory=threading.Event)
    shards: list[ShardInfo] = field(default_factory=list)


class TimedLoop(TrainLoop):
    """The loop, timing the first step that trains on each push's samples."""

    pushes: Pushes

    def train_step(self, features: torch.Tensor, labels: torch.Tensor) -> bool:
        p = self.pushes
        hits = [
            i
            for i, marker in enumerate(p.markers)
            if i not in p.latency and i < len(p.answered) and bool((features[:, 0] == marker).any())
        ]
        stepped = super().train_step(features, labels)
        now = time.perf_counter()
        for i in hits:
            p.latency[i] = now - p.answered[i]
        return stepped


class Stopper(BaseSource):
    def __init__(self, pushes: Pushes) -> None:
        self.pushes = pushes

    def decide(self, observation: Observation) -> Directive:
        return Directive(stop=self.pushes.done.is_set(), reason="the pushes are timed")


def _pusher(loop: TimedLoop, store: ShardStore, manifest: FileManifest, seed: int) -> None:
    p, rng = loop.pushes, random.Random(seed)
    while loop.progress.step < 200:  # warmed up: trained a while (and read a window)
        time.sleep(0.05)
    for i in range(p.count):
        time.sleep(rng.uniform(0.3, 0.8))
        x, y = _samples(PUSH, seed=10_000_000 + i)
        marker = float(np.float32(5.0 + (i + 1) / 1024))
        x[:, 0] = marker
        p.markers.append(marker)
        info = store.write(JOB, x, y, "train")
        manifest.append([info])
        p.answered.append(time.perf_counter())  # the push's answer: durable and listed
        p.shards.append(info)
        deadline = time.monotonic() + p.timeout
        while i not in p.latency and time.monotonic() < deadline:
            time.sleep(0.005)
        p.latency.setdefault(i, p.timeout)
    p.done.set()


def run_one(samples: int, replay: ReplaySpec, pushes: int, timeout: float) -> list[float]:
    set_threads(1)
    store, snapshot = history(samples)
    with tempfile.TemporaryDirectory(prefix="bench-freshness-") as tmp:
        manifest = FileManifest(Path(tmp) / "manifest", JOB, poll_interval=0.01)
        manifest.path.parent.mkdir(parents=True, exist_ok=True)
        manifest.path.write_text(snapshot.model_dump_json())
        record = Pushes(count=pushes, timeout=timeout)
        config = WorkerConfig(
            job_id=JOB, task=TASK, model=ModelSpec(family="mlp", hidden=[64, 64]),
            optimizer=OptimizerSpec(name="adam", lr=1e-3), store_root=store.root,
            manifest=manifest, source=Stopper(record), batch_size=128, observe_every=50,
            checkpoint_every=0, checkpoint_root=f"{tmp}/durable", poll_interval=0.01,
            signals=False, verify_shards=False, compute=ComputeSpec(idle_when_converged=False),
            replay=replay, data=DataSpec(resident_bytes=BUDGET),
        )  # fmt: skip
        loop = TimedLoop(config, runtime=LocalRuntime(Path(tmp) / "run", num_to_keep=1))
        loop.pushes = record
        pusher = threading.Thread(target=_pusher, args=(loop, store, manifest, samples))
        try:
            loop.setup()
            loop.restore()
            pusher.start()
            loop.run()
        finally:
            record.done.set()
            loop.cleanup()
            pusher.join()
            for info in record.shards:
                store.delete(info)
        streamed = loop.reader.streamed
    print(f"{samples:,} ({'streamed' if streamed else 'resident'}): {record.latency}")
    return [record.latency[i] for i in sorted(record.latency)]


def report(results: dict[tuple[str, int], list[float]], timeout: float, write: bool) -> None:
    rows = []
    for (name, samples), lat in results.items():
        missed = sum(1 for x in lat if x >= timeout)
        p95 = sorted(lat)[max(0, round(0.95 * len(lat)) - 1)]
        rows.append(
            [
                name,
                f"{samples:,}",
                "streamed" if samples * (4 * FEATURES + 8) > BUDGET else "resident",
                f"{statistics.median(lat):.3f}",
                f"{p95:.3f}",
                f"{max(lat):.3f}" + (f" ({missed} at the {timeout:g} s limit)" if missed else ""),
                "yes" if max(lat) <= 2.0 else "no",
            ]
        )
    default = [x for (name, _), lat in results.items() if name == "default" for x in lat]
    verdict = ("met" if max(default) <= 2.0 else "MISSED") if default else "not run"
    headers = ["replay", "history", "reader", "median s", "p95 s", "max s", "all ≤ 2 s"]
    body = table(headers, rows) + (
        f"\n\n{len(next(iter(results.values())))} pushes of {PUSH} samples per row; seconds from "
        "the push's answer to the end of the first optimizer step on one of its samples. "
        f"Target: ≤ 2 s for the default (`ReplaySpec()`) at both history sizes: {verdict}. The "
        "other rows show why it is the default."
    )
    if write:
        write_section("freshness", "Freshness: a push to its first training step", body)
    else:
        print(body)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--pushes", type=int, default=None, help="pushes per row (10)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds a push waits at most")
    parser.add_argument("--variants", nargs="*", default=None, help=", ".join(VARIANTS))
    parser.add_argument("--write", action="store_true", help="write the table even with --quick")
    args = parser.parse_args(argv)
    set_threads(1)
    pushes = args.pushes or (5 if args.quick else 10)
    sizes = (10_000, 1_000_000 if args.quick else 10_000_000)
    names = args.variants or list(VARIANTS)
    results = {}
    for name in names:
        for samples in sizes:
            results[(name, samples)] = run_one(samples, VARIANTS[name], pushes, args.timeout)
    report(results, args.timeout, write=args.write or not args.quick)


if __name__ == "__main__":
    main()
