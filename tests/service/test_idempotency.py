"""Retries and concurrency over real HTTP: acknowledged pushes are stored exactly once."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from service.client import LifelongClient, encode_batch
from service.state.states import JobStatus
from service.state.store import RedisStore
from tests.service.conftest import JOB_SPEC, LiveServer, batch
from workers.shards import ShardStore

pytestmark = pytest.mark.integration


def stored_indices(server: LiveServer, store: RedisStore, job_id: str) -> list[int]:
    """Feature 0 of every stored sample (the batch() helper puts the sample's index there)."""
    shards = ShardStore(server.settings.data_root_uri)
    manifest = store.load_manifest(job_id)
    return sorted(
        int(v) for s in manifest.shards for v in shards.read(s, verify=True)[0][:, 0].tolist()
    )


def assert_disk_matches_manifest(server: LiveServer, store: RedisStore, job_id: str) -> None:
    listed = {s.path.rsplit("/", 1)[1] for s in store.load_manifest(job_id).shards}
    on_disk = {p.name for p in server.leftover_files(job_id)}  # temporary files included
    assert on_disk == listed


def test_retry_with_the_same_key_stores_one_shard_set(
    client: LifelongClient, server: LiveServer, store: RedisStore
) -> None:
    job = client.create_job(JOB_SPEC)
    body, content_type = encode_batch(*batch(300))
    headers = {"Content-Type": content_type, "Idempotency-Key": "push-0001"}
    url = f"{server.url}/v1/jobs/{job.id}/data"
    first = httpx.post(url, content=body, headers=headers)
    retries = [httpx.post(url, content=body, headers=headers) for _ in range(3)]
    assert first.status_code == 201 and "idempotent-replayed" not in first.headers
    for retry in retries:
        assert retry.status_code == 201
        assert retry.headers["idempotent-replayed"] == "true"
        assert retry.json() == first.json()
    manifest = store.load_manifest(job.id)
    assert manifest.version == 1
    assert [s.shard_id for s in manifest.shards] == first.json()["shard_ids"]
    assert len(server.shard_files(job.id)) == 2  # one train and one val shard, once
    assert_disk_matches_manifest(server, store, job.id)
    assert stored_indices(server, store, job.id) == list(range(300))


def test_concurrent_retries_with_one_key_store_once_and_leave_no_orphans(
    client: LifelongClient, server: LiveServer, store: RedisStore
) -> None:
    job = client.create_job(JOB_SPEC)
    body, content_type = encode_batch(*batch(2000))
    headers = {"Content-Type": content_type, "Idempotency-Key": "same-for-all"}
    barrier = threading.Barrier(8)

    def send(_: int) -> httpx.Response:
        barrier.wait()
        return httpx.post(
            f"{server.url}/v1/jobs/{job.id}/data", content=body, headers=headers, timeout=60
        )

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(send, range(8)))
    assert {r.status_code for r in responses} == {201}
    assert len({r.text for r in responses}) == 1
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in responses) == 7
    assert store.load_manifest(job.id).version == 1
    assert_disk_matches_manifest(server, store, job.id)  # the losers deleted their shard files
    assert stored_indices(server, store, job.id) == list(range(2000))


def test_eight_concurrent_clients_lose_and_duplicate_nothing(
    server: LiveServer, store: RedisStore
) -> None:
    clients = [LifelongClient(server.url, retries=0) for _ in range(8)]
    job = clients[0].create_job(JOB_SPEC)
    pushes_per_client, size = 12, 250
    formats = ["safetensors", "npz", "parquet", "json"]

    def pusher(k: int) -> list[int]:
        versions = []
        for i in range(pushes_per_client):
            start = (k * pushes_per_client + i) * size
            x, y = batch(size, start=start, seed=start)
            result = clients[k].push(job.id, x, y, format=formats[(k + i) % 4])  # type: ignore[arg-type]
            assert result.accepted == size
            versions.append(result.version)
        return versions

    with ThreadPoolExecutor(8) as pool:
        versions = [v for vs in pool.map(pusher, range(8)) for v in vs]
    total_pushes = 8 * pushes_per_client
    assert sorted(versions) == list(range(1, total_pushes + 1))  # every version exactly once
    summary = clients[0].get_job(job.id).dataset
    assert summary.version == total_pushes
    assert summary.samples == total_pushes * size
    assert stored_indices(server, store, job.id) == list(range(total_pushes * size))
    assert_disk_matches_manifest(server, store, job.id)
    for c in clients:
        c.close()


def test_retry_after_the_job_stopped_gets_the_original_answer(
    client: LifelongClient, server: LiveServer, store: RedisStore
) -> None:
    job = client.create_job(JOB_SPEC)
    x, y = batch(20)
    first = client.push(job.id, x, y, idempotency_key="before-stop")
    store.set_status(job.id, JobStatus.STOPPED)
    assert client.push(job.id, x, y, idempotency_key="before-stop") == first


def test_the_split_does_not_depend_on_the_format(
    client: LifelongClient, server: LiveServer, store: RedisStore
) -> None:
    x, y = batch(400)
    results = {}
    for fmt in ("safetensors", "npz", "parquet", "json"):
        job = client.create_job(dict(JOB_SPEC, name=fmt))
        results[fmt] = client.push(job.id, x, y, format=fmt)  # type: ignore[arg-type]
        val = [s for s in store.load_manifest(job.id).shards if s.split == "val"]
        shards = ShardStore(server.settings.data_root_uri)
        results[fmt + "-val"] = sorted(int(v) for v in shards.read(val[0])[0][:, 0])  # type: ignore[assignment]
    assert len({results[f].accepted_val for f in ("safetensors", "npz", "parquet", "json")}) == 1
    assert len({tuple(results[f + "-val"]) for f in ("safetensors", "npz", "parquet", "json")}) == 1  # type: ignore[arg-type]
    assert np.isclose(results["json"].accepted_val / 400, 0.25, atol=0.07)


def test_a_push_that_loses_the_race_deletes_its_shards(
    client: LifelongClient, server: LiveServer, store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two requests with one key both pass the first check; the second to commit keeps nothing."""
    from service.jobs.control import ControlPlane
    from service.settings import Settings
    from workers.shards import ShardStore as Shards

    job = client.create_job(JOB_SPEC)
    x, y = batch(100)
    first = client.push(job.id, x, y, idempotency_key="race")
    plane = ControlPlane(
        Settings(redis_url=store.url, key_prefix=store.prefix, supervise=False),
        store,
        Shards(server.settings.data_root_uri),
    )
    real_get_push = store.get_push
    calls: list[str] = []

    def first_check_misses(job_id: str, key: str) -> object:
        calls.append(key)  # the pre-check runs as if the first push had not committed yet
        return None if len(calls) == 1 else real_get_push(job_id, key)

    monkeypatch.setattr(store, "get_push", first_check_misses)
    body, content_type = encode_batch(x, y)
    outcome = plane.push(job.id, body, content_type, "race")
    assert outcome.replayed and len(calls) == 2  # the commit found the key and replayed
    assert outcome.record.model_dump() | {"job_id": job.id, "samples": 100} == first.model_dump()
    assert store.load_manifest(job.id).version == 1
    assert_disk_matches_manifest(server, store, job.id)
