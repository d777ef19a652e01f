"""Job state in Redis: jobs, manifests, idempotency keys, commands, events and leases.

Every multi-key update is one Lua script, so it is atomic and a crash leaves either all or none of
it (the scripts are in ``service.state.scripts``, the record encoding in ``service.state.codec``): creating a job (count limit, record, empty manifest, command group, first event), appending
shards to a manifest (idempotency check, version bump, totals, the manifest log that wakes waiting
workers, the answer kept for retries, the ``data`` event), a status change (transition check,
``status`` event), queueing a command and recording its outcome. The key layout is in
``service.state.keys``.

Writers outside the API (the per-job supervisor, ``service.runtime.supervisor``) use the same class:
:meth:`RedisStore.set_status`, :meth:`record_observation`, :meth:`record_decision`,
:meth:`append_event`, :meth:`read_commands` / :meth:`update_command`, and the lease methods.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from typing import Any

import redis
import redis.asyncio as aredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.typing import EncodableT, FieldT

from growth_policy import Decision, Observation
from service.jobs.spec import JobSpec
from service.state import codec, scripts
from service.state.keys import COMMAND_GROUP, Keys
from service.state.manifest import RedisManifest
from service.state.records import (
    CommandRecord,
    DatasetSummary,
    EventRecord,
    JobRecord,
    PushRecord,
)
from service.state.states import (
    CommandKind,
    CommandStatus,
    EventType,
    JobStatus,
    allowed_sources,
)
from workers.shards import Manifest, ShardInfo


class StoreError(Exception):
    """A store operation that cannot be done; ``kind`` says why."""

    def __init__(self, kind: str, message: str, *, status: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status


class JobNotFoundError(StoreError):
    def __init__(self, job_id: str) -> None:
        super().__init__("missing", f"job '{job_id}' not found")


class JobTerminalError(StoreError):
    def __init__(self, job_id: str, status: str) -> None:
        super().__init__("terminal", f"job '{job_id}' is {status}", status=status)


class TooManyJobsError(StoreError):
    def __init__(self, limit: int) -> None:
        super().__init__("full", f"this deployment holds its maximum of {limit} jobs")


class TransitionError(StoreError):
    def __init__(self, job_id: str, current: str, new: str) -> None:
        super().__init__(
            "refused", f"job '{job_id}' cannot go from {current} to {new}", status=current
        )


class JobActiveError(StoreError):
    def __init__(self, job_id: str, status: str) -> None:
        super().__init__("active", f"job '{job_id}' is {status}", status=status)


class JobLeasedError(StoreError):
    def __init__(self, job_id: str, status: str) -> None:
        super().__init__(
            "leased",
            f"job '{job_id}' is {status}, but its lease is held (by its supervisor closing the "
            "job, or by the API logging the job's last MLflow operations)",
            status=status,
        )


class TrackingPendingError(StoreError):
    def __init__(self, job_id: str, status: str, pending: int) -> None:
        super().__init__(
            "tracking",
            f"job '{job_id}' still has {pending} MLflow operations waiting to be logged",
            status=status,
        )


class AppendOutcome:
    """What :meth:`RedisStore.append_shards` did: ``record`` is new, or an earlier one replayed."""

    __slots__ = ("fingerprint", "record", "replayed")

    def __init__(self, record: PushRecord, *, replayed: bool, fingerprint: str | None) -> None:
        self.record = record
        self.replayed = replayed
        self.fingerprint = fingerprint


def new_job_id() -> str:
    return f"job_{uuid.uuid4().hex[:16]}"


def new_command_id() -> str:
    return f"cmd_{uuid.uuid4().hex[:16]}"


class RedisStore:
    """Typed access to one deployment's state (one key prefix) in one Redis."""

    def __init__(
        self,
        url: str,
        prefix: str,
        *,
        events_maxlen: int = 10_000,
        commands_maxlen: int = 10_000,
        idempotency_ttl_s: int = 7 * 24 * 3600,
    ) -> None:
        self.url = url
        self.keys = Keys(prefix)
        self.events_maxlen = events_maxlen
        self.commands_maxlen = commands_maxlen
        self.idempotency_ttl_s = idempotency_ttl_s
        self.client: redis.Redis = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=5,
            socket_timeout=30,
            health_check_interval=30,
        )
        # Only the event streams block (XREAD BLOCK, bounded by the caller), in the event loop.
        # Its read timeout must outlast the longest XREAD BLOCK (the SSE keep-alive, at most
        # 300 s): left unset, redis-py times every read out after 5 s.
        # Retried on a broken connection: after a Redis restart its pooled connections are dead,
        # and (unlike the sync client) it would otherwise fail the first command on each.
        self.aclient: aredis.Redis = aredis.Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=5,
            socket_timeout=330,
            health_check_interval=30,
            retry=AsyncRetry(ExponentialBackoff(cap=1.0, base=0.05), 3),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        )
        self._create_job = self.client.register_script(scripts.CREATE_JOB)
        self._append = self.client.register_script(scripts.APPEND)
        self._set_status = self.client.register_script(scripts.SET_STATUS)
        self._enqueue = self.client.register_script(scripts.ENQUEUE)
        self._update_command = self.client.register_script(scripts.UPDATE_COMMAND)
        self._renew_lease = self.client.register_script(scripts.RENEW_LEASE)
        self._release_lease = self.client.register_script(scripts.RELEASE_LEASE)
        self._delete_job = self.client.register_script(scripts.DELETE_JOB)

    @property
    def prefix(self) -> str:
        return self.keys.prefix

    def close(self) -> None:
        self.client.close()

    async def aclose(self) -> None:
        await self.aclient.aclose()

    def ping(self) -> bool:
        return bool(self.client.ping())

    async def aping(self) -> bool:
        return bool(await self.aclient.ping())

    # --- jobs ------------------------------------------------------------------------------

    def create_job(self, spec: JobSpec, *, max_jobs: int, param_count: int | None) -> JobRecord:
        job_id = new_job_id()
        now = time.time()
        record = JobRecord(
            id=job_id,
            name=spec.name,
            spec=spec,
            status=JobStatus.PENDING,
            generation=0,
            param_count=param_count,
            created=now,
            updated=now,
        )
        fields = codec.job_fields(record)
        event = json.dumps({"status": JobStatus.PENDING, "previous": None, "reason": None})
        k = self.keys
        (outcome,) = self._create_job(
            keys=[
                k.jobs(),
                k.job(job_id),
                k.manifest(job_id),
                k.commands(job_id),
                k.events(job_id),
            ],
            args=[job_id, now, max_jobs, self.events_maxlen, event, COMMAND_GROUP, *fields],
        )
        if outcome == "full":
            raise TooManyJobsError(max_jobs)
        if outcome == "exists":  # a 64-bit id collision: vanishingly rare, never silent
            raise StoreError("exists", f"job id {job_id} is taken; retry")
        return record

    def delete_job(self, job_id: str, *, force: bool = False) -> JobStatus:
        """Take a stopped or failed job out of the deployment, atomically; return its status.

        Refused while the job can still change: it is not stopped or failed, or its lease is
        held (by its supervisor, or by the API's sweeper), or (unless ``force``) its MLflow
        outbox holds operations that were never logged. On success the job is gone from every listing and lookup at once,
        and counts no more towards ``max_jobs``; the caller then removes its files and calls
        :meth:`purge_job` for its remaining keys (its id waits in :meth:`pending_deletions`).
        """
        k = self.keys
        outcome = self._delete_job(
            keys=[k.jobs(), k.job(job_id), k.lease(job_id), k.mlflow_outbox(job_id), k.deleting()],
            args=[job_id, scripts.TERMINAL_CSV, "1" if force else "0"],
        )
        kind = codec.s(outcome[0])
        if kind == "missing":
            raise JobNotFoundError(job_id)
        status = codec.s(outcome[1])
        if kind == "active":
            raise JobActiveError(job_id, status)
        if kind == "leased":
            raise JobLeasedError(job_id, status)
        if kind == "tracking":
            raise TrackingPendingError(job_id, status, int(outcome[2]))
        return JobStatus(status)

    def purge_job(self, job_id: str) -> int:
        """Remove the keys left by a deleted job; return how many there were.

        Refuses (``StoreError``) a job that still exists: only :meth:`delete_job` starts this.
        """
        if self.client.exists(self.keys.job(job_id)):
            raise StoreError("exists", f"job '{job_id}' exists; delete it first")
        removed = 0
        batch: list[str] = []
        for key in self.client.scan_iter(match=self.keys.job_pattern(job_id), count=1000):
            batch.append(codec.s(key))
            if len(batch) >= 500:
                removed += int(self.client.unlink(*batch))
                batch.clear()
        if batch:
            removed += int(self.client.unlink(*batch))
        self.client.srem(self.keys.deleting(), job_id)
        return removed

    def pending_deletions(self) -> list[str]:
        """Ids of deleted jobs whose keys or files may not all be removed yet."""
        return sorted(codec.s(m) for m in self.client.smembers(self.keys.deleting()))

    def get_job(self, job_id: str) -> JobRecord | None:
        return codec.parse_job(codec.hash(self.client.hgetall(self.keys.job(job_id))))

    def require_job(self, job_id: str) -> JobRecord:
        job = self.get_job(job_id)
        if job is None:
            raise JobNotFoundError(job_id)
        return job

    def count_jobs(self) -> int:
        return int(self.client.zcard(self.keys.jobs()))

    def list_jobs(self, *, offset: int = 0, limit: int = 100) -> list[JobRecord]:
        """Jobs in creation order (oldest first)."""
        ids = self.client.zrange(self.keys.jobs(), offset, offset + limit - 1)
        return self.get_jobs([codec.s(i) for i in ids])

    def get_jobs(self, job_ids: Sequence[str]) -> list[JobRecord]:
        """The jobs of ``job_ids`` that exist, in that order."""
        pipe = self.client.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(self.keys.job(job_id))
        jobs = (codec.parse_job(codec.hash(h)) for h in pipe.execute())
        return [j for j in jobs if j is not None]

    def set_status(
        self, job_id: str, status: JobStatus, reason: str | None = None
    ) -> JobStatus | None:
        """Move the job to ``status`` if the state machine allows it; return the previous status.

        Staying in the same state with a new reason updates the reason (and writes an event);
        with the same reason it does nothing and returns None. ``failed`` needs a reason.
        """
        if status == JobStatus.FAILED and not reason:
            raise ValueError("a failed job needs a reason")
        sources = ",".join(allowed_sources(status))
        result = self._set_status(
            keys=[self.keys.job(job_id), self.keys.events(job_id)],
            args=[status, reason or "", time.time(), self.events_maxlen, sources],
        )
        outcome = result[0]
        if outcome == "missing":
            raise JobNotFoundError(job_id)
        if outcome == "refused":
            raise TransitionError(job_id, result[1], status)
        if outcome == "same":
            return None
        return JobStatus(result[1])

    def update_job(
        self,
        job_id: str,
        *,
        generation: int | None = None,
        param_count: int | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> None:
        """Set the job's generation, parameter count or latest metrics (no event)."""
        fields: dict[FieldT, EncodableT] = {"updated": time.time()}
        if generation is not None:
            fields["generation"] = generation
        if param_count is not None:
            fields["param_count"] = param_count
        if metrics is not None:
            fields["metrics"] = json.dumps(metrics)
        self._hset_existing(job_id, fields)

    def record_observation(self, job_id: str, observation: Observation) -> str:
        """Keep ``observation`` as the job's latest metrics and write an ``observation`` event."""
        data = observation.model_dump(mode="json", exclude={"summary"})
        metrics = {
            k: data[k]
            for k in (
                "step",
                "generation",
                "samples_seen",
                "passes",
                "dataset_size",
                "val_size",
                "dataset_version",
                "train_loss",
                "val_loss",
                "val_metric",
                "metric_name",
                "throughput",
                "wall_time",
                "compute",
            )
        }
        fields: dict[FieldT, EncodableT] = {
            "generation": observation.generation,
            "param_count": observation.param_count,
            "metrics": json.dumps(metrics),
            "updated": time.time(),
        }
        return self._hset_existing(job_id, fields, event=(EventType.OBSERVATION, data)) or ""

    def record_decision(self, job_id: str, decision: Decision) -> str:
        return self.append_event(job_id, EventType.DECISION, decision.model_dump(mode="json"))

    def append_event(self, job_id: str, type: EventType, data: dict[str, Any]) -> str:
        """Write one event to the job's stream (trimmed to about ``events_maxlen``)."""
        if not self.client.exists(self.keys.job(job_id)):
            raise JobNotFoundError(job_id)
        return str(
            self.client.xadd(
                self.keys.events(job_id),
                codec.event_fields(type, data),
                maxlen=self.events_maxlen,
                approximate=True,
            )
        )

    def _hset_existing(
        self,
        job_id: str,
        fields: dict[FieldT, EncodableT],
        *,
        event: tuple[EventType, dict[str, Any]] | None = None,
    ) -> str | None:
        """HSET on an existing job (never recreating a missing one), with an optional event in
        the same transaction; returns the event id."""
        key = self.keys.job(job_id)
        with self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(key)  # type: ignore[no-untyped-call]
                    if not pipe.exists(key):
                        raise JobNotFoundError(job_id)
                    pipe.multi()
                    pipe.hset(key, mapping=fields)
                    if event is not None:
                        pipe.xadd(
                            self.keys.events(job_id),
                            codec.event_fields(*event),
                            maxlen=self.events_maxlen,
                            approximate=True,
                        )
                    results = pipe.execute()
                    return str(results[1]) if event is not None else None
                except redis.WatchError:
                    continue

    # --- dataset ---------------------------------------------------------------------------

    def dataset_summary(self, job_id: str) -> DatasetSummary:
        h = codec.hash(self.client.hgetall(self.keys.manifest(job_id)))
        if not h:
            raise JobNotFoundError(job_id)
        return DatasetSummary(
            version=int(h.get("version", 0)),
            train_samples=int(h.get("train_samples", 0)),
            val_samples=int(h.get("val_samples", 0)),
            shards=int(h.get("shards", 0)),
            bytes=int(h.get("bytes", 0)),
            updated=float(h["updated"]) if h.get("updated") else None,
        )

    def dataset_summaries(self, job_ids: Sequence[str]) -> list[DatasetSummary]:
        pipe = self.client.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(self.keys.manifest(job_id))
        return [
            DatasetSummary(
                version=int(h.get("version", 0)),
                train_samples=int(h.get("train_samples", 0)),
                val_samples=int(h.get("val_samples", 0)),
                shards=int(h.get("shards", 0)),
                bytes=int(h.get("bytes", 0)),
                updated=float(h["updated"]) if h.get("updated") else None,
            )
            for h in map(codec.hash, pipe.execute())
        ]

    def manifest_source(self, job_id: str) -> RedisManifest:
        """The picklable manifest source to hand to the workers."""
        return RedisManifest(self.url, self.prefix, job_id)

    def load_manifest(self, job_id: str) -> Manifest:
        return self.manifest_source(job_id).load()

    def shard_page(self, job_id: str, *, offset: int, limit: int) -> list[ShardInfo]:
        items = self.client.lrange(self.keys.shards(job_id), offset, offset + limit - 1)
        return [ShardInfo.model_validate_json(codec.s(s)) for s in items]

    def get_push(self, job_id: str, idempotency_key: str) -> tuple[PushRecord, str] | None:
        """The answer stored under ``idempotency_key`` and the fingerprint of its body, if any."""
        h = codec.hash(self.client.hgetall(self.keys.idempotency(job_id, idempotency_key)))
        if not h:
            return None
        return codec.parse_push(h), h["fingerprint"]

    def append_shards(
        self,
        job_id: str,
        shards: Sequence[ShardInfo],
        *,
        idempotency_key: str | None = None,
        fingerprint: str = "",
    ) -> AppendOutcome:
        """Append durable shards to the manifest, once per idempotency key.

        When the key already holds an answer (a retry that raced this one), nothing is appended
        and that answer comes back with ``replayed=True``: the caller deletes its own shard files.
        """
        if not shards:
            raise ValueError("nothing to append")
        k = self.keys
        idem_key = k.idempotency(job_id, idempotency_key) if idempotency_key else k.job(job_id)
        accepted_train = sum(s.num_samples for s in shards if s.split == "train")
        accepted_val = sum(s.num_samples for s in shards if s.split == "val")
        shard_ids = ",".join(s.shard_id for s in shards)
        payloads = [s.model_dump_json(exclude={"version"}) for s in shards]
        result = self._append(
            keys=[
                k.job(job_id),
                k.manifest(job_id),
                k.shards(job_id),
                k.manifest_log(job_id),
                k.events(job_id),
                idem_key,
            ],
            args=[
                scripts.TERMINAL_CSV,
                "1" if idempotency_key else "0",
                fingerprint,
                self.idempotency_ttl_s,
                time.time(),
                self.events_maxlen,
                accepted_train,
                accepted_val,
                sum(s.nbytes for s in shards),
                shard_ids,
                len(payloads),
                *payloads,
            ],
        )
        return self._append_outcome(job_id, result, shards, idempotency_key, fingerprint)

    def _append_outcome(
        self,
        job_id: str,
        result: list[Any],
        shards: Sequence[ShardInfo],
        idempotency_key: str | None,
        fingerprint: str,
    ) -> AppendOutcome:
        """What the append script answered, as an outcome (or the store error it means)."""
        outcome = result[0]
        if outcome == "missing":
            raise JobNotFoundError(job_id)
        if outcome == "terminal":
            raise JobTerminalError(job_id, result[1])
        if outcome == "replay":
            assert idempotency_key is not None
            stored = self.get_push(job_id, idempotency_key)
            if stored is None:  # expired between the two calls: practically impossible
                raise StoreError("replay", "the idempotency key expired during the push; retry")
            return AppendOutcome(stored[0], replayed=True, fingerprint=stored[1])
        version, train, val, total_shards = (int(x) for x in result[1:5])
        accepted_train = sum(s.num_samples for s in shards if s.split == "train")
        accepted_val = sum(s.num_samples for s in shards if s.split == "val")
        record = PushRecord(
            version=version,
            accepted=accepted_train + accepted_val,
            accepted_train=accepted_train,
            accepted_val=accepted_val,
            train_samples=train,
            val_samples=val,
            shards=total_shards,
            shard_ids=[s.shard_id for s in shards],
        )
        return AppendOutcome(record, replayed=False, fingerprint=fingerprint or None)

    # --- commands --------------------------------------------------------------------------

    def enqueue_command(
        self, job_id: str, kind: CommandKind, args: dict[str, Any] | None = None
    ) -> CommandRecord:
        """Queue a command for the job's supervisor; refused (JobTerminalError) for a finished job."""
        command_id = new_command_id()
        now = time.time()
        args_json = json.dumps(args or {})
        event = json.dumps(
            {"command_id": command_id, "kind": kind, "status": CommandStatus.QUEUED, "detail": None}
        )
        k = self.keys
        result = self._enqueue(
            keys=[
                k.job(job_id),
                k.commands(job_id),
                k.command(job_id, command_id),
                k.events(job_id),
            ],
            args=[
                scripts.TERMINAL_CSV,
                command_id,
                kind,
                args_json,
                now,
                self.commands_maxlen,
                self.events_maxlen,
                event,
            ],
        )
        if result[0] == "missing":
            raise JobNotFoundError(job_id)
        if result[0] == "terminal":
            raise JobTerminalError(job_id, result[1])
        return CommandRecord(
            id=command_id,
            kind=kind,
            args=args or {},
            status=CommandStatus.QUEUED,
            created=now,
            updated=now,
            stream_id=result[1],
        )

    def get_command(self, job_id: str, command_id: str) -> CommandRecord | None:
        return codec.parse_command(
            codec.hash(self.client.hgetall(self.keys.command(job_id, command_id)))
        )

    def list_commands(self, job_id: str, *, limit: int = 100) -> list[CommandRecord]:
        """The latest ``limit`` commands, newest first (finished ones expire after the TTL)."""
        entries = codec.entries(self.client.xrevrange(self.keys.commands(job_id), count=limit))
        pipe = self.client.pipeline(transaction=False)
        for _, fields in entries:
            pipe.hgetall(self.keys.command(job_id, fields["command_id"]))
        commands = (codec.parse_command(codec.hash(h)) for h in pipe.execute())
        return [c for c in commands if c is not None]

    def read_commands(
        self,
        job_id: str,
        *,
        consumer: str = "supervisor",
        block_ms: int | None = None,
        count: int = 10,
    ) -> list[CommandRecord]:
        """Commands for the supervisor, oldest first: first those it read but did not finish
        (after a restart), then new ones (waiting up to ``block_ms`` when there are none).

        A command stays pending until :meth:`update_command` gives it a final status.
        """
        key = self.keys.commands(job_id)
        pending = self.client.xreadgroup(COMMAND_GROUP, consumer, {key: "0"}, count=count)
        # Entries trimmed from the stream while pending come back without fields.
        entries = [(sid, f) for sid, f in codec.read_entries(pending) if f]
        if not entries:
            fresh = self.client.xreadgroup(
                COMMAND_GROUP, consumer, {key: ">"}, count=count, block=block_ms
            )
            entries = codec.read_entries(fresh)
        out = []
        for _, fields in entries:
            command = self.get_command(job_id, fields["command_id"])
            if command is not None:
                out.append(command)
        return out

    def update_command(
        self,
        job_id: str,
        command_id: str,
        status: CommandStatus,
        detail: str | None = None,
        result: dict[str, Any] | None = None,
    ) -> CommandStatus:
        """Record a command's progress or outcome (and a ``command`` event); a final status
        acknowledges it in the stream. Returns the previous status."""
        k = self.keys
        out = self._update_command(
            keys=[k.command(job_id, command_id), k.commands(job_id), k.events(job_id)],
            args=[
                status,
                detail or "",
                json.dumps(result) if result is not None else "",
                time.time(),
                "1" if status.final else "0",
                COMMAND_GROUP,
                self.idempotency_ttl_s,
                self.events_maxlen,
            ],
        )
        if out[0] == "missing":
            raise StoreError("missing", f"command '{command_id}' of job '{job_id}' not found")
        if out[0] == "final":
            raise StoreError("final", f"command '{command_id}' already finished as {out[1]}")
        return CommandStatus(out[1])

    # --- events ----------------------------------------------------------------------------

    def read_events(
        self, job_id: str, *, after: str = "0-0", count: int = 1000
    ) -> list[EventRecord]:
        entries = codec.entries(
            self.client.xrange(self.keys.events(job_id), min=f"({after}", count=count)
        )
        return [codec.parse_event(sid, f) for sid, f in entries]

    async def aread_range(
        self, job_id: str, *, after: str = "0-0", count: int = 1000
    ) -> list[EventRecord]:
        entries = codec.entries(
            await self.aclient.xrange(self.keys.events(job_id), min=f"({after}", count=count)
        )
        return [codec.parse_event(sid, f) for sid, f in entries]

    async def aread_events(
        self, job_id: str, *, after: str, block_ms: int, count: int = 100
    ) -> list[EventRecord]:
        """Events after ``after``, waiting up to ``block_ms`` for the first one."""
        response = await self.aclient.xread(
            {self.keys.events(job_id): after}, count=count, block=block_ms
        )
        return [codec.parse_event(sid, f) for sid, f in codec.read_entries(response)]

    async def ajob_status(self, job_id: str) -> JobStatus | None:
        value = await self.aclient.hget(self.keys.job(job_id), "status")
        return JobStatus(codec.s(value)) if value else None

    async def last_event_id(self, job_id: str) -> str:
        entries = codec.entries(await self.aclient.xrevrange(self.keys.events(job_id), count=1))
        return entries[0][0] if entries else "0-0"

    # --- leases (one supervisor per job) ---------------------------------------------------

    def acquire_lease(self, job_id: str, owner: str, ttl_ms: int) -> bool:
        return bool(self.client.set(self.keys.lease(job_id), owner, nx=True, px=ttl_ms))

    def renew_lease(self, job_id: str, owner: str, ttl_ms: int) -> bool:
        return bool(self._renew_lease(keys=[self.keys.lease(job_id)], args=[owner, ttl_ms]))

    def release_lease(self, job_id: str, owner: str) -> bool:
        return bool(self._release_lease(keys=[self.keys.lease(job_id)], args=[owner]))

    def lease_owner(self, job_id: str) -> str | None:
        value = self.client.get(self.keys.lease(job_id))
        return str(value) if value is not None else None


# --- encoding -------------------------------------------------------------------------------
