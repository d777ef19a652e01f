"""Start, find and re-attach the per-job supervisors on Ray, from the API process.

The API connects to Ray in the background (``RAY_ADDRESS``, or a local Ray when none is set), then
*reconciles*: every job that is not stopped or failed gets its supervisor, found by name or started
(``get_if_exists``). It reconciles again every ``interval`` seconds, so that a supervisor that is
gone for good (a lost node with nothing left to restart it on) is started again from its job's
last checkpoint. Creating a job asks for its supervisor at once; the reconciler is the safety net.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from typing import Any

from service.runtime.actor import ACTOR_NAMESPACE, SupervisorConfig, actor_class
from service.state.states import JobStatus
from service.state.store import RedisStore

logger = logging.getLogger(__name__)


class SupervisorLauncher:
    """Ray connection and supervisor actors for one deployment (one Redis key prefix)."""

    def __init__(
        self,
        store: RedisStore,
        config_for: Callable[[str], SupervisorConfig],
        *,
        ray_address: str | None,
        interval: float = 30.0,
    ) -> None:
        self.store = store
        self.config_for = config_for
        self.ray_address = ray_address
        self.interval = interval
        self.ready = threading.Event()
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._actor_cls: Any = None
        # One deployment's actors never collide with another's on the same Ray cluster.
        digest = hashlib.sha256(f"{store.url}|{store.prefix}".encode()).hexdigest()[:10]
        self._name_prefix = f"lifelong-{digest}"

    def actor_name(self, job_id: str) -> str:
        return f"{self._name_prefix}-{job_id}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="supervisor-launcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def readiness(self) -> str:
        """For /readyz: 'ok' once connected to Ray, else what is wrong."""
        if self.ready.is_set():
            return "ok"
        return f"connecting{': ' + self.error if self.error else ''}"

    def _connect(self) -> None:
        import ray

        if not ray.is_initialized():
            ray.init(
                address=self.ray_address or None,
                namespace=ACTOR_NAMESPACE,
                logging_level="WARNING",
                log_to_driver=False,
                include_dashboard=False if not self.ray_address else None,
            )
        self._actor_cls = actor_class()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if not self.ready.is_set():
                    self._connect()
                    self.ready.set()
                    self.error = None
                self.reconcile()
            except Exception as exc:
                self.error = f"{type(exc).__name__}: {exc}"
                logger.warning("supervisor launcher: %s", self.error)
            self._stop.wait(self.interval)

    def ensure(self, job_id: str) -> Any:
        """The job's supervisor actor, started if it does not run (None while Ray is not ready)."""
        if not self.ready.is_set():
            return None
        return self._actor_cls.options(
            name=self.actor_name(job_id),
            namespace=ACTOR_NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
        ).remote(self.config_for(job_id))

    def reconcile(self) -> int:
        """Make sure every live job has a supervisor; return how many were asked for."""
        asked = 0
        offset = 0
        while True:
            jobs = self.store.list_jobs(offset=offset, limit=500)
            if not jobs:
                return asked
            for job in jobs:
                if job.status not in (JobStatus.STOPPED, JobStatus.FAILED):
                    self.ensure(job.id)
                    asked += 1
            offset += len(jobs)

    def get(self, job_id: str) -> Any:
        """The job's supervisor actor if it exists."""
        import ray

        if not self.ready.is_set():
            return None
        try:
            return ray.get_actor(self.actor_name(job_id), namespace=ACTOR_NAMESPACE)
        except ValueError:
            return None
