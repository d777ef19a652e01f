"""The cluster topology without Docker: two Ray nodes, Redis with AOF, MLflow on PostgreSQL, the API.

One job with two workers lands on both nodes, grows, is tracked in the PostgreSQL-backed MLflow
server; then the second node is stopped, and the job goes on from its checkpoint on the node that
is left (elastic scaling, ``scaling.min_workers``), saying so in its status.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deploy.local_cluster import cluster
from service.client import LifelongClient
from service.local.stack import Stack
from tests.e2e.conftest import digits_job, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = cluster(
        Path(tmp_path_factory.mktemp("cluster")),
        cpus_per_node=1,
        node_memory=3 * 1024**3,
        api_env={"LIFELONG_OBSERVE_EVERY": "25", "LIFELONG_CHECKPOINT_EVERY": "100"},
    )
    with stack:
        yield stack


def _starts(client: LifelongClient, job_id: str) -> list[dict[str, Any]]:
    return [
        e.data
        for e in client.events(job_id, follow=False)
        if e.type == "status" and e.data.get("loop") == "starting"
    ]


def test_two_nodes_growth_postgres_tracking_and_node_loss(
    local_cluster: Stack, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    stack = local_cluster
    assert stack.api is not None and stack.mlflow is not None and stack.database is not None
    nodes = stack.alive_ray_nodes()
    assert len(nodes) == 2
    head_node = nodes  # the head is one of them; which one is asked below
    x, y = digits
    spec = digits_job("cluster-digits", workers=2)
    spec["scaling"] = {"num_workers": 2, "min_workers": 1, "cpus_per_worker": 1}
    spec["growth"] = {"policies": ["manual"]}
    spec["compute"] = {"idle_when_converged": False}  # training must go on through the node loss
    with LifelongClient(stack.api.url, api_key=stack.admin_key) as client:
        job = client.create_job(spec)
        client.push(job.id, x[:1200], y[:1200])

        # Both workers run, one on each node (two nodes on one host share an IP, not a node id).
        start = wait_until(lambda: _starts(client, job.id), timeout=180, what="the workers")[0]
        assert start["world_size"] == 2
        assert sorted(start["node_ids"]) == sorted(nodes)

        command = client.grow(job.id, "widen", factor=2)
        assert client.wait_command(job.id, command.id, timeout=120).status == "done"
        # Both runs; generation 0's closing release (generation 1 has one once it improves).
        wait_until(
            lambda: all(g.mlflow_run_id and (g.model_version or g.generation == 1)
                        for g in client.generations(job.id).generations),
            timeout=120, what="both generations in MLflow",
        )  # fmt: skip
        generations = client.generations(job.id).generations
        assert [g.generation for g in generations] == [0, 1]

        # The runs are in PostgreSQL, in the database this cluster's MLflow server owns.
        import psycopg2

        conn = psycopg2.connect(f"{stack.postgres_dsn}/{stack.database}")
        with conn, conn.cursor() as cur:
            cur.execute("SELECT run_uuid FROM runs")
            stored = {row[0] for row in cur.fetchall()}
        conn.close()
        assert {g.mlflow_run_id for g in generations} <= stored

        # Lose the second node: the job resumes on the head from its last checkpoint.
        step_before = client.get_job(job.id).metrics["step"]
        stack.stop_node(1)
        survivors = set(wait_until(lambda: (n := stack.alive_ray_nodes()) and len(n) == 1 and n,
                                   timeout=120, what="the node to be gone"))  # fmt: skip
        assert survivors < set(head_node)

        def resumed() -> dict[str, Any] | None:
            later = [s for s in _starts(client, job.id) if s.get("resumed_from")]
            return later[-1] if later else None

        try:
            restart = wait_until(resumed, timeout=240, what="the job to resume on the head node")
        except AssertionError:
            said = [e.data for e in client.events(job.id, follow=False) if e.type == "status"]
            raise AssertionError(f"no resume; statuses: {said[-6:]}") from None
        assert restart["world_size"] == 1
        assert set(restart["node_ids"]) == survivors
        assert restart["resumed_from"]["generation"] == 1
        job_now = wait_until(
            lambda: (j := client.get_job(job.id)).metrics.get("step", 0) > step_before and j,
            timeout=120, what="training to go on",
        )  # fmt: skip
        assert job_now.generation == 1
        statuses = [
            e.data for e in client.events(job.id, follow=False) if e.type == "status"
            and "status" in e.data
        ]  # fmt: skip
        said = [s.get("reason") or "" for s in statuses]
        assert any("restarted" in r and "resumed from the checkpoint" in r for r in said), said
        stop = client.stop(job.id)
        assert client.wait_command(job.id, stop.id, timeout=120).status == "done"
