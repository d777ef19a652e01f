"""A real API server per test: uvicorn on a free loopback port (a real socket), a real Redis under the
test's own key prefix, and a temporary data root."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvicorn

from service.api.app import create_app
from service.client import LifelongClient
from service.local.processes import free_port
from service.settings import Settings
from service.state.store import RedisStore

JOB_SPEC: dict[str, Any] = {
    "name": "digits",
    "task": {"kind": "classification", "input_shape": [8], "num_classes": 4},
    "model": {"family": "mlp", "hidden": [16]},
    "val_fraction": 0.25,
}


@dataclass
class LiveServer:
    url: str
    settings: Settings
    server: uvicorn.Server

    @property
    def data_root(self) -> Path:
        return Path(self.settings.data_root_uri)

    def shard_files(self, job_id: str) -> list[Path]:
        folder = self.data_root / job_id / "shards"
        return sorted(folder.glob("*.safetensors")) if folder.exists() else []

    def leftover_files(self, job_id: str) -> list[Path]:
        """Everything under the job's folder (temporary files included)."""
        folder = self.data_root / job_id
        return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@contextmanager
def live_server(settings: Settings) -> Iterator[LiveServer]:
    port = free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield LiveServer(url=f"http://127.0.0.1:{port}", settings=settings, server=server)
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture
def settings(redis_url: str, redis_prefix: str, tmp_path: Path) -> Settings:
    return Settings(
        redis_url=redis_url,
        key_prefix=redis_prefix,
        data_root=str(tmp_path / "data"),
        state_dir=tmp_path / "state",
        sse_keepalive_s=0.3,
        max_push_bytes=4 << 20,
        max_request_bytes=64 << 10,
        max_samples_per_push=5000,
        max_jobs=20,
        supervise=False,  # these tests exercise the control plane alone, without Ray
        auth="disabled",  # on loopback; tests/service/test_access.py is about keys
    )


@pytest.fixture
def server(settings: Settings) -> Iterator[LiveServer]:
    with live_server(settings) as live:
        yield live


@pytest.fixture
def client(server: LiveServer) -> Iterator[LifelongClient]:
    with LifelongClient(server.url, timeout=30, retries=0) as c:
        yield c


@pytest.fixture
def store(settings: Settings) -> Iterator[RedisStore]:
    """Direct access to the server's Redis state (as the supervisor has it)."""
    assert settings.redis_url is not None
    s = RedisStore(settings.redis_url, settings.key_prefix)
    yield s
    s.close()


def batch(
    n: int, features: int = 8, classes: int = 4, *, seed: int = 0, start: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` distinct samples: feature 0 holds the sample's global index ``start + i``."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, features)).astype(np.float32)
    x[:, 0] = np.arange(start, start + n, dtype=np.float32)
    y = rng.integers(0, classes, n)
    return x, y
