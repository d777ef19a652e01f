"""Access state in Redis: API keys (as digests) and their scopes, the tenant of each job, the
answers kept for requests made with an Idempotency-Key, per-key rate counters, and audit events.

Every method is async: the API calls them on every request, in its event loop. Keys are looked up
on every request, so that a key created or revoked through the API counts from the next request
on, in every API process. The layout is in ``service.state.keys``.
"""

from __future__ import annotations

import json
import time

from pydantic import BaseModel, ConfigDict

from service.settings import Role
from service.state import codec
from service.state.keys import Keys
from service.state.store import RedisStore

# KEYS: job, events. ARGV: events_maxlen, fields... ; an event only on a job that exists.
_AUDIT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, 2))
return 1
"""
# KEYS: request. ARGV: the value this request claimed it with.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class KeyRecord(BaseModel):
    """An API key created through the API (the key itself is never stored, only its digest)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    role: Role
    name: str = ""
    tenant: str | None = None
    jobs: bool = False  # limited to its own set of jobs (``<p>apikey:<id>:jobs``)
    requests_per_s: int | None = None
    bytes_per_min: int | None = None
    created: float
    created_by: str

    @property
    def scoped(self) -> bool:
        return self.tenant is not None or self.jobs


class AccessStore:
    """Access state of one deployment, on the connections of its :class:`RedisStore`."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.keys: Keys = store.keys
        self.client = store.aclient
        self._audit = self.client.register_script(_AUDIT)
        self._release = self.client.register_script(_RELEASE)

    # --- keys ---------------------------------------------------------------------------------

    async def lookup(self, digest: str) -> KeyRecord | None:
        raw = await self.client.hget(self.keys.api_keys(), digest)
        return KeyRecord.model_validate_json(codec.s(raw)) if raw else None

    async def add_key(self, digest: str, record: KeyRecord, jobs: list[str]) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.api_keys(), digest, record.model_dump_json())
            pipe.hset(self.keys.api_key_ids(), record.id, digest)
            if jobs:
                pipe.sadd(self.keys.api_key_jobs(record.id), *jobs)
            await pipe.execute()

    async def list_keys(self) -> list[KeyRecord]:
        values = await self.client.hvals(self.keys.api_keys())
        records = [KeyRecord.model_validate_json(codec.s(v)) for v in values]
        return sorted(records, key=lambda r: (r.created, r.id))

    async def revoke(self, key_id: str) -> KeyRecord | None:
        """Remove the key; it is refused from the next request on. None: no such key."""
        digest = await self.client.hget(self.keys.api_key_ids(), key_id)
        if digest is None:
            return None
        record = await self.lookup(codec.s(digest))
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hdel(self.keys.api_keys(), codec.s(digest))
            pipe.hdel(self.keys.api_key_ids(), key_id)
            pipe.delete(self.keys.api_key_jobs(key_id))
            await pipe.execute()
        return record

    async def key_jobs(self, key_id: str) -> set[str]:
        return {codec.s(m) for m in await self.client.smembers(self.keys.api_key_jobs(key_id))}

    async def key_has_job(self, key_id: str, job_id: str) -> bool:
        return bool(await self.client.sismember(self.keys.api_key_jobs(key_id), job_id))

    async def add_job_to_key(self, key_id: str, job_id: str) -> None:
        await self.client.sadd(self.keys.api_key_jobs(key_id), job_id)

    # --- tenants ------------------------------------------------------------------------------

    async def set_tenant(self, job_id: str, tenant: str) -> None:
        await self.client.hset(self.keys.tenants(), job_id, tenant)

    async def tenant_of(self, job_id: str) -> str | None:
        value = await self.client.hget(self.keys.tenants(), job_id)
        return codec.s(value) if value is not None else None

    async def tenants(self) -> dict[str, str]:
        raw = await self.client.hgetall(self.keys.tenants())
        return {codec.s(k): codec.s(v) for k, v in raw.items()}

    async def forget_job(self, job_id: str) -> None:
        await self.client.hdel(self.keys.tenants(), job_id)

    async def job_ids(self) -> list[str]:
        """Every job id, in creation order."""
        return [codec.s(i) for i in await self.client.zrange(self.keys.jobs(), 0, -1)]

    # --- answers of requests made with an Idempotency-Key -------------------------------------

    async def get_request(self, key: str) -> dict[str, object] | None:
        raw = await self.client.get(key)
        return json.loads(codec.s(raw)) if raw else None

    async def claim_request(self, key: str, value: str, ttl_s: int) -> bool:
        """Whether this request is the first with its key (it holds the claim for ``ttl_s``)."""
        return bool(await self.client.set(key, value, nx=True, ex=ttl_s))

    async def finish_request(self, key: str, value: str, ttl_s: int) -> None:
        await self.client.set(key, value, ex=ttl_s)

    async def release_request(self, key: str, claimed: str) -> None:
        """Drop a claim that this request holds (it failed: a retry runs it again)."""
        await self._release(keys=[key], args=[claimed])

    # --- limits -----------------------------------------------------------------------------

    async def count(self, key_id: str, nbytes: int, now: float | None = None) -> tuple[int, int]:
        """Count one request of ``nbytes`` for the key: (requests in this second, bytes in this
        minute), this one included."""
        now = time.time() if now is None else now
        second, minute = int(now), int(now // 60)
        per_s = self.keys.rate(key_id, "s", second)
        per_m = self.keys.rate(key_id, "m", minute)
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.incr(per_s)
            pipe.expire(per_s, 2)
            pipe.incrby(per_m, nbytes)
            pipe.expire(per_m, 120)
            requests, _, nbytes_total, _ = await pipe.execute()
        return int(requests), int(nbytes_total)

    # --- audit --------------------------------------------------------------------------------

    async def audit_event(self, job_id: str, data: dict[str, object], maxlen: int) -> bool:
        """An ``audit`` event on the job's stream, if the job exists; whether it was written."""
        fields = ["type", "audit", "time", repr(time.time()), "data", json.dumps(data)]
        written = await self._audit(
            keys=[self.keys.job(job_id), self.keys.events(job_id)], args=[maxlen, *fields]
        )
        return bool(written)
