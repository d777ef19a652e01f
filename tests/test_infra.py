"""The real parts are reachable from the test suite."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest
import redis

from service.local.processes import MlflowServer, free_port
from tests.conftest import delete_prefix


@pytest.mark.integration
def test_redis_roundtrip_under_own_prefix(redis_client: redis.Redis, redis_prefix: str) -> None:
    neighbour = f"lifelong-test:{uuid.uuid4().hex[:12]}:kept"
    redis_client.set(neighbour, b"not mine to delete")
    try:
        redis_client.set(f"{redis_prefix}a", b"1")
        redis_client.hset(f"{redis_prefix}h", mapping={"x": "2"})
        assert redis_client.get(f"{redis_prefix}a") == b"1"
        assert redis_client.hget(f"{redis_prefix}h", "x") == b"2"
        assert delete_prefix(redis_client, redis_prefix) == 2
        assert redis_client.exists(f"{redis_prefix}a", f"{redis_prefix}h") == 0
        assert redis_client.get(neighbour) == b"not mine to delete"
    finally:
        redis_client.delete(neighbour)


@pytest.mark.integration
@pytest.mark.slow
def test_mlflow_server_logs_and_reads_back(mlflow_server: MlflowServer) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server.url)
    experiment_id = client.create_experiment(f"infra-{uuid.uuid4().hex[:8]}")
    run = client.create_run(experiment_id)
    for step, value in enumerate([0.9, 0.5, 0.25]):
        client.log_metric(run.info.run_id, "loss", value, step=step)
    client.set_terminated(run.info.run_id)

    history = client.get_metric_history(run.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(0, 0.9), (1, 0.5), (2, 0.25)]
    assert client.get_run(run.info.run_id).info.status == "FINISHED"


@pytest.mark.integration
@pytest.mark.slow
def test_mlflow_server_stops_by_pid(tmp_path) -> None:  # type: ignore[no-untyped-def]
    server = MlflowServer(workdir=tmp_path).start()
    assert server.proc is not None
    pid = server.proc.pid
    server.stop()
    assert server.proc.poll() is not None
    # The whole process group is gone: no worker of that server lingers.
    alive = subprocess.run(
        ["pgrep", "-g", str(pid)], capture_output=True, text=True, check=False
    ).stdout
    assert alive.strip() == ""


def test_cli_help_and_version() -> None:
    exe = [sys.executable, "-m", "service.client.cli"]
    help_out = subprocess.run([*exe, "--help"], capture_output=True, text=True, check=True).stdout
    assert "Lifelong" in help_out
    version_out = subprocess.run(
        [*exe, "--version"], capture_output=True, text=True, check=True
    ).stdout
    from service import __version__

    assert version_out.strip() == f"lifelong {__version__}"


def test_free_port_never_hands_out_a_port_twice() -> None:
    # Ray's head takes five of these at once; a repeat made it refuse to start.
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == 300
    assert all(1024 <= p <= 65535 for p in ports)
