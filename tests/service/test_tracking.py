"""The MLflow outbox: runs per generation, lineage, registered versions, and outages survived."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from service.local.processes import MlflowServer
from service.runtime.tracking import ALIAS, GENERATION_TAG, PARENT_TAG, MlflowTracker
from service.state.keys import Keys


@pytest.fixture
def tracker_factory(redis_url: str, redis_prefix: str) -> Iterator[type[MlflowTracker] | object]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    made: list[MlflowTracker] = []

    def make(tracking_uri: str) -> MlflowTracker:
        job = uuid.uuid4().hex[:8]
        tracker = MlflowTracker(
            client=client,
            keys=Keys(redis_prefix),
            job_id=job,
            experiment_name=f"lifelong-test-{job}",
            model_name=f"lifelong-test-{job}",
            tracking_uri=tracking_uri,
        )
        made.append(tracker)
        return tracker

    yield make
    for tracker in made:
        tracker.stop()
    client.close()


def _checkpoint(tmp_path: Path, generation: int) -> Path:
    folder = tmp_path / f"gen-{generation}"
    folder.mkdir()
    (folder / "meta.json").write_text(f'{{"generation": {generation}}}')
    return folder


@pytest.mark.integration
@pytest.mark.slow
def test_generations_lineage_and_latest_alias(
    mlflow_server: MlflowServer, tracker_factory, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from mlflow.tracking import MlflowClient

    tracker: MlflowTracker = tracker_factory(mlflow_server.url)
    for gen in range(3):
        tracker.open_generation(
            gen, parent=gen - 1 if gen else None, step=100 * gen,
            tags={"lifelong.op": "widen" if gen else "base"}, params={"param_count": 10 ** (gen + 3)},
        )  # fmt: skip
        for step in range(100 * gen, 100 * gen + 3):
            tracker.log_metrics(gen, step, {"train_loss": 1.0 / (step + 1), "val_metric": 0.5})
        tracker.log_artifacts(gen, str(_checkpoint(tmp_path, gen)), "checkpoint")
        tracker.register(gen, "checkpoint")
        if gen:
            tracker.close_generation(gen - 1)
    while tracker.drain_once():
        pass
    assert tracker.status().pending == 0

    client = MlflowClient(tracking_uri=mlflow_server.url)
    runs = tracker.run_ids()
    assert sorted(runs) == [0, 1, 2]
    for gen, run_id in runs.items():
        run = client.get_run(run_id)
        assert run.data.tags[GENERATION_TAG] == str(gen)
        assert run.data.params["param_count"] == str(10 ** (gen + 3))
        if gen:
            assert run.data.tags[PARENT_TAG] == runs[gen - 1]
        history = client.get_metric_history(run_id, "train_loss")
        assert [m.step for m in history] == [100 * gen, 100 * gen + 1, 100 * gen + 2]
        artifacts = [a.path for a in client.list_artifacts(run_id, "checkpoint")]
        assert artifacts == ["checkpoint/meta.json"]
    assert client.get_run(runs[0]).info.status == "FINISHED"
    assert client.get_run(runs[2]).info.status == "RUNNING"
    versions = tracker.model_versions()
    assert sorted(versions) == [0, 1, 2]
    latest = client.get_model_version_by_alias(tracker.model_name, ALIAS)
    assert latest.version == versions[2]
    assert latest.run_id == runs[2]
    for gen, version in versions.items():
        assert (
            client.get_model_version_by_alias(tracker.model_name, f"generation-{gen}").version
            == version
        )


@pytest.mark.integration
@pytest.mark.slow
def test_outage_queues_then_backfills(tracker_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from mlflow.tracking import MlflowClient

    server = MlflowServer(workdir=tmp_path / "mlflow").start()
    try:
        tracker: MlflowTracker = tracker_factory(server.url)
        tracker.start()
        tracker.open_generation(0, parent=None, step=0)
        tracker.log_metrics(0, 0, {"train_loss": 2.0})
        assert tracker.flush(timeout=30)

        server.stop()  # the outage
        started = time.monotonic()
        for step in range(1, 51):
            assert tracker.log_metrics(0, step, {"train_loss": 2.0 - step / 100})
        tracker.open_generation(1, parent=0, step=50)
        tracker.log_metrics(1, 51, {"train_loss": 1.4})
        # Producing never waited on the dead server.
        assert time.monotonic() - started < 2.0
        time.sleep(3)
        status = tracker.status()
        assert status.pending >= 52
        assert status.last_error is not None and status.failing_since is not None

        server.start()  # same port, same SQLite store
        assert tracker.flush(timeout=90), tracker.status()
        client = MlflowClient(tracking_uri=server.url)
        runs = tracker.run_ids()
        history = client.get_metric_history(runs[0], "train_loss")
        assert [m.step for m in history] == list(range(51))
        assert client.get_metric_history(runs[1], "train_loss")[0].value == pytest.approx(1.4)
        assert tracker.status().last_error is None
        assert tracker.status().dropped == 0
    finally:
        server.stop()


@pytest.mark.integration
def test_bound_drops_metrics_but_never_runs(tracker_factory) -> None:  # type: ignore[no-untyped-def]
    tracker: MlflowTracker = tracker_factory("http://127.0.0.1:9")  # nothing listens there
    tracker.max_ops = 3
    tracker.open_generation(0, parent=None, step=0)
    assert tracker.log_metrics(0, 1, {"a": 1.0})
    assert tracker.log_metrics(0, 2, {"a": 1.0})
    assert not tracker.log_metrics(0, 3, {"a": 1.0})  # the bound
    tracker.close_generation(0)  # never dropped
    assert tracker.status().pending == 4
    assert tracker.status().dropped == 1


@pytest.mark.integration
@pytest.mark.slow
def test_metrics_before_the_open_operation_still_land_with_lineage(
    mlflow_server: MlflowServer, tracker_factory
) -> None:  # type: ignore[no-untyped-def]
    from mlflow.tracking import MlflowClient

    tracker: MlflowTracker = tracker_factory(mlflow_server.url)
    tracker.open_generation(0, parent=None, step=0)
    tracker.log_metrics(1, 10, {"train_loss": 0.5})  # generation 1 is not open yet
    tracker.open_generation(1, parent=0, step=10, tags={"lifelong.op": "widen"},
                            params={"param_count": "42"})  # fmt: skip
    while tracker.drain_once():
        pass
    runs = tracker.run_ids()
    client = MlflowClient(tracking_uri=mlflow_server.url)
    run = client.get_run(runs[1])
    assert run.data.tags["lifelong.op"] == "widen"
    assert run.data.tags[PARENT_TAG] == runs[0]
    assert run.data.params["param_count"] == "42"
    assert [m.value for m in client.get_metric_history(runs[1], "train_loss")] == [0.5]
