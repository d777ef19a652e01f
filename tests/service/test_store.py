"""The Redis store and the workers' manifest source, against a real Redis (no HTTP)."""

from __future__ import annotations

import pickle
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from growth_policy import Decision, GrowthOp, Observation
from service.jobs.spec import JobSpec, validate_job_spec
from service.state.manifest import RedisManifest
from service.state.states import CommandKind, CommandStatus, EventType, JobStatus
from service.state.store import (
    JobNotFoundError,
    JobTerminalError,
    RedisStore,
    StoreError,
    TooManyJobsError,
    TransitionError,
)
from workers.shards import ShardInfo

pytestmark = pytest.mark.integration

SPEC = validate_job_spec(
    {
        "name": "store",
        "task": {"input_shape": [4], "num_classes": 3},
        "model": {"family": "mlp", "hidden": [8]},
    },
    max_workers=1,
)


@pytest.fixture
def store(redis_url: str, redis_prefix: str) -> Iterator[RedisStore]:
    s = RedisStore(redis_url, redis_prefix, events_maxlen=100)
    yield s
    s.close()


def make_job(store: RedisStore, spec: JobSpec = SPEC) -> str:
    return store.create_job(spec, max_jobs=100, param_count=67).id


def shard(n: int, split: str = "train") -> ShardInfo:
    return ShardInfo(
        shard_id=uuid.uuid4().hex,
        path=f"x/shards/{uuid.uuid4().hex}.safetensors",
        split=split,  # type: ignore[arg-type]
        num_samples=n,
        nbytes=10 * n,
        sha256="0" * 64,
        created=time.time(),
    )


def test_job_round_trip_and_listing(store: RedisStore) -> None:
    ids = [make_job(store) for _ in range(3)]
    job = store.get_job(ids[0])
    assert job is not None
    assert job.status == JobStatus.PENDING and job.generation == 0 and job.param_count == 67
    assert job.spec == SPEC
    assert [j.id for j in store.list_jobs()] == ids
    assert [j.id for j in store.list_jobs(offset=1, limit=1)] == ids[1:2]
    assert store.get_job("job_0000000000000000") is None
    [first] = store.read_events(ids[0])
    assert first.type == EventType.STATUS and first.data["status"] == "pending"


def test_job_limit(store: RedisStore) -> None:
    store.create_job(SPEC, max_jobs=1, param_count=None)
    with pytest.raises(TooManyJobsError):
        store.create_job(SPEC, max_jobs=1, param_count=None)
    assert store.count_jobs() == 1


def test_manifest_append_bumps_version_and_totals(store: RedisStore) -> None:
    job = make_job(store)
    first = store.append_shards(job, [shard(9), shard(1, "val")]).record
    second = store.append_shards(job, [shard(5)]).record
    assert (first.version, first.train_samples, first.val_samples, first.shards) == (1, 9, 1, 2)
    assert (second.version, second.train_samples, second.val_samples, second.shards) == (
        2,
        14,
        1,
        3,
    )
    manifest = store.load_manifest(job)
    assert manifest.version == 2
    assert [s.version for s in manifest.shards] == [1, 1, 2]
    assert manifest.train_size == 14 and manifest.val_size == 1
    summary = store.dataset_summary(job)
    assert (summary.version, summary.samples, summary.shards, summary.bytes) == (2, 15, 3, 150)


def test_idempotency_key_appends_once_even_under_a_race(store: RedisStore) -> None:
    job = make_job(store)
    barrier = threading.Barrier(8)
    outcomes = []

    def push() -> None:
        barrier.wait()
        outcomes.append(store.append_shards(job, [shard(4)], idempotency_key="k", fingerprint="f"))

    threads = [threading.Thread(target=push) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(o.replayed for o in outcomes) == [False] + [True] * 7
    assert len({o.record.model_dump_json() for o in outcomes}) == 1  # one answer for all
    assert store.load_manifest(job).version == 1
    assert len(store.load_manifest(job).shards) == 1
    stored = store.get_push(job, "k")
    assert stored is not None and stored[1] == "f"


def test_append_refused_for_missing_and_finished_jobs(store: RedisStore) -> None:
    with pytest.raises(JobNotFoundError):
        store.append_shards("job_0000000000000000", [shard(1)])
    job = make_job(store)
    store.set_status(job, JobStatus.STOPPED)
    with pytest.raises(JobTerminalError, match="is stopped"):
        store.append_shards(job, [shard(1)])
    assert store.load_manifest(job).version == 0


def test_status_transitions_are_checked_and_logged(store: RedisStore) -> None:
    job = make_job(store)
    assert store.set_status(job, JobStatus.TRAINING) == JobStatus.PENDING
    assert store.set_status(job, JobStatus.TRAINING) is None  # no change, no event
    assert store.set_status(job, JobStatus.TRAINING, "resumed from step 500") == JobStatus.TRAINING
    store.set_status(job, JobStatus.FAILED, "worker ran out of memory")
    with pytest.raises(TransitionError, match="cannot go from failed to training"):
        store.set_status(job, JobStatus.TRAINING)
    with pytest.raises(ValueError, match="needs a reason"):
        store.set_status(job, JobStatus.FAILED)
    statuses = [e.data for e in store.read_events(job) if e.type == EventType.STATUS]
    assert [(s["previous"], s["status"], s["reason"]) for s in statuses] == [
        (None, "pending", None),
        ("pending", "training", None),
        ("training", "training", "resumed from step 500"),
        ("training", "failed", "worker ran out of memory"),
    ]
    job_record = store.get_job(job)
    assert job_record is not None and job_record.reason == "worker ran out of memory"


def test_observations_and_decisions(store: RedisStore) -> None:
    job = make_job(store)
    obs = Observation(
        step=100, generation=1, generation_step=20, samples_seen=6400, passes=2.5,
        dataset_size=2560, train_loss=0.42, val_loss=0.5, val_metric=0.88, param_count=1234,
        summary={"big": "thing"},
    )  # fmt: skip
    store.record_observation(job, obs)
    store.record_decision(
        job,
        Decision(step=100, op=GrowthOp(op="widen", factor=2.0), policy="plateau", reason="flat"),
    )
    record = store.get_job(job)
    assert record is not None
    assert (record.generation, record.param_count) == (1, 1234)
    assert record.metrics["val_metric"] == 0.88 and record.metrics["step"] == 100
    observation, decision = store.read_events(job)[1:]
    assert observation.type == EventType.OBSERVATION and "summary" not in observation.data
    assert decision.type == EventType.DECISION and decision.data["op"]["factor"] == 2.0
    with pytest.raises(JobNotFoundError):
        store.record_observation("job_0000000000000000", obs)
    assert not store.client.exists(store.keys.job("job_0000000000000000"))


def test_events_are_bounded(store: RedisStore) -> None:
    job = make_job(store)
    for i in range(1000):
        store.append_event(job, EventType.DATA, {"i": i})
    length = store.client.xlen(store.keys.events(job))
    assert 100 <= length < 300  # MAXLEN ~ 100 trims by whole nodes
    assert store.read_events(job, count=10_000)[-1].data == {"i": 999}


def test_command_queue_with_outcomes_and_restart(store: RedisStore) -> None:
    job = make_job(store)
    grow = store.enqueue_command(job, CommandKind.GROW, {"op": "widen", "factor": 2})
    pause = store.enqueue_command(job, CommandKind.PAUSE)
    assert [c.id for c in store.read_commands(job, block_ms=10)] == [grow.id, pause.id]
    store.update_command(job, grow.id, CommandStatus.IN_PROGRESS)
    store.update_command(job, grow.id, CommandStatus.DONE, "widened ×2", {"generation": 1})
    # A restarted supervisor gets the command it read but did not finish, first.
    assert [c.id for c in store.read_commands(job, block_ms=10)] == [pause.id]
    store.update_command(job, pause.id, CommandStatus.REJECTED, "already paused")
    assert store.read_commands(job, block_ms=10) == []
    with pytest.raises(StoreError, match="already finished as done"):
        store.update_command(job, grow.id, CommandStatus.FAILED)
    done = store.get_command(job, grow.id)
    assert done is not None and done.result == {"generation": 1} and done.detail == "widened ×2"
    assert [c.status for c in store.list_commands(job)] == ["rejected", "done"]
    outcomes = [
        (e.data["kind"], e.data["status"])
        for e in store.read_events(job)
        if e.type == EventType.COMMAND
    ]
    assert outcomes == [
        ("grow", "queued"), ("pause", "queued"), ("grow", "in_progress"), ("grow", "done"),
        ("pause", "rejected"),
    ]  # fmt: skip
    store.set_status(job, JobStatus.STOPPED)
    with pytest.raises(JobTerminalError):
        store.enqueue_command(job, CommandKind.RESUME)


def test_read_commands_blocks_until_one_arrives(store: RedisStore) -> None:
    job = make_job(store)
    threading.Timer(0.3, lambda: store.enqueue_command(job, CommandKind.STOP)).start()
    started = time.monotonic()
    [command] = store.read_commands(job, block_ms=5000)
    assert command.kind == CommandKind.STOP
    assert 0.2 < time.monotonic() - started < 3


def test_leases(store: RedisStore) -> None:
    job = make_job(store)
    assert store.acquire_lease(job, "a", 10_000)
    assert not store.acquire_lease(job, "b", 10_000)
    assert not store.renew_lease(job, "b", 10_000)
    assert store.renew_lease(job, "a", 10_000)
    assert not store.release_lease(job, "b")
    assert store.release_lease(job, "a")
    assert store.lease_owner(job) is None


def test_redis_manifest_travels_by_pickle_and_wakes_on_append(
    store: RedisStore, redis_url: str
) -> None:
    job = make_job(store)
    source = pickle.loads(pickle.dumps(store.manifest_source(job)))
    assert isinstance(source, RedisManifest) and source.job_id == job
    assert source.load().version == 0
    assert source.wait_newer(0, 0.05).version == 0  # times out with the current one

    threading.Timer(0.3, lambda: store.append_shards(job, [shard(3)])).start()
    started = time.monotonic()
    manifest = source.wait_newer(0, 10)
    assert manifest.version == 1 and manifest.train_size == 3
    assert time.monotonic() - started < 2


def test_redis_manifest_waits_without_spinning(store: RedisStore) -> None:
    job = make_job(store)
    store.append_shards(job, [shard(1)])
    source = store.manifest_source(job)
    calls: list[int] = []
    xread = source.client.xread

    def counting_xread(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return xread(*args, **kwargs)  # type: ignore[arg-type]

    source.client.xread = counting_xread  # type: ignore[method-assign]
    started = time.monotonic()
    assert source.wait_newer(1, 0.8).version == 1
    assert time.monotonic() - started >= 0.75
    assert len(calls) == 1  # one blocking read, not a polling loop
    source.close()


def test_keys_stay_under_the_prefix(store: RedisStore, redis_client: redis.Redis) -> None:
    job = make_job(store)
    store.append_shards(job, [shard(1)], idempotency_key="k", fingerprint="f")
    store.enqueue_command(job, CommandKind.PAUSE)
    store.acquire_lease(job, "me", 10_000)
    keys = {k.decode() for k in redis_client.scan_iter(match=f"{store.prefix}*")}
    job_key = f"{store.prefix}job:{{{job}}}"
    rest = sorted(
        k.removeprefix(job_key).split(":")[1] for k in keys if k.startswith(job_key + ":")
    )
    assert f"{store.prefix}jobs" in keys and job_key in keys
    assert rest == [
        "command",
        "commands",
        "events",
        "idem",
        "lease",
        "manifest",
        "manifest",
        "shards",
    ]
    assert len(keys) == 10
