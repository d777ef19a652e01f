"""Authentication, scopes and per-key limits, as route dependencies.

Every ``/v1`` route depends on ``require_role(role)``: the Bearer key is authenticated (401), its
limits charged (429 with Retry-After), a job named in the path checked against the key's scope
(404, worded as for a job that does not exist, so that ids do not leak), and only then its role
(403). With ``LIFELONG_AUTH=disabled`` every caller is an unscoped admin, but only from loopback.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.jobs.access import Access, Principal
from service.jobs.errors import ForbiddenError, TooManyRequestsError
from service.settings import Role, Settings, is_loopback

JOB_ID = re.compile(r"^job_[0-9a-f]{16}$")
_bearer = HTTPBearer(auto_error=False, description="An API key: 'Authorization: Bearer <key>'.")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def get_access(request: Request) -> Access:
    access: Access = request.app.state.access
    return access


AccessDep = Annotated[Access, Depends(get_access)]


async def principal(
    request: Request,
    access: AccessDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller, authenticated and charged against its limits (once per request)."""
    settings = access.settings
    if not settings.auth_enabled:
        client = request.client.host if request.client is not None else ""
        if not is_loopback(client):
            raise ForbiddenError(
                "authentication is disabled (LIFELONG_AUTH=disabled), so this API serves "
                "loopback clients only"
            )
    found = await access.authenticate(
        credentials.scheme if credentials else None,
        credentials.credentials if credentials else None,
    )
    request.state.principal = found  # for the audit trail
    if settings.auth_enabled:  # limits are per key: without keys there is nothing to count
        await _charge(access, settings, found, request)
    return found


async def _charge(access: Access, settings: Settings, who: Principal, request: Request) -> None:
    nbytes = 0
    if request.method in _BODY_METHODS:
        declared = request.headers.get("content-length")
        nbytes = int(declared) if declared and declared.isdigit() else len(await request.body())
    now = time.time()
    requests, total = await access.store.count(who.key_id, nbytes, now)
    per_s = who.requests_per_s or settings.key_requests_per_s
    per_min = who.bytes_per_min or settings.key_bytes_per_min
    if requests > per_s:
        raise TooManyRequestsError(
            f"this API key sent more than {per_s} requests this second; retry after the "
            "Retry-After seconds",
            headers={"Retry-After": "1"},
        )
    if total > per_min:
        wait = max(1, math.ceil(60 - now % 60))
        raise TooManyRequestsError(
            f"this API key sent more than {per_min:,} bytes this minute; retry after the "
            "Retry-After seconds",
            headers={"Retry-After": str(wait)},
        )


CurrentPrincipal = Annotated[Principal, Depends(principal)]


def require_role(role: Role) -> Callable[..., Awaitable[Principal]]:
    """A dependency that admits keys of ``role`` or above (reader < writer < admin) whose scope
    holds the job named in the path, if any."""

    async def dependency(request: Request, who: CurrentPrincipal, access: AccessDep) -> Principal:
        job_id = request.path_params.get("job_id")
        if isinstance(job_id, str) and JOB_ID.match(job_id):
            await access.require_job_in_scope(who, job_id)
        if not who.allows(role):
            raise ForbiddenError(f"this needs the role '{role}'; the key's role is '{who.role}'")
        return who

    dependency.__name__ = f"require_{role}"
    return dependency


Reader = Depends(require_role("reader"))
Writer = Depends(require_role("writer"))
Admin = Depends(require_role("admin"))
ReaderKey = Annotated[Principal, Reader]
AdminKey = Annotated[Principal, Admin]
