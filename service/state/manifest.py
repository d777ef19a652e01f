"""A job's manifest as the workers see it: a picklable ``ManifestSource`` over the service's Redis.

The supervisor puts a :class:`RedisManifest` in the Ray train-loop config; each worker process
unpickles it (only the Redis URL, the key prefix and the job id travel) and opens its own connection
on first use. ``wait_newer`` blocks in Redis (``XREAD BLOCK`` on the job's manifest log), so a waiting
worker costs no CPU and wakes up as soon as a push is acknowledged.

This module imports only redis, pydantic and ``workers.shards``: it is what a worker process loads.

Where the rest of the manifest lives: its model (``Manifest``, ``ShardInfo``) and the shard files
are ``workers.shards``; the one writer is ``RedisStore.append_shards`` (``service.state.store``),
which appends durable shards in one script; ingest (``service.jobs.control.ControlPlane.push``)
writes the shards and then calls it.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis

from service.state.keys import Keys
from workers.shards import Manifest, ManifestDelta, ShardInfo, manifest_delta


class RedisManifest:
    """``workers.shards.ManifestSource`` for one job, read from Redis."""

    def __init__(
        self, redis_url: str, key_prefix: str, job_id: str, *, max_block_s: float = 10.0
    ) -> None:
        self.redis_url = redis_url
        self.key_prefix = key_prefix
        self.job_id = job_id
        self.max_block_s = max_block_s
        self._keys = Keys(key_prefix)
        self._client: redis.Redis | None = None
        self._pid = 0

    def __getstate__(self) -> dict[str, Any]:
        return {
            "redis_url": self.redis_url,
            "key_prefix": self.key_prefix,
            "job_id": self.job_id,
            "max_block_s": self.max_block_s,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"RedisManifest(job_id={self.job_id!r}, key_prefix={self.key_prefix!r})"

    @property
    def client(self) -> redis.Redis:
        # One connection pool per process: a pool inherited through fork is not safe to share.
        if self._client is None or self._pid != os.getpid():
            self._client = redis.Redis.from_url(
                self.redis_url,
                decode_responses=True,
                socket_connect_timeout=10,
                socket_timeout=self.max_block_s + 30,
                health_check_interval=30,
            )
            self._pid = os.getpid()
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def version(self) -> int:
        value = self.client.hget(self._keys.manifest(self.job_id), "version")
        return int(value or 0)

    def load(self) -> Manifest:
        """A consistent snapshot: the version and the shard list are read in one transaction."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hget(self._keys.manifest(self.job_id), "version")
        pipe.lrange(self._keys.shards(self.job_id), 0, -1)
        version, shards = pipe.execute()
        return Manifest(
            job_id=self.job_id,
            version=int(version or 0),
            shards=[ShardInfo.model_validate_json(s) for s in shards],
        )

    def changes_since(self, known: Manifest) -> ManifestDelta:
        """The shards appended since ``known``, read in one transaction with the version: only the
        new list entries travel. The whole manifest comes back (``full``) when ``known`` is empty
        or of another job, or when the list no longer extends it (rewritten)."""
        n = len(known.shards)
        if not known.job_id or known.job_id != self.job_id or n == 0:
            return manifest_delta(known, self.load())
        pipe = self.client.pipeline(transaction=True)
        pipe.hget(self._keys.manifest(self.job_id), "version")
        pipe.lindex(self._keys.shards(self.job_id), n - 1)
        pipe.lrange(self._keys.shards(self.job_id), n, -1)
        version, last, appended = pipe.execute()
        version = int(version or 0)
        if (
            last is None
            or version < known.version
            or ShardInfo.model_validate_json(last).shard_id != known.shards[-1].shard_id
        ):
            return manifest_delta(known, self.load())
        return ManifestDelta(
            job_id=self.job_id,
            version=version,
            base_version=known.version,
            full=False,
            shards=[ShardInfo.model_validate_json(s) for s in appended],
        )

    def wait_changes(self, known: Manifest, timeout: float) -> ManifestDelta:
        """Like ``wait_newer``, but what comes back is the change since ``known``."""
        self._wait(known.version, timeout)
        return self.changes_since(known)

    def wait_newer(self, version: int, timeout: float) -> Manifest:
        """The manifest once its version exceeds ``version``, or the current one after ``timeout``."""
        self._wait(version, timeout)
        return self.load()

    def _wait(self, version: int, timeout: float) -> None:
        deadline = time.monotonic() + max(0.0, timeout)
        manifest_key = self._keys.manifest(self.job_id)
        log_key = self._keys.manifest_log(self.job_id)
        while True:
            current, log_id = self.client.hmget(manifest_key, ["version", "log_id"])
            remaining = deadline - time.monotonic()
            if int(current or 0) > version or remaining <= 0:
                return
            # ``log_id`` is the log entry of the version just read (same script wrote both), so
            # any entry after it is a newer version: no append can slip between read and wait.
            block_ms = max(1, int(min(remaining, self.max_block_s) * 1000))
            self.client.xread({log_key: log_id or "0-0"}, count=1, block=block_ms)
