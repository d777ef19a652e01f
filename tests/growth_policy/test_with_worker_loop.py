"""The default growth policy in the real worker loop, on a local Ray cluster, with staged data.

On a stream whose data grows in stages, the default policy grows at least once, and never during
the first pass over the first stage. The controller runs in the worker
(``workers.sources.ControllerSource``) with ``GrowthPolicyConfig()`` as it ships; the test process
pushes sklearn digits in three stages and reads the loop's events from a JSON-lines file.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_digits

from growth_policy import GrowthPolicyConfig
from growth_policy.types import Observation
from workers.loop import WorkerConfig
from workers.runner import TrainerSettings, run_trainer
from workers.shards import FileManifest, ShardStore
from workers.sources import (
    BaseSource,
    ControllerSource,
    Directive,
    GrowthEvent,
    JsonlRecorder,
    read_jsonl,
)
from workers.spec import ComputeSpec, ModelSpec, TaskSpec

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STAGES = (400, 800, 1500)  # cumulative training samples
STOP_AT = 700  # steps
TASK = TaskSpec(kind="classification", input_shape=(64,), num_classes=10)
MODEL = ModelSpec(
    family="mlp", hidden=[8]
)  # 610 parameters: below the data's target from the start


class StreamSource(BaseSource):
    """The job's controller, plus a stop at ``stop_at`` steps and at a stop file (for clean-up)."""

    def __init__(self, config: GrowthPolicyConfig, stop_at: int, stop_file: str) -> None:
        self.inner = ControllerSource(config, seed=0)
        self.stop_at = stop_at
        self.stop_file = stop_file

    def decide(self, observation: Observation) -> Directive:
        if observation.step >= self.stop_at or Path(self.stop_file).exists():
            return Directive(stop=True, reason="test done")
        return self.inner.decide(observation)

    def on_growth(self, event: GrowthEvent) -> None:
        self.inner.on_growth(event)

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    import ray
    import ray.cloudpickle

    # The source class lives in this test module, which the workers cannot import: send it by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.2"
    started = False
    if not ray.is_initialized():
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            _temp_dir=tempfile.mkdtemp(prefix="rgp-", dir="/tmp"),
            object_store_memory=200 * 1024 * 1024,
        )
        started = True
    yield
    if started:
        ray.shutdown()


def test_default_policy_grows_on_a_staged_stream_but_not_in_the_first_pass(
    ray_local: None, tmp_path: Path
) -> None:
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    y = y.astype(np.int64)
    store = ShardStore(str(tmp_path / "data"))
    manifest = FileManifest(tmp_path / "manifest", "job")
    events = tmp_path / "events.jsonl"
    stop_file = tmp_path / "stop"
    config = GrowthPolicyConfig()
    source = JsonlRecorder(StreamSource(config, STOP_AT, str(stop_file)), events)
    worker = WorkerConfig(
        job_id="job",
        task=TASK,
        model=MODEL,
        store_root=str(store.root),
        manifest=manifest,
        source=source,
        batch_size=16,
        observe_every=20,
        checkpoint_every=0,
        poll_interval=0.2,
        seed=0,
        compute=ComputeSpec(idle_when_converged=False),  # stages by step: never wait
    )
    trainer = TrainerSettings(
        worker=worker,
        num_workers=1,
        resources_per_worker={"CPU": 1},
        storage_path=str(tmp_path / "ray"),
    )
    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(run_trainer, trainer)
    pool.shutdown(wait=False)

    def observed_size() -> int:
        sizes = [r["dataset_size"] for r in read_jsonl(events) if r["type"] == "observation"]
        return max(sizes, default=0)

    def observed_step() -> int:
        return max((r["step"] for r in read_jsonl(events) if r["type"] == "observation"), default=0)

    try:
        first = store.write("job", x[: STAGES[0]], y[: STAGES[0]], "train")
        manifest.append([first, store.write("job", x[1500:], y[1500:], "val")])
        for (lo, hi), after_step in zip(
            ((STAGES[0], STAGES[1]), (STAGES[1], STAGES[2])), (200, 400), strict=True
        ):
            deadline = time.monotonic() + 240
            while observed_step() < after_step:
                assert future.running() or not future.done(), future.result()
                assert time.monotonic() < deadline, "the loop did not reach the step in time"
                time.sleep(0.1)
            manifest.append([store.write("job", x[lo:hi], y[lo:hi], "train")])
            # The stage must be seen before the next one lands: a fast loop could otherwise
            # pick up both in one pass, and the stage would never be observed on its own.
            while observed_size() < hi:
                assert future.running() or not future.done(), future.result()
                assert time.monotonic() < deadline, "the loop did not pick the stage up"
                time.sleep(0.05)
        result = future.result(timeout=300)
    except BaseException:
        stop_file.touch()
        raise
    assert result.error is None

    records = read_jsonl(events)
    observations = [r for r in records if r["type"] == "observation"]
    growths = [r for r in records if r["type"] == "growth"]
    directives, decided_at, last_step = [], [], 0
    for r in records:  # a directive line follows the observation it answered
        if r["type"] == "observation":
            last_step = r["step"]
        elif r["type"] == "directive" and r.get("op"):
            directives.append(r)
            decided_at.append(last_step)
    assert observations[-1]["step"] >= STOP_AT
    assert {o["dataset_size"] for o in observations} == set(STAGES)

    # The default policy grows at least once, and every growth the controller decided happened.
    assert len(growths) >= 1
    assert [g["step"] for g in growths] == decided_at
    # Never during the first pass over the first stage (400 samples at 16 per step: 25 steps).
    for g in growths:
        seen = max(o["samples_seen"] for o in observations if o["step"] <= g["step"])
        assert seen >= STAGES[0]
        assert g["step"] > STAGES[0] // 16
    # Each growth lands where the controller predicted and is function-preserving (shrink-and-
    # perturb, on by default when the data doubles, keeps the size and is not meant to be).
    for g, d in zip(growths, directives, strict=True):
        assert g["params_after"] == d["numbers"]["params_after"]
        if g["op"]["op"] == "shrink_perturb":
            assert g["params_after"] == g["params_before"]
            continue
        assert abs(g["val_loss_after"] - g["val_loss_before"]) <= 1e-5
        assert g["params_after"] <= config.guards.max_params
        assert "parameters" in d["reason"] and "→" in d["reason"]
    # Growth follows the data: never beyond the cap over the data-scaling target at that time.
    for g in growths:
        size = max(o["dataset_size"] for o in observations if o["step"] <= g["step"])
        assert g["params_after"] <= 2 * config.data_scaling.coefficient * size
    print(
        "\ngrowths: "
        + "; ".join(
            f"step {g['step']}: {d['reason']}" for g, d in zip(growths, directives, strict=True)
        )
    )
