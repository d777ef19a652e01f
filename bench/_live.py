"""What the streaming benchmarks share: a worker loop in this process whose decision source is a
callback with the loop at hand, data pushed into a file manifest as the loop trains, and the
process's resident memory.

The loop is the real one (``workers.loop.TrainLoop`` on a ``LocalRuntime``, one rank); a push is a
shard written durably and appended to the manifest, as the service's ingest does it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from growth_policy.types import Observation
from workers.loop import TrainLoop, WorkerConfig
from workers.runtime import LocalRuntime
from workers.shards import FileManifest, Manifest, ShardStore
from workers.sources import BaseSource, Directive
from workers.spec import ComputeSpec, DataSpec, ModelSpec, OptimizerSpec, ReplaySpec, TaskSpec

JOB = "job"
FEATURES = 64
CLASSES = 10
TASK = TaskSpec(kind="classification", input_shape=(FEATURES,), num_classes=CLASSES)
SAMPLE_BYTES = 4 * FEATURES + 8


def rss_bytes() -> int:
    """This process's resident set size now (``VmRSS``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class Teacher:
    """A fixed random linear teacher: samples are Gaussian features, labels its argmax (learnable,
    and the same distribution at every push)."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.weights = rng.standard_normal((FEATURES, CLASSES)).astype(np.float32)

    def samples(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((n, FEATURES)).astype(np.float32)
        return x, (x @ self.weights).argmax(axis=1).astype(np.int64)


def push(
    store: ShardStore, manifest: FileManifest, x: np.ndarray, y: np.ndarray, split: str = "train"
) -> Manifest:
    """One durable shard, then its manifest entry (as ingest does)."""
    return manifest.append([store.write(JOB, x, y, split)])  # type: ignore[arg-type]


class Callback(BaseSource):
    """A decision source that hands every observation, with the loop, to ``decide``."""

    def __init__(self, decide: Callable[[TrainLoop, Observation], Directive]) -> None:
        self._decide = decide
        self.loop: TrainLoop | None = None

    def decide(self, observation: Observation) -> Directive:
        assert self.loop is not None
        return self._decide(self.loop, observation)


def worker_config(
    root: Path,
    source: BaseSource,
    *,
    replay: ReplaySpec | None = None,
    resident_bytes: int | None = None,
    batch_size: int = 128,
    observe_every: int = 50,
    seed: int = 0,
    hidden: int = 64,
    **extra: Any,
) -> WorkerConfig:
    data = DataSpec() if resident_bytes is None else DataSpec(resident_bytes=resident_bytes)
    return WorkerConfig(
        job_id=JOB,
        task=TASK,
        model=ModelSpec(family="mlp", hidden=[hidden, hidden]),
        optimizer=OptimizerSpec(name="adam", lr=1e-3),
        store_root=str(root / "data"),
        manifest=FileManifest(root / "manifest", JOB, poll_interval=0.01),
        source=source,
        batch_size=batch_size,
        observe_every=observe_every,
        checkpoint_every=0,
        checkpoint_root=str(root / "durable"),
        poll_interval=0.01,
        seed=seed,
        signals=False,
        compute=ComputeSpec(idle_when_converged=False),
        replay=replay or ReplaySpec(),
        data=data,
        **extra,
    )


def run(config: WorkerConfig, source: Callback, run_dir: Path) -> TrainLoop:
    """The loop to its stop, in this process; returns it (its reader, its progress)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    loop = TrainLoop(config, runtime=LocalRuntime(run_dir, num_to_keep=1))
    source.loop = loop
    try:
        loop.setup()
        loop.restore()
        loop.run()
    finally:
        loop.cleanup()
    return loop
