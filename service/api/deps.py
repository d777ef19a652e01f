"""Dependencies of the routes: the control plane, the job id, and (from ``service.api.auth``) the
role a route needs."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Path, Request

from service.api.auth import (
    JOB_ID,
    Admin,
    AdminKey,
    CurrentPrincipal,
    Reader,
    ReaderKey,
    Writer,
    require_role,
)
from service.api.metrics import Metrics
from service.jobs.access import Principal
from service.jobs.control import ControlPlane
from service.jobs.errors import BadRequestError, NotFoundError
from service.settings import Settings
from service.state.records import JobRecord

# Largest list offset: Redis takes 64-bit indexes, and offset + limit must stay below 2**63.
MAX_OFFSET = 2**53


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


def _query_names(dependant: Any) -> set[str]:
    names = {str(f.alias) for f in getattr(dependant, "query_params", [])}
    for sub in getattr(dependant, "dependencies", []):
        names |= _query_names(sub)
    return names


def no_unknown_query(request: Request) -> None:
    """Every route refuses query parameters it does not take (a misspelt ``limt=`` would
    otherwise be ignored without a word)."""
    route = request.scope.get("route")
    known = _query_names(getattr(route, "dependant", None))
    unknown = sorted({k for k in request.query_params if k not in known})
    if unknown:
        takes = f"it takes {', '.join(sorted(known))}" if known else "it takes none"
        shown = ", ".join(repr(k[:40]) for k in unknown[:5])
        raise BadRequestError(f"unknown query parameter {shown}; {takes}")


__all__ = [  # the access dependencies of service.api.auth, re-exported for the routes
    "JOB_ID",
    "MAX_OFFSET",
    "Admin",
    "AdminKey",
    "CurrentPrincipal",
    "ExistingJob",
    "JobId",
    "MetricsDep",
    "Plane",
    "Principal",
    "Reader",
    "ReaderKey",
    "SettingsDep",
    "Writer",
    "no_unknown_query",
    "require_role",
]
