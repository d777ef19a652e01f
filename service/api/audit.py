"""The audit trail: every mutating request (POST, PUT, PATCH, DELETE under /v1, predictions and
generations excepted) with its key id (never the key), method, route, job and outcome.

Each is one JSON log line on the ``lifelong.audit`` logger and, with API keys on, an ``audit`` event
on the job's stream when the request names an existing job (a job that was just deleted keeps no
stream to write to: its line in the log remains).
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.metrics import route_template

log = logging.getLogger("lifelong.audit")
_MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_JOB = re.compile(r"^/v1/jobs/(job_[0-9a-f]{16})(?:/|$)")


class AuditMiddleware:
    def __init__(self, app: ASGIApp, root: Any) -> None:
        self.app = app
        self.root = root

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (
            scope["type"] != "http"
            or scope["method"] not in _MUTATING
            or not path.startswith("/v1/")
            or path.endswith(("/predict", "/generate"))  # reads, with a body
        ):
            await self.app(scope, receive, send)
            return
        status = 500
        location = ""

        async def send_wrapper(message: Message) -> None:
            nonlocal status, location
            if message["type"] == "http.response.start":
                status = int(message["status"])
                for name, value in message.get("headers", []):
                    if name == b"location":
                        location = value.decode("latin-1")
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            await self._record(scope, status, location)

    async def _record(self, scope: Scope, status: int, location: str) -> None:
        principal = scope.get("state", {}).get("principal")
        match = _JOB.match(scope["path"]) or _JOB.match(location)
        job_id = match.group(1) if match else None
        entry = {
            "key_id": principal.key_id if principal is not None else None,
            "method": scope["method"],
            "route": route_template(self.root, scope),
            "job_id": job_id,
            "status": status,
            "outcome": _outcome(status),
        }
        log.info(json.dumps(entry))
        app_state = getattr(self.root, "state", None)
        access = getattr(app_state, "access", None)
        if job_id is None or principal is None or access is None or status == 404:
            return
        if not access.settings.auth_enabled:
            return
        try:
            await access.store.audit_event(job_id, entry, access.settings.events_maxlen)
        except Exception as exc:  # the answer is sent; the log line above is the record
            log.warning("audit event on job %s not written: %s", job_id, exc)


def _outcome(status: int) -> str:
    if status < 400:
        return "done"
    if status in (401, 403):
        return "refused"
    if status == 429:
        return "limited"
    return "failed" if status >= 500 else "rejected"
