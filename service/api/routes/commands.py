"""Commands to a job: grow, pause, resume, stop (queued for its supervisor), and their outcomes."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query, Request, Response, status
from starlette.concurrency import run_in_threadpool

from growth_policy import GrowthOp
from service.api.deps import Admin, JobId, Plane, Reader
from service.api.idempotency import Idempotent, Replayable
from service.api.models import CommandList, CommandPublic, ErrorBody
from service.jobs.control import ControlPlane
from service.state.states import CommandKind

router = APIRouter(prefix="/v1/jobs/{job_id}", tags=["commands"])

_QUEUED: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "No such job."},
    409: {
        "model": ErrorBody,
        "description": "The job is stopped or failed, or the Idempotency-Key was used for "
        "another request (or its first request is still being answered).",
    },
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


async def _queue(
    job_id: str,
    kind: CommandKind,
    *,
    plane: ControlPlane,
    response: Response,
    replay: Replayable,
    body: bytes = b"",
    op: GrowthOp | None = None,
) -> CommandPublic:
    async def queue() -> CommandPublic:
        command = await run_in_threadpool(plane.command, job_id, kind, op)
        return CommandPublic.of(job_id, command)

    command = await replay.run(response, body, queue, CommandPublic)
    response.headers["Location"] = f"/v1/jobs/{job_id}/commands/{command.id}"
    return command


@router.post("/grow", status_code=status.HTTP_202_ACCEPTED, dependencies=[Admin], responses=_QUEUED)
async def grow(
    *,
    job_id: JobId,
    op: Annotated[GrowthOp, Body(openapi_examples=_GROW_EXAMPLES)],
    request: Request,
    plane: Plane,
    response: Response,
    replay: Idempotent,
) -> CommandPublic:
    """Ask for a growth now. It goes through the job's growth controller (hard limits apply) and
    is applied on every worker at the same step; the command's outcome says what happened."""
    body = await request.body()
    return await _queue(
        job_id, CommandKind.GROW, plane=plane, response=response, replay=replay, body=body, op=op
    )


@router.post(
    "/pause", status_code=status.HTTP_202_ACCEPTED, dependencies=[Admin], responses=_QUEUED
)
async def pause(
    job_id: JobId, plane: Plane, response: Response, replay: Idempotent
) -> CommandPublic:
    """Pause training at the next step (the model and data stay; pushes are still accepted)."""
    return await _queue(job_id, CommandKind.PAUSE, plane=plane, response=response, replay=replay)


@router.post(
    "/resume", status_code=status.HTTP_202_ACCEPTED, dependencies=[Admin], responses=_QUEUED
)
async def resume(
    job_id: JobId, plane: Plane, response: Response, replay: Idempotent
) -> CommandPublic:
    """Resume a paused job."""
    return await _queue(job_id, CommandKind.RESUME, plane=plane, response=response, replay=replay)


@router.post("/stop", status_code=status.HTTP_202_ACCEPTED, dependencies=[Admin], responses=_QUEUED)
async def stop(
    job_id: JobId, plane: Plane, response: Response, replay: Idempotent
) -> CommandPublic:
    """Stop the job for good after a last checkpoint; a stopped job takes no data or commands."""
    return await _queue(job_id, CommandKind.STOP, plane=plane, response=response, replay=replay)


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
