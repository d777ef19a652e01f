"""Serving that scales a little: concurrent predictions share forward passes, a model is read once
while cached, and the cache is bounded."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from service.jobs.spec import validate_job_spec
from service.runtime.batching import MicroBatcher
from service.runtime.serving import ModelServer
from service.state.store import RedisStore
from tests.service.conftest import JOB_SPEC
from workers.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from workers.models import build_model
from workers.spec import OptimizerSpec


def test_concurrent_calls_share_forward_passes_and_get_their_own_rows() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3).eval()
    sizes: list[int] = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        sizes.append(len(x))
        time.sleep(0.05)  # a slow model: calls pile up behind it
        return model(x)

    batcher = MicroBatcher(forward, window_s=0.01)
    inputs = [torch.randn(i + 1, 4) for i in range(12)]
    start = threading.Barrier(12)

    def call(x: torch.Tensor) -> torch.Tensor:
        start.wait()
        return batcher(x)

    with ThreadPoolExecutor(12) as pool:
        outputs = list(pool.map(call, inputs))
    assert batcher.calls == 12 and sum(sizes) == sum(len(x) for x in inputs)
    assert batcher.passes == len(sizes) < 6  # 12 calls, a few passes
    with torch.no_grad():
        for x, out in zip(inputs, outputs, strict=True):
            torch.testing.assert_close(out, model(x), rtol=0, atol=1e-6)


def test_a_failing_pass_fails_each_of_its_calls_and_the_next_pass_runs() -> None:
    def forward(x: torch.Tensor) -> torch.Tensor:
        if (x < 0).any():
            raise ValueError("negative input")
        return x * 2

    batcher = MicroBatcher(forward, window_s=0.0, max_rows=1)
    with pytest.raises(ValueError, match="negative input"):
        batcher(-torch.ones(1, 2))
    torch.testing.assert_close(batcher(torch.ones(1, 2)), 2 * torch.ones(1, 2))


def _generation(store: RedisStore, job_id: str, generation: int, folder: Path) -> Path:
    spec = validate_job_spec(JOB_SPEC, max_workers=4)
    torch.manual_seed(generation)
    model = build_model(spec.model, spec.task)
    meta = CheckpointMeta(job_id=job_id, task=spec.task, model=spec.model,
                          optimizer=OptimizerSpec(), step=10 * generation, generation=generation,
                          generation_step=0, samples_seen=0, passes=1, manifest_version=1,
                          dataset_size=10, param_count=0, world_size=1)  # fmt: skip
    path = save_checkpoint(folder / f"gen{generation}", model=model, optimizer=None, meta=meta)
    record = {"generation": generation, "parent": generation - 1 if generation else None,
              "op": None, "reason": "test", "policy": "test", "started_step": 0,
              "param_count": 0, "checkpoint": str(path), "checkpoint_step": 10 * generation}  # fmt: skip
    store.client.hset(store.keys.generations(job_id), str(generation), json.dumps(record))
    return path


@pytest.mark.integration
def test_a_model_is_read_once_served_in_batches_and_evicted_by_the_bound(
    store: RedisStore, tmp_path: Path
) -> None:
    spec = validate_job_spec(JOB_SPEC, max_workers=4)
    job = store.create_job(spec, max_jobs=100, param_count=0)
    paths = [_generation(store, job.id, g, tmp_path) for g in range(3)]
    serving = ModelServer(store, str(tmp_path), cache_size=2, batch_window_s=0.02)
    x = np.random.default_rng(0).standard_normal((32, 8)).astype(np.float32)
    start = threading.Barrier(16)

    def predict(i: int) -> list[list[float]]:
        start.wait()
        return serving.predict(job.id, x[2 * i : 2 * i + 2], 0)["probabilities"]

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(predict, range(16)))
    assert serving.loads == 1  # sixteen concurrent first calls, one read
    loaded = serving.load(str(paths[0]))
    assert serving.batcher(loaded).calls == 16 and serving.batcher(loaded).passes < 16
    with torch.no_grad():
        expected = torch.softmax(load_checkpoint(paths[0]).model(torch.from_numpy(x)), dim=-1)
    torch.testing.assert_close(torch.tensor(answers).reshape(32, 4), expected, rtol=0, atol=1e-6)
    for generation in (1, 2, 0):  # a third model evicts the least recently used
        serving.predict(job.id, x[:1], generation)
    assert serving.loads == 4 and len(serving._cache) == 2
    assert list(serving._cache) == [str(paths[2]), str(paths[0])]
