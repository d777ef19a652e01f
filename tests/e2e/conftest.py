"""A whole Lifelong stack (Redis with AOF, Ray, MLflow server, API) shared by the e2e tests."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
from sklearn.datasets import load_digits

from service.client import LifelongClient
from service.local.stack import Stack

T = TypeVar("T")


def wait_until(
    check: Callable[[], T | None], *, timeout: float, what: str, every: float = 0.5
) -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = Path(tmp_path_factory.mktemp("stack"))
    stack = Stack(
        workdir=workdir,
        ray_nodes=1,
        cpus_per_node=4,  # logical CPUs: two ranks per job and room for a second job
        api_env={
            "LIFELONG_OBSERVE_EVERY": "25",
            "LIFELONG_CHECKPOINT_EVERY": "200",
            "LIFELONG_RECONCILE_INTERVAL_S": "5",
            "LIFELONG_KEY_PREFIX": f"lifelong-e2e-{os.getpid()}:",
        },
    )
    with stack:
        yield stack


@pytest.fixture
def client(stack: Stack) -> Iterator[LifelongClient]:
    assert stack.api is not None
    with LifelongClient(stack.api.url, api_key=stack.admin_key) as c:
        yield c


@pytest.fixture(scope="package")
def digits() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    return (x[order] / 16.0).astype(np.float32), y[order].astype(np.int64)


def digits_job(
    name: str, *, workers: int = 1, hidden: list[int] | None = None
) -> dict[str, object]:
    return {
        "name": name,
        "task": {"kind": "classification", "input_shape": [64], "num_classes": 10},
        "model": {"family": "mlp", "hidden": hidden or [16, 16]},
        "batch_size": 64,
        "scaling": {"num_workers": workers},
    }
