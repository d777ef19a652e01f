"""The train loop on a real local Ray cluster with 2 workers (no mocks).

1. Data arrives in 3 stages while training; a scripted widen and deepen happen mid-run; the
   validation loss before and after each growth agrees to 1e-5; the ranks hold identical
   parameters; training goes on and the loss falls.
2. A worker process is killed (SIGKILL) mid-run; the run resumes from the last checkpoint with the
   same generation and architecture, and the step counter never goes back past the checkpoint.

The test process is the data source: it appends shards to a ``FileManifest`` and reads the loop's
events from a ``JsonlRecorder`` file.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from growth_policy.types import GrowthOp
from workers.checkpoint import load_checkpoint, read_meta
from workers.loop import WorkerConfig
from workers.runner import TrainerSettings, run_trainer
from workers.shards import FileManifest, ShardStore
from workers.sources import JsonlRecorder, ScriptedAction, ScriptedSource, read_jsonl
from workers.spec import ComputeSpec, ModelSpec, TaskSpec
from workers.tasks import evaluate

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TASK = TaskSpec(kind="classification", input_shape=(64,), num_classes=10)
MODEL = ModelSpec(family="mlp", hidden=[32])
PARAMS = {0: 64 * 32 + 32 + 32 * 10 + 10}  # 2,410
PARAMS[1] = 64 * 64 + 64 + 64 * 10 + 10  # widened ×2: 4,810
PARAMS[2] = PARAMS[1] + 64 * 64 + 64  # deepened after act1: 8,970


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    """One local Ray instance for this module, in its own temp dir (never `ray stop`)."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.2"
    started = False
    temp = tempfile.mkdtemp(prefix="rwk-", dir="/tmp")  # short: Ray's socket paths
    if not ray.is_initialized():
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            _temp_dir=temp,
            object_store_memory=200 * 1024 * 1024,
        )
        started = True
    yield
    if started:
        ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype(np.float32), y.astype(np.int64)


@dataclass
class Job:
    root: Path
    store: ShardStore
    manifest: FileManifest
    events: Path
    stop_file: Path

    def records(self, kind: str | None = None) -> list[dict[str, Any]]:
        out = read_jsonl(self.events)
        return [r for r in out if kind is None or r["type"] == kind]

    def wait_for(
        self, what: str, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 120
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            records = self.records()
            if predicate(records):
                return records
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; last records: {self.records()[-5:]}")

    def push(self, x: np.ndarray, y: np.ndarray, split: str = "train") -> int:
        info = self.store.write("job", x, y, split)  # type: ignore[arg-type]
        return self.manifest.append([info]).version


def _job(tmp_path: Path) -> Job:
    return Job(
        root=tmp_path,
        store=ShardStore(str(tmp_path / "data")),
        manifest=FileManifest(tmp_path / "manifest", "job"),
        events=tmp_path / "events.jsonl",
        stop_file=tmp_path / "stop",
    )


def _start(job: Job, actions: list[ScriptedAction], **settings: Any) -> Future[Any]:
    source = JsonlRecorder(ScriptedSource(actions, stop_file=str(job.stop_file)), job.events)
    worker = WorkerConfig(
        job_id="job",
        task=TASK,
        model=MODEL,
        store_root=str(job.store.root),
        manifest=job.manifest,
        source=source,
        batch_size=settings.pop("batch_size", 16),
        observe_every=20,
        checkpoint_every=settings.pop("checkpoint_every", 100),
        poll_interval=0.2,
        seed=0,
        compute=ComputeSpec(idle_when_converged=False),  # scripted by step: never wait
    )
    trainer = TrainerSettings(
        worker=worker,
        num_workers=2,
        resources_per_worker={"CPU": 1},
        storage_path=str(job.root / "ray"),
        **settings,
    )
    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(run_trainer, trainer)
    pool.shutdown(wait=False)
    return future


def _finish(job: Job, future: Future[Any], timeout: float = 240) -> Any:
    """The run's result; on any failure, stop the loop through its stop file first."""
    try:
        return future.result(timeout=timeout)
    except BaseException:
        job.stop_file.touch()
        raise


def _collapse(states: list[str]) -> list[str]:
    return [s for i, s in enumerate(states) if i == 0 or states[i - 1] != s]


def test_stages_growth_and_identical_ranks(
    ray_cluster: None, digits: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    x, y = digits
    val = (x[1500:], y[1500:])  # 297 samples
    stages = [(x[i : i + 500], y[i : i + 500]) for i in (0, 500, 1000)]
    job = _job(tmp_path)
    widen = GrowthOp(op="widen", factor=2.0, seed=11)
    deepen = GrowthOp(op="deepen", after="act1", seed=12)
    started = time.monotonic()
    future = _start(
        job,
        [
            ScriptedAction(at_step=60, pause_until_dataset_version=2, reason="wait for stage 2"),
            ScriptedAction(at_step=100, op=widen, reason="scripted widen"),
            # A growth and a pause at the same step: the growth is reported before the pause.
            ScriptedAction(
                at_step=160, op=deepen, pause_until_dataset_version=3, reason="deepen and wait"
            ),
            ScriptedAction(at_step=300, stop=True, reason="done"),
        ],
    )
    try:
        # No data yet: the loop waits (without spinning) until the first stage arrives.
        job.wait_for(
            "waiting_for_data",
            lambda rs: any(r.get("state") == "waiting_for_data" for r in rs),
        )
        first_step_wait = time.monotonic() - started
        version = job.manifest.append(
            [job.store.write("job", *stages[0], "train"), job.store.write("job", *val, "val")]
        ).version
        assert version == 1
        for stage, expected_version in ((1, 2), (2, 3)):
            job.wait_for(
                f"pause before stage {stage + 1}",
                lambda rs, v=expected_version - 1: any(
                    r.get("state") == "paused" and r["dataset_version"] == v for r in rs
                ),
            )
            assert job.push(*stages[stage]) == expected_version
        result = _finish(job, future)
    except BaseException:
        job.stop_file.touch()
        raise
    assert result.error is None
    elapsed = time.monotonic() - started

    states = _collapse([r["state"] for r in job.records("status")])
    assert states == [
        "starting",
        "waiting_for_data",
        "training",
        "paused",
        "training",
        "paused",
        "training",
        "stopped",
    ]

    # Every stage is picked up: the dataset each observation saw, step by step.
    observations = job.records("observation")
    assert [o["step"] for o in observations] == list(range(20, 301, 20))
    sizes = {o["step"]: (o["dataset_version"], o["dataset_size"]) for o in observations}
    for step, (version, size) in sizes.items():
        expected = (1, 500) if step <= 60 else (2, 1000) if step <= 160 else (3, 1500)
        assert (version, size) == expected, step
    assert all(o["val_size"] == 297 for o in observations)
    assert [o["generation"] for o in observations] == [0] * 5 + [1] * 3 + [2] * 7
    assert [o["param_count"] for o in observations] == (
        [PARAMS[0]] * 5 + [PARAMS[1]] * 3 + [PARAMS[2]] * 7
    )
    assert observations[0]["summary"]["param_count"] == PARAMS[0]

    # The growths: at the scripted steps, function-preserving, identical on both ranks.
    growths = job.records("growth")
    assert [(g["step"], g["op"]["op"]) for g in growths] == [(100, "widen"), (160, "deepen")]
    # The deepen is reported before the pause that follows it at the same step (the pause is
    # what the grown model's first step would otherwise wait for), so it is untimed.
    order = [
        (r["type"], r.get("state")) for r in job.records() if r["type"] in ("growth", "status")
    ]
    deepened = order.index(("growth", None), order.index(("growth", None)) + 1)
    assert order[deepened + 1] == ("status", "paused"), order
    assert growths[0]["first_step_s"] is not None and growths[1]["first_step_s"] is None
    for g, gen in zip(growths, (1, 2), strict=True):
        assert (g["generation_before"], g["generation_after"]) == (gen - 1, gen)
        assert (g["params_before"], g["params_after"]) == (PARAMS[gen - 1], PARAMS[gen])
        assert abs(g["val_loss_after"] - g["val_loss_before"]) <= 1e-5
        assert g["val_metric_after"] == g["val_metric_before"]
        assert g["max_abs_error"] < 1e-5
        assert g["ranks_identical"] and len(g["rank_digests"]) == 2
        assert len(set(g["rank_digests"])) == 1
        assert g["pause_s"] >= g["transform_s"] > 0
        assert Path(g["closing_checkpoint"]["path"]).is_dir()
        opening = g["opening_checkpoint"]
        assert opening["durable"] and opening["generation"] == gen and opening["step"] == g["step"]
        assert read_meta(opening["path"]).param_count == PARAMS[gen]

    # Training goes on and the loss falls.
    first, last = observations[0], observations[-1]
    assert last["val_loss"] < 0.5 * first["val_loss"]
    assert last["train_loss"] < first["train_loss"]
    assert last["val_metric"] > 0.8

    # The final checkpoint rebuilds the grown model (base spec + 2 records) with the same outputs.
    final = [c for c in job.records("checkpoint") if c["kind"] == "final"]
    assert len(final) == 1 and final[0]["durable"] and final[0]["step"] == 300
    loaded = load_checkpoint(final[0]["path"])
    assert loaded.meta.generation == 2 and len(loaded.records) == 2
    assert [g.generation for g in loaded.meta.lineage] == [0, 1, 2]
    assert sum(p.numel() for p in loaded.model.parameters()) == PARAMS[2]
    val_loss, _ = evaluate(loaded.model, torch.from_numpy(val[0]), torch.from_numpy(val[1]), TASK)
    assert abs(val_loss - last["val_loss"]) <= 1e-6
    print(
        f"\nstages test: {elapsed:.1f} s in all, {first_step_wait:.1f} s from fit() to waiting "
        f"for data; growth pauses {[round(g['pause_s'], 3) for g in growths]} s"
    )


def test_a_killed_worker_resumes_from_the_last_checkpoint(
    ray_cluster: None, digits: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    x, y = digits
    job = _job(tmp_path)
    job.manifest.append(
        [
            job.store.write("job", x[:1500], y[:1500], "train"),
            job.store.write("job", x[1500:], y[1500:], "val"),
        ]
    )
    stop_at = 1600
    future = _start(
        job,
        [
            ScriptedAction(at_step=40, op=GrowthOp(op="widen", factor=2.0, seed=5)),
            ScriptedAction(at_step=stop_at, stop=True),
        ],
        checkpoint_every=40,
        max_failures=1,
    )
    try:
        records = job.wait_for(
            "a periodic checkpoint after the growth",
            lambda rs: any(r["type"] == "checkpoint" and r["step"] >= 160 for r in rs),
        )
        (starting,) = [r for r in records if r.get("state") == "starting"]
        victim = starting["detail"]["pids"][1]  # rank 1, a worker process on this machine
        seen = [r["step"] for r in records if r["type"] == "checkpoint" and r["kind"] != "close"]
        os.kill(victim, signal.SIGKILL)
        killed_at = time.time()
        result = _finish(job, future)
    except BaseException:
        job.stop_file.touch()
        raise
    assert result.error is None

    records = job.records()
    starts = [i for i, r in enumerate(records) if r.get("state") == "starting"]
    assert len(starts) == 2, "the worker group should have restarted once"
    restart = records[starts[1]]
    resumed = restart["detail"]["resumed_from"]
    assert victim not in restart["detail"]["pids"]
    assert resumed is not None
    # The resume point is the last checkpoint reported before the kill (or one reported while
    # the kill was on its way), after the growth, with its architecture.
    assert resumed["step"] in (max(seen), max(seen) + 40)
    assert (resumed["generation"], resumed["param_count"], resumed["records"]) == (1, PARAMS[1], 1)

    before, after = records[: starts[1]], records[starts[1] :]
    steps_after = [r["step"] for r in after if r["type"] in ("observation", "checkpoint")]
    assert min(steps_after) > resumed["step"]  # never back past the checkpoint
    obs_after = [r for r in after if r["type"] == "observation"]
    assert obs_after[0]["step"] == resumed["step"] + 20
    assert [o["step"] for o in obs_after] == list(range(resumed["step"] + 20, stop_at + 1, 20))
    assert {o["generation"] for o in obs_after} == {1}
    assert {o["param_count"] for o in obs_after} == {PARAMS[1]}
    # The widen is not repeated after the resume (the source's state came from the checkpoint).
    assert len([r for r in records if r["type"] == "growth"]) == 1
    before_obs = [r["step"] for r in before if r["type"] == "observation"]
    assert max(before_obs) >= resumed["step"]
    assert records[-1]["type"] == "status" and records[-1]["state"] == "stopped"
    assert records[-1]["step"] == stop_at
    print(
        f"\nkill test: resumed from step {resumed['step']} (last seen before the kill "
        f"{max(before_obs)}); {restart['wall_time'] - killed_at:.1f} s from the kill to the "
        "restarted loop"
    )
