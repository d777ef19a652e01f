"""A job's lease in Redis: the one process that may act for the job right now.

A supervisor takes its job's lease before it does anything and keeps it alive while it runs; a
second supervisor of the same job (Ray restarted the actor while the old one lived on, or two API
processes started one each) waits for it and, if it never frees up, does nothing. The sweeper
takes the same lease for the moment it drains a finished job's MLflow outbox.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from service.state.store import RedisStore

logger = logging.getLogger(__name__)


class JobLease:
    """The lease of ``job_id`` for ``owner``, with a time to live of ``ttl_ms``."""

    def __init__(self, store: RedisStore, job_id: str, owner: str, ttl_ms: int) -> None:
        self.store = store
        self.job_id = job_id
        self.owner = owner
        self.ttl_ms = ttl_ms
        self.held = False

    def acquire(self, *, wanted: Callable[[], bool]) -> bool:
        """Take the lease, waiting while another owner holds it: after a crash the dead owner's
        lease lives on until its TTL, so wait twice that long. Gives up as soon as ``wanted()``
        says the job no longer needs an owner."""
        deadline = time.monotonic() + 2 * self.ttl_ms / 1000
        while time.monotonic() < deadline:
            if not wanted():
                return False
            if self.store.acquire_lease(self.job_id, self.owner, self.ttl_ms):
                self.held = True
                return True
            time.sleep(0.5)
        return False

    def keep_alive(self, done: threading.Event, on_lost: Callable[[], None]) -> None:
        """Renew the lease every third of its TTL until ``done``; call ``on_lost`` (once) and
        return when another owner has it."""
        while not done.wait(self.ttl_ms / 3000):
            try:
                if not self.store.renew_lease(self.job_id, self.owner, self.ttl_ms):
                    logger.error(
                        "job %s: lease lost to %s", self.job_id, self.store.lease_owner(self.job_id)
                    )
                    self.held = False
                    on_lost()
                    return
            except Exception:  # a Redis blip: the TTL leaves room for the next try
                logger.warning("job %s: lease renewal failed; retrying", self.job_id)

    def release(self) -> None:
        if self.held:
            self.store.release_lease(self.job_id, self.owner)
            self.held = False
