"""Commands to a job: grow, pause, resume, stop (queued for its supervisor), and their outcomes."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query, Response, status

from growth_policy import GrowthOp
from service.api.deps import Admin, JobId, Plane, Reader
from service.api.models import CommandList, CommandPublic, ErrorBody
from service.state.records import CommandRecord
from service.state.states import CommandKind

router = APIRouter(prefix="/v1/jobs/{job_id}", tags=["commands"])

_QUEUED: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "No such job."},
    409: {"model": ErrorBody, "description": "The job is stopped or failed."},
}
_GROW_EXAMPLES = {
    "widen": {"summary": "Widen every group ×2", "value": {"op": "widen", "factor": 2}},
    "widen groups": {
        "summary": "Widen named groups to given widths",
        "value": {"op": "widen", "widths": {"hidden.0": 128}},
    },
    "deepen": {
        "summary": "Insert an identity layer after a module",
        "value": {"op": "deepen", "after": "hidden.1"},
    },
}


def _accepted(job_id: str, command: CommandRecord, response: Response) -> CommandPublic:
    response.headers["Location"] = f"/v1/jobs/{job_id}/commands/{command.id}"
    return CommandPublic.of(job_id, command)


@router.post("/grow", status_code=status.HTTP_202_ACCEPTED, dependencies=[Admin], responses=_QUEUED)
def grow(
    job_id: JobId,
    op: Annotated[GrowthOp, Body(openapi_examples=_GROW_EXAMPLES)],
    plane: Plane,
    response: Response,
) -> CommandPublic:
    """Ask for a growth now. It goes through the job's growth controller (hard limits apply) and
    is applied on every worker at the same step; the command's outcome says what happened."""
    return _accepted(job_id, plane.command(job_id, CommandKind.GROW, op), response)


@router.post(
    "/pause", status_code=status.HTTP_202_ACCEPTED, dependencies=[Admin], responses=_QUEUED
)
def pause(job_id: JobId, plane: Plane, response: Response) -> CommandPublic:
    """Pause training at the next step (the model and data stay; pushes are still accepted)."""
    return _accepted(job_id, plane.command(job_id, CommandKind.PAUSE), response)


@router.post(
    "/resume", status_code=status.HTTP_202_ACCEPTED, dependencies=[Admin], responses=_QUEUED
)
def resume(job_id: JobId, plane: Plane, response: Response) -> CommandPublic:
    """Resume a paused job."""
    return _accepted(job_id, plane.command(job_id, CommandKind.RESUME), response)


@router.post("/stop", status_code=status.HTTP_202_ACCEPTED, dependencies=[Admin], responses=_QUEUED)
def stop(job_id: JobId, plane: Plane, response: Response) -> CommandPublic:
    """Stop the job for good after a last checkpoint; a stopped job takes no data or commands."""
    return _accepted(job_id, plane.command(job_id, CommandKind.STOP), response)


@router.get(
    "/commands",
    dependencies=[Reader],
    responses={404: {"model": ErrorBody, "description": "No such job."}},
)
def list_commands(
    job_id: JobId, plane: Plane, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> CommandList:
    """The job's latest commands, newest first, each with its status and outcome."""
    commands = plane.list_commands(job_id, limit=limit)
    return CommandList(commands=[CommandPublic.of(job_id, c) for c in commands])


@router.get(
    "/commands/{command_id}",
    dependencies=[Reader],
    responses={404: {"model": ErrorBody, "description": "No such job or command."}},
)
def get_command(
    job_id: JobId,
    command_id: Annotated[
        str, Path(pattern=r"^cmd_[0-9a-f]{16}$", examples=["cmd_8d0c52a4e1f34b7a"])
    ],
    plane: Plane,
) -> CommandPublic:
    """One command: queued, in_progress, done, rejected or failed, with the outcome."""
    return CommandPublic.of(job_id, plane.get_command(job_id, command_id))
