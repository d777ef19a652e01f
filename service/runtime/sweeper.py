"""MLflow operations left behind by finished jobs, logged once MLflow answers again.

A job's supervisor drains its MLflow outbox while the job runs and tries for a while more when the
job ends; if MLflow is down at that moment, what is left stays in Redis with no supervisor to send
it. The API's sweeper finds stopped and failed jobs whose outbox is not empty, takes the job's
lease (so that only one process drains an outbox, and a deletion waits), and drains it with the
same tracker, retrying every ``interval`` seconds until it is empty.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid

from service.runtime.tracking import MlflowTracker
from service.state.records import JobRecord
from service.state.store import RedisStore

logger = logging.getLogger(__name__)


class OutboxSweeper:
    """Drains the MLflow outboxes of finished jobs, from a thread of the API process."""

    def __init__(
        self,
        store: RedisStore,
        tracking_uri: str,
        *,
        interval: float = 30.0,
        lease_ttl_ms: int = 60_000,
        prefix: str = "lifelong",
    ) -> None:
        self.store = store
        self.tracking_uri = tracking_uri
        self.interval = interval
        self.lease_ttl_ms = lease_ttl_ms
        self.prefix = prefix
        self.owner = f"sweeper:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mlflow-sweeper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sweep_once()
            except Exception as exc:  # Redis away: the next round tries again
                logger.warning("mlflow sweeper: %s: %s", type(exc).__name__, exc)

    def waiting(self) -> list[JobRecord]:
        """Finished jobs whose MLflow outbox is not empty."""
        found: list[JobRecord] = []
        offset = 0
        while True:
            jobs = self.store.list_jobs(offset=offset, limit=500)
            if not jobs:
                return found
            offset += len(jobs)
            done = [job for job in jobs if job.status.terminal]
            pipe = self.store.client.pipeline(transaction=False)
            for job in done:
                pipe.llen(self.store.keys.mlflow_outbox(job.id))
            found += [job for job, n in zip(done, pipe.execute(), strict=True) if int(n)]

    def sweep_once(self) -> dict[str, int]:
        """Drain what can be drained now; return the operations applied per job."""
        applied: dict[str, int] = {}
        for job in self.waiting():
            if self._stop.is_set():
                break
            if not self.store.acquire_lease(job.id, self.owner, self.lease_ttl_ms):
                continue  # its supervisor is still closing it, or another API process drains it
            try:
                applied[job.id] = self._drain(job)
            finally:
                self.store.release_lease(job.id, self.owner)
        return applied

    def _drain(self, job: JobRecord) -> int:
        tracker = MlflowTracker.for_job(
            self.store.client,
            self.store.keys,
            job_id=job.id,
            job_name=job.name,
            tracking_uri=self.tracking_uri,
            prefix=self.prefix,
        )
        total = 0
        try:
            while not self._stop.is_set():
                n = tracker.drain_once()
                if not n:
                    break
                total += n
                if not self.store.renew_lease(job.id, self.owner, self.lease_ttl_ms):
                    break
        except Exception as exc:  # MLflow is still away: the operations stay queued
            tracker.record_failure(exc)
            return total
        tracker.clear_failure()
        if total:
            logger.info("job %s: logged %d MLflow operations left when it ended", job.id, total)
        return total
