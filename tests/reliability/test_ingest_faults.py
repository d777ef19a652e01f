"""Faults on the ingest path: the API killed (SIGKILL) and Redis killed (SIGKILL, AOF on its own
port) while 8 clients push, and a manifest append whose answer is lost. What was acknowledged must
be in the manifest exactly once; what got no answer and is retried with its Idempotency-Key must
be stored exactly once. No Ray here: the ingest path does not touch it."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from service.client import LifelongClient, encode_batch
from service.local.processes import ApiServer, RedisServer
from service.settings import Settings
from service.state.store import RedisStore
from tests.reliability._support import (
    TINY_SPEC,
    Pushers,
    id_batch,
    ids_of,
    stored_ids,
    wait_until,
)
from tests.service.conftest import live_server
from workers.shards import ShardStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _check_exactly_once(
    store: RedisStore, shards: ShardStore, job_id: str, expected: list[int]
) -> list[int]:
    ids = stored_ids(store, shards, job_id)
    duplicates = [i for i, n in Counter(ids).items() if n > 1]
    assert not duplicates, f"{len(duplicates)} samples stored twice, e.g. {duplicates[:5]}"
    missing = sorted(set(expected) - set(ids))
    assert not missing, f"{len(missing)} acknowledged samples missing, e.g. {missing[:5]}"
    summary = store.dataset_summary(job_id)
    assert summary.train_samples + summary.val_samples == len(ids)
    return ids


def _api_env(redis_url: str, prefix: str, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFELONG_")}
    env.update(
        REDIS_URL=redis_url,
        LIFELONG_KEY_PREFIX=prefix,
        LIFELONG_DATA_ROOT=str(tmp_path / "data"),
        LIFELONG_STATE_DIR=str(tmp_path / "state"),
        LIFELONG_SUPERVISE="false",
        LIFELONG_AUTH="disabled",  # on loopback: keys are not what these faults are about
    )
    return env


def test_api_killed_during_concurrent_pushes(
    redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    env = _api_env(redis_url, redis_prefix, tmp_path)
    api = ApiServer(tmp_path / "api", env).start()
    store = RedisStore(redis_url, redis_prefix)
    shards = ShardStore(str(tmp_path / "data"))
    try:
        with LifelongClient(api.url) as client:
            job = client.create_job(TINY_SPEC)
        pushers = Pushers(api.url, job.id, count=8, size=20).start()
        wait_until(lambda: len(pushers.acknowledged) >= 40, timeout=30, what="40 pushes")
        api.kill()  # SIGKILL mid-traffic: some requests are cut halfway
        killed_with = len(pushers.pushes)
        time.sleep(1.0)
        api = ApiServer(tmp_path / "api", env, port=api.port).start()
        wait_until(
            lambda: len(pushers.acknowledged) > 0 and pushers.pushes[-1].status == 201,
            timeout=30,
            what="pushes to succeed again after the restart",
        )
        pushers.stop()

        acknowledged, unanswered = pushers.acknowledged, pushers.unanswered
        assert not pushers.refused(), [p.status for p in pushers.refused()][:5]
        assert unanswered, "the kill cut no request; nothing was tested"
        # Acknowledged before the retries: every one of them is already there, once.
        _check_exactly_once(store, shards, job.id, ids_of(acknowledged))
        # The pushes that got no answer, retried with the same key and body: stored once.
        statuses = Counter(pushers.retry(p) for p in unanswered)
        assert set(statuses) == {201}, statuses
        ids = _check_exactly_once(store, shards, job.id, ids_of(acknowledged + unanswered))
        assert sorted(ids) == sorted(ids_of(acknowledged + unanswered))
        # A retry of an acknowledged push replays the original answer and stores nothing.
        before = store.dataset_summary(job.id)
        replay = httpx.post(
            f"{api.url}/v1/jobs/{job.id}/data",
            content=acknowledged[0].body,
            headers={
                "Content-Type": "application/x-safetensors",
                "Idempotency-Key": acknowledged[0].key,
            },
        )
        assert replay.status_code == 201 and replay.headers["Idempotent-Replayed"] == "true"
        assert store.dataset_summary(job.id) == before
        print(
            f"\napi kill: {killed_with} pushes before the kill, {len(acknowledged)} acknowledged, "
            f"{len(unanswered)} without answer (retried: {dict(statuses)}), {len(ids)} samples"
        )
    finally:
        api.stop()
        store.close()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test alone, AOF on and fsynced on every write, on its own port."""
    server = RedisServer(tmp_path / "redis", appendfsync="always").start()
    try:
        yield server
    finally:
        server.stop()


def _kill(server: RedisServer) -> None:
    assert server.proc is not None
    os.killpg(server.proc.pid, signal.SIGKILL)
    server.proc.wait(timeout=10)
    server.stop()  # closes its log


def test_redis_killed_and_restarted_during_pushes(own_redis: RedisServer, tmp_path: Path) -> None:
    prefix = "reliability:"
    settings = Settings(
        redis_url=own_redis.url,
        key_prefix=prefix,
        data_root=str(tmp_path / "data"),
        state_dir=tmp_path / "state",
        supervise=False,
        auth="disabled",
    )
    with live_server(settings) as server, LifelongClient(server.url, retries=0) as client:
        jobs = [client.create_job({**TINY_SPEC, "name": f"job-{i}"}) for i in range(3)]
        pushers = Pushers(server.url, jobs[0].id, count=8, size=20).start()
        wait_until(lambda: len(pushers.acknowledged) >= 40, timeout=30, what="40 pushes")
        _kill(own_redis)  # a crash: no shutdown save, only the append-only file
        time.sleep(1.0)
        own_redis.start()  # same port, same folder: replays the AOF
        wait_until(
            lambda: pushers.pushes[-1].status == 201,
            timeout=30,
            what="pushes to succeed again after Redis restarted",
        )
        pushers.stop()

        acknowledged, unanswered = pushers.acknowledged, pushers.unanswered
        assert not pushers.refused(), [p.status for p in pushers.refused()][:5]
        assert unanswered, "no push met the outage; nothing was tested"
        store = RedisStore(own_redis.url, prefix)
        shards = ShardStore(str(tmp_path / "data"))
        try:
            # Every job and every acknowledged push survived the crash.
            assert {j.id for j in client.list_jobs().jobs} == {j.id for j in jobs}
            _check_exactly_once(store, shards, jobs[0].id, ids_of(acknowledged))
            statuses = Counter(pushers.retry(p) for p in unanswered)
            assert set(statuses) == {201}, statuses
            ids = _check_exactly_once(store, shards, jobs[0].id, ids_of(acknowledged + unanswered))
            assert sorted(ids) == sorted(ids_of(acknowledged + unanswered))
            # The state is usable as before: a new job, a push, a command.
            late = client.create_job({**TINY_SPEC, "name": "after"})
            assert client.push(late.id, *id_batch(0, 10)).accepted == 10
            assert client.pause(late.id).status == "queued"
        finally:
            store.close()
        print(
            f"\nredis kill: {len(acknowledged)} acknowledged, {len(unanswered)} without "
            f"answer (retried: {dict(statuses)}), {len(ids)} samples"
        )


def test_lost_append_answer_keeps_the_shards(
    redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    """The manifest append ran, but its answer was lost (Redis died before replying). The push
    answers 503, and the shard files stay: the manifest lists them. The retry with the same key
    answers from what was stored, and every listed shard can be read."""
    settings = Settings(
        redis_url=redis_url,
        key_prefix=redis_prefix,
        data_root=str(tmp_path / "data"),
        state_dir=tmp_path / "state",
        supervise=False,
        auth="disabled",
    )
    with live_server(settings) as server, LifelongClient(server.url, retries=0) as client:
        plane: Any = server.server.config.app.state.plane
        job = client.create_job(TINY_SPEC)
        original = plane.store.append_shards

        def append_then_lose_the_answer(*args: Any, **kwargs: Any) -> Any:
            original(*args, **kwargs)
            raise redis.ConnectionError("Connection closed by server.")

        plane.store.append_shards = append_then_lose_the_answer
        body, content_type = encode_batch(*id_batch(0, 50))
        headers = {"Content-Type": content_type, "Idempotency-Key": "lost-answer"}
        url = f"{server.url}/v1/jobs/{job.id}/data"
        try:
            first = httpx.post(url, content=body, headers=headers)
        finally:
            plane.store.append_shards = original
        assert first.status_code == 503, first.text
        assert first.headers["Retry-After"] == "2"
        retry = httpx.post(url, content=body, headers=headers)
        assert retry.status_code == 201 and retry.headers["Idempotent-Replayed"] == "true"
        store = RedisStore(redis_url, redis_prefix)
        try:
            ids = stored_ids(store, ShardStore(str(tmp_path / "data")), job.id)
        finally:
            store.close()
        assert sorted(ids) == list(range(50))
