"""Dependencies of the routes: the control plane, the job id, and the role a route needs."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.api.metrics import Metrics
from service.jobs.control import ControlPlane
from service.jobs.errors import ForbiddenError, NotFoundError, UnauthorizedError
from service.settings import Role, Settings
from service.state.records import JobRecord

JOB_ID = re.compile(r"^job_[0-9a-f]{16}$")
# Largest list offset: Redis takes 64-bit indexes, and offset + limit must stay below 2**63.
MAX_OFFSET = 2**53
_RANK: dict[Role, int] = {"reader": 0, "writer": 1, "admin": 2}
_bearer = HTTPBearer(auto_error=False, description="An API key: 'Authorization: Bearer <key>'.")


def get_plane(request: Request) -> ControlPlane:
    plane: ControlPlane = request.app.state.plane
    return plane


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


Plane = Annotated[ControlPlane, Depends(get_plane)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]


def job_id_path(
    job_id: Annotated[
        str,
        Path(
            description="The job's id, as POST /v1/jobs returned it.",
            examples=["job_4f2a9c1e0b7d4e21"],
        ),
    ],
) -> str:
    # Anything that is not an id cannot name a job: 404, and it never reaches a Redis key.
    if not JOB_ID.match(job_id):
        raise NotFoundError(f"job '{job_id[:80]}' not found")
    return job_id


JobId = Annotated[str, Depends(job_id_path)]


def existing_job(job_id: JobId, plane: Plane) -> JobRecord:
    """The job, checked before a streaming answer starts (a 404 cannot come later)."""
    return plane.require_job(job_id)


ExistingJob = Annotated[JobRecord, Depends(existing_job)]


@dataclass(frozen=True)
class Principal:
    """Who is calling: the role of their API key, or None when no keys are configured."""

    role: Role | None


def require_role(role: Role) -> Callable[..., Principal]:
    """A dependency that admits keys of ``role`` or above (reader < writer < admin).

    With no API keys configured (the loopback default) it admits everyone; ``lifelong serve``
    refuses to bind a non-loopback address in that case.
    """

    def dependency(
        settings: SettingsDep,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        keys = settings.api_key_hashes
        if not keys:
            return Principal(role=None)
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise UnauthorizedError(
                "an API key is required: send 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        digest = hashlib.sha256(credentials.credentials.encode()).hexdigest()
        found: Role | None = None
        for stored, stored_role in keys.items():
            if hmac.compare_digest(stored, digest):
                found = stored_role
        if found is None:
            raise UnauthorizedError(
                "the API key is not valid", headers={"WWW-Authenticate": "Bearer"}
            )
        if _RANK[found] < _RANK[role]:
            raise ForbiddenError(f"this needs the role '{role}'; the key's role is '{found}'")
        return Principal(role=found)

    dependency.__name__ = f"require_{role}"
    return dependency


Reader = Depends(require_role("reader"))
Writer = Depends(require_role("writer"))
Admin = Depends(require_role("admin"))
