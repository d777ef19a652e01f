"""The sweeper logs what finished jobs left in their MLflow outbox: against a real Redis and a real
MLflow server, and against a port where no MLflow answers."""

from __future__ import annotations

import pytest

from service.jobs.spec import validate_job_spec
from service.local.processes import MlflowServer, free_port
from service.runtime.sweeper import OutboxSweeper
from service.runtime.tracking import GENERATION_TAG, MlflowTracker
from service.state.states import JobStatus
from service.state.store import RedisStore
from tests.service.conftest import JOB_SPEC

pytestmark = pytest.mark.integration


def _job_with_ops(store: RedisStore, status: JobStatus | None) -> str:
    """A job with 7 MLflow operations queued: its run opened, 5 metric points, the run closed."""
    job = store.create_job(validate_job_spec(JOB_SPEC, max_workers=4), max_jobs=100, param_count=1)
    tracker = MlflowTracker.for_job(
        store.client, store.keys, job_id=job.id, job_name=job.name,
        tracking_uri="unused: producers never call MLflow",
    )  # fmt: skip
    tracker.open_generation(0, parent=None, step=0, tags={"lifelong.op": "base"})
    for step in range(10, 60, 10):
        tracker.log_metrics(0, step, {"train_loss": 1.0 / step})
    tracker.close_generation(0)
    if status is not None:
        reasons = {JobStatus.STOPPED: "stopped by command", JobStatus.FAILED: "worker error"}
        store.set_status(job.id, status, reasons.get(status))
    return job.id


def _pending(store: RedisStore, job_id: str) -> int:
    return int(store.client.llen(store.keys.mlflow_outbox(job_id)))


def test_finished_jobs_outboxes_are_logged_once_mlflow_answers(
    store: RedisStore, mlflow_server: MlflowServer
) -> None:
    from mlflow.tracking import MlflowClient

    stopped = _job_with_ops(store, JobStatus.STOPPED)
    training = _job_with_ops(store, JobStatus.TRAINING)  # its supervisor drains it, not us
    closing = _job_with_ops(store, JobStatus.FAILED)
    assert store.acquire_lease(closing, "supervisor-1", 60_000)  # its supervisor is closing it

    # MLflow does not answer: nothing is lost, the failure is recorded, the lease is let go.
    away = OutboxSweeper(store, f"http://127.0.0.1:{free_port()}")
    assert [j.id for j in away.waiting()] == [stopped, closing]
    assert away.sweep_once() == {stopped: 0}
    assert _pending(store, stopped) == 7
    status = MlflowTracker.for_job(
        store.client, store.keys, job_id=stopped, job_name="digits",
        tracking_uri=mlflow_server.url,
    ).status()  # fmt: skip
    assert status.pending == 7 and status.last_error and status.failing_since is not None
    assert store.lease_owner(stopped) is None

    # MLflow is back: the stopped job's operations are logged, in order, once.
    sweeper = OutboxSweeper(store, mlflow_server.url)
    assert sweeper.sweep_once() == {stopped: 7}
    assert _pending(store, stopped) == 0 and store.lease_owner(stopped) is None
    assert _pending(store, training) == 7 and _pending(store, closing) == 7
    tracker = MlflowTracker.for_job(
        store.client, store.keys, job_id=stopped, job_name="digits",
        tracking_uri=mlflow_server.url,
    )  # fmt: skip
    assert tracker.status().last_error is None and tracker.status().failing_since is None
    client = MlflowClient(tracking_uri=mlflow_server.url)
    experiment = client.get_experiment_by_name(f"lifelong/digits-{stopped}")
    assert experiment is not None
    run = client.get_run(tracker.run_ids()[0])
    assert run.info.experiment_id == experiment.experiment_id
    assert run.data.tags[GENERATION_TAG] == "0" and run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(s, 1.0 / s) for s in range(10, 60, 10)]
    assert sweeper.sweep_once() == {}  # nothing left but the job that is still leased

    # Once its supervisor lets go, the failed job's operations follow.
    assert store.release_lease(closing, "supervisor-1")
    assert sweeper.sweep_once() == {closing: 7}
    assert [j.id for j in sweeper.waiting()] == []
    assert store.delete_job(stopped) == JobStatus.STOPPED  # nothing waits for MLflow any more
