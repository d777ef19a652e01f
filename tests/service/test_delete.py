"""DELETE /v1/jobs/{id} over real HTTP and a real Redis: what it refuses, what it removes, what it
keeps, and how a deletion cut short by a crash is finished at the next start."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.client import LifelongClient, LifelongError
from service.runtime.serving import ModelServer
from service.runtime.tracking import MlflowTracker
from service.settings import Settings
from service.state.keys import Keys
from service.state.states import JobStatus
from service.state.store import RedisStore, StoreError
from tests.service.conftest import JOB_SPEC, batch, live_server
from workers.checkpoint import run_name
from workers.shards import remove_tree


def _job_keys(store: RedisStore, job_id: str) -> list[str]:
    return sorted(
        str(k) for k in store.client.scan_iter(match=store.keys.job_pattern(job_id), count=1000)
    ) + ([store.keys.job(job_id)] if store.client.exists(store.keys.job(job_id)) else [])


def _fake_run_folder(settings: Settings, job_id: str) -> Path:
    """What Ray Train leaves for a job: its run folder with a checkpoint in it."""
    folder = Path(settings.ray_storage_uri) / run_name(job_id) / "checkpoint_000001"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights")
    return folder.parents[0]


def _refusal(call: object) -> LifelongError:
    with pytest.raises(LifelongError) as info:
        call()  # type: ignore[operator]
    return info.value


@pytest.mark.integration
def test_a_stopped_job_is_deleted_with_its_keys_and_files(
    settings: Settings, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"max_jobs": 2})
    with live_server(settings) as server, LifelongClient(server.url, retries=0) as client:
        store = RedisStore(str(settings.redis_url), settings.key_prefix)
        doomed, kept = client.create_job(JOB_SPEC), client.create_job(JOB_SPEC)
        for job in (doomed, kept):
            client.push(job.id, *batch(40, seed=1), idempotency_key="first")
            client.push(job.id, *batch(40, seed=2))
            client.grow(job.id, "widen", factor=2)
            store.client.hset(f"{store.keys.job(job.id)}:generations", "0", "{}")
        run_folder = _fake_run_folder(settings, doomed.id)
        assert _refusal(lambda: client.create_job(JOB_SPEC)).status_code == 409  # full

        # A job that may still train is never deleted.
        refused = _refusal(lambda: client.delete_job(doomed.id))
        assert refused.status_code == 409
        assert refused.detail == (
            f"job '{doomed.id}' is pending; only a stopped or failed job can be deleted: stop it "
            "first (POST /v1/jobs/{id}/stop) and delete it once its status is 'stopped'"
        )
        store.set_status(doomed.id, JobStatus.STOPPED, "stopped by command")
        # Its supervisor is still on its way out: it holds the lease.
        assert store.acquire_lease(doomed.id, "supervisor-1", 60_000)
        refused = _refusal(lambda: client.delete_job(doomed.id))
        assert refused.status_code == 409
        assert refused.detail == (
            f"job '{doomed.id}' is stopped, but its lease is held (by its supervisor closing the "
            "job, or by the API logging the job's last MLflow operations); retry in a few seconds"
        )
        assert store.release_lease(doomed.id, "supervisor-1")
        # MLflow was away when it stopped: two operations were never logged.
        store.client.rpush(store.keys.mlflow_outbox(doomed.id), "{}", "{}")
        refused = _refusal(lambda: client.delete_job(doomed.id))
        assert refused.status_code == 409
        assert refused.detail == (
            f"job '{doomed.id}' still has 2 MLflow operations waiting to be logged (the MLflow "
            "server was unreachable when it stopped); retry once MLflow answers, or delete with "
            "force=true to drop them"
        )
        assert client.get_job(doomed.id).status == JobStatus.STOPPED  # nothing was touched
        assert server.shard_files(doomed.id) and run_folder.exists()

        before = _job_keys(store, doomed.id)
        deleted = client.delete_job(doomed.id, force=True)
        assert deleted.job_id == doomed.id and deleted.status == JobStatus.STOPPED
        assert deleted.redis_keys == len(before) - 1  # every key but the job's hash
        assert deleted.data_removed and deleted.checkpoints_removed
        assert "MLflow experiment" in deleted.kept

        assert _job_keys(store, doomed.id) == []
        assert store.pending_deletions() == []
        assert not (server.data_root / doomed.id).exists() and not run_folder.exists()
        gone = _refusal(lambda: client.get_job(doomed.id))
        assert (gone.status_code, gone.detail) == (404, f"job '{doomed.id}' not found")
        assert _refusal(lambda: client.push(doomed.id, *batch(5))).status_code == 404
        assert _refusal(lambda: client.delete_job(doomed.id)).status_code == 404
        assert [j.id for j in client.list_jobs().jobs] == [kept.id]
        assert client.list_jobs().total == 1

        # The other job is whole, and the freed slot takes a new job.
        assert client.get_job(kept.id).dataset.samples == 80
        assert len(server.shard_files(kept.id)) == 4
        assert len(client.commands(kept.id)) == 1
        assert client.create_job(JOB_SPEC).status == JobStatus.PENDING
        store.close()


@pytest.mark.integration
def test_a_deletion_cut_short_is_finished_at_the_next_start(settings: Settings) -> None:
    with live_server(settings) as server, LifelongClient(server.url, retries=0) as client:
        job = client.create_job(JOB_SPEC)
        client.push(job.id, *batch(40))
    run_folder = _fake_run_folder(settings, job.id)
    store = RedisStore(str(settings.redis_url), settings.key_prefix)
    store.set_status(job.id, JobStatus.FAILED, "worker error")
    with pytest.raises(StoreError, match=f"job '{job.id}' exists; delete it first"):
        store.purge_job(job.id)  # only a deleted job's keys are ever purged
    # The API took the job out (the atomic step), then died before removing anything else.
    assert store.delete_job(job.id) == JobStatus.FAILED
    assert store.pending_deletions() == [job.id]
    assert _job_keys(store, job.id) and run_folder.exists()
    with live_server(settings) as server:
        assert _job_keys(store, job.id) == []
        assert store.pending_deletions() == []
        assert not (server.data_root / job.id).exists() and not run_folder.exists()
    store.close()


def test_key_names_and_patterns() -> None:
    keys = Keys("dep[1]*:")
    assert keys.job_pattern("job_ab") == r"dep\[1\]\*:job:{job_ab}:*"
    tracker = MlflowTracker(
        client=None,  # type: ignore[arg-type]
        keys=keys,
        job_id="job_ab",
        experiment_name="e",
        model_name="m",
        tracking_uri="sqlite://",
    )
    assert tracker.outbox_key == keys.mlflow_outbox("job_ab")
    assert tracker.info_key.startswith(keys.job("job_ab") + ":")


def test_remove_tree_takes_one_folder_name_only(tmp_path: Path) -> None:
    (tmp_path / "job_a" / "shards").mkdir(parents=True)
    (tmp_path / "job_a" / "shards" / "x.safetensors").write_bytes(b"x")
    for bad in ("", ".", "..", "a/b", "../job_a"):
        with pytest.raises(ValueError, match="not a folder name under the storage root"):
            remove_tree(str(tmp_path), bad)
    assert remove_tree(str(tmp_path), "job_a") is True
    assert not (tmp_path / "job_a").exists() and tmp_path.exists()
    assert remove_tree(str(tmp_path), "job_a") is False
    assert remove_tree(f"file://{tmp_path}", "job_b") is False


def test_a_deleted_jobs_cached_models_are_dropped() -> None:
    server = ModelServer(None, "/data")  # type: ignore[arg-type]  # the cache alone
    paths = [
        "/data/job_a/checkpoints/gen-0000-step-000000010",
        "/data/_ray/lifelong-job_a/gen-0001-step-000000200",
        "/data/job_b/checkpoints/gen-0000-step-000000010",
    ]
    for path in paths:
        server._cache[path] = object()  # type: ignore[assignment]
    server.forget("job_a")
    assert list(server._cache) == paths[2:]
