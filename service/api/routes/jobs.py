"""POST /v1/jobs, GET /v1/jobs, GET /v1/jobs/{id}, DELETE /v1/jobs/{id}."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status
from starlette.concurrency import run_in_threadpool

from service.api.auth import AccessDep, AdminKey, ReaderKey
from service.api.deps import MAX_OFFSET, Admin, JobId, Plane, Reader
from service.api.idempotency import Idempotent
from service.api.models import JOB_EXAMPLE, ErrorBody, JobDeleted, JobList, JobPublic
from service.state.records import DatasetSummary

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
EMPTY_DATASET = DatasetSummary(version=0, train_samples=0, val_samples=0, shards=0, bytes=0)

_SPEC_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"$ref": "#/components/schemas/JobCreate"},
                "examples": {
                    "mlp": {"summary": "An MLP classifier on 8×8 digits", "value": JOB_EXAMPLE},
                    "regression": {
                        "summary": "A regression with three outputs",
                        "value": {
                            "name": "sensors",
                            "task": {"kind": "regression", "input_shape": [16], "num_outputs": 3},
                            "model": {"family": "mlp", "hidden": [64]},
                        },
                    },
                },
            }
        },
    }
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    openapi_extra=_SPEC_BODY,
    responses={
        400: {"model": ErrorBody, "description": "The body is not JSON."},
        409: {
            "model": ErrorBody,
            "description": "The deployment holds its maximum of jobs, or the Idempotency-Key was "
            "used for another request (or its first request is still being answered).",
        },
        422: {"model": ErrorBody, "description": "The spec has problems; 'errors' lists each."},
    },
)
async def create_job(
    *,
    request: Request,
    response: Response,
    plane: Plane,
    who: AdminKey,
    access: AccessDep,
    replay: Idempotent,
) -> JobPublic:
    """Create a job from a spec. The whole spec is validated first, and every problem comes back
    in one answer; nothing is stored unless the spec is valid. A key limited to a tenant or a set
    of jobs puts the new job in its scope."""
    body = await request.body()

    async def create() -> JobPublic:
        job = await run_in_threadpool(plane.create_job, body)
        await access.adopt(who, job.id)
        return JobPublic.of(job, EMPTY_DATASET)

    job = await replay.run(response, body, create, JobPublic)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return job


@router.get("")
async def list_jobs(
    plane: Plane,
    who: ReaderKey,
    access: AccessDep,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> JobList:
    """Jobs in creation order, with status, generation, parameters, dataset and latest metrics:
    those in the key's scope only."""
    visible = await access.visible_jobs(who)
    jobs, total = await run_in_threadpool(
        plane.list_jobs, offset=offset, limit=limit, among=visible
    )
    return JobList(
        jobs=[JobPublic.of(job, dataset) for job, dataset in jobs],
        total=total,
        offset=offset,
        limit=limit,
    )


@router.get(
    "/{job_id}",
    dependencies=[Reader],
    responses={404: {"model": ErrorBody, "description": "No such job."}},
)
def get_job(job_id: JobId, plane: Plane) -> JobPublic:
    """One job: status (and why), generation, parameter count, dataset size, latest metrics."""
    job, dataset = plane.get_job(job_id)
    return JobPublic.of(job, dataset)


@router.delete(
    "/{job_id}",
    dependencies=[Admin],
    responses={
        404: {"model": ErrorBody, "description": "No such job."},
        409: {
            "model": ErrorBody,
            "description": "The job is not stopped or failed, its lease is held (its supervisor "
            "closing it, or the API logging its last MLflow operations), MLflow operations "
            "are still waiting to be logged (see 'force'), or the Idempotency-Key was used for "
            "another request.",
        },
    },
)
async def delete_job(
    job_id: JobId,
    plane: Plane,
    response: Response,
    replay: Idempotent,
    force: Annotated[
        bool,
        Query(description="Delete even if MLflow operations of the job were never logged."),
    ] = False,
) -> JobDeleted:
    """Delete a stopped or failed job: its state, its data and its checkpoints. It no longer
    counts towards the deployment's maximum of jobs. Its MLflow experiment, runs and registered
    model versions stay. Stop a running job first (POST /v1/jobs/{id}/stop)."""

    async def delete() -> JobDeleted:
        outcome = await run_in_threadpool(plane.delete_job, job_id, force=force)
        return JobDeleted(**asdict(outcome))

    return await replay.run(response, b"force" if force else b"", delete, JobDeleted)
