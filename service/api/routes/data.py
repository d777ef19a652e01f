"""POST /v1/jobs/{id}/data (push a batch) and GET /v1/jobs/{id}/data (the manifest)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response, status
from starlette.concurrency import run_in_threadpool

from service.api.deps import MAX_OFFSET, JobId, Plane, Reader, Writer
from service.api.idempotency import IDEMPOTENCY_KEY_SCHEMA
from service.api.models import DatasetDetail, DatasetPublic, ErrorBody, PushResult
from service.jobs.ingest import JSON, NPZ, PARQUET, SAFETENSORS, TEXT

router = APIRouter(prefix="/v1/jobs/{job_id}/data", tags=["data"])

_BINARY = {"type": "string", "format": "binary"}
_PUSH_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "A batch of samples. Binary formats hold two arrays, 'features' "
        "(N, *input_shape) or (N, prod(input_shape)), any real dtype (float32 is stored), and "
        "'labels': (N,) integer class indices for classification, (N, outputs) or (N,) numbers "
        "for regression. safetensors is the fastest to read (see docs/api.md). A "
        "language-modelling job takes text instead: text/plain (UTF-8, one document), JSON "
        "{\"texts\": [...]} (one document each), or safetensors 'tokens' (T,) int32/int64 ids "
        "with 'doc_offsets' (D+1,) (0, end of document 1, ..., T) or without (one document).",
        "content": {
            SAFETENSORS: {"schema": _BINARY},
            NPZ: {"schema": _BINARY},
            PARQUET: {"schema": _BINARY},
            JSON: {
                "schema": {
                    "anyOf": [
                        {
                            "type": "object",
                            "required": ["features", "labels"],
                            "additionalProperties": False,
                            "properties": {
                                "features": {"type": "array", "items": {}},
                                "labels": {"type": "array", "items": {}},
                            },
                        },
                        {
                            "type": "object",
                            "required": ["texts"],
                            "additionalProperties": False,
                            "properties": {"texts": {"type": "array", "items": {"type": "string"}}},
                        },
                    ]
                },
                "examples": {
                    "two samples": {
                        "value": {"features": [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], "labels": [0, 2]}
                    },
                    "two documents (language modelling)": {
                        "value": {"texts": ["To be, or not to be", "that is the question"]}
                    },
                },
            },
            TEXT: {"schema": {"type": "string"}, "example": "First Citizen: Before we proceed"},
        },
    }
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    dependencies=[Writer],
    openapi_extra=_PUSH_BODY,
    responses={
        400: {"model": ErrorBody, "description": "The body cannot be read in its format."},
        404: {"model": ErrorBody, "description": "No such job."},
        409: {
            "model": ErrorBody,
            "description": "The job is stopped or failed, or the Idempotency-Key was used for "
            "another body.",
        },
        413: {
            "model": ErrorBody,
            "description": "Too many bytes, samples, documents, or tokens in a document.",
        },
        415: {
            "model": ErrorBody,
            "description": "Unsupported Content-Type, or one this job's task does not take.",
        },
        422: {
            "model": ErrorBody,
            "description": "Shape, dtype, values or labels do not fit; an empty document, a "
            "token id outside the vocabulary.",
        },
    },
)
async def push_data(
    job_id: JobId,
    request: Request,
    response: Response,
    plane: Plane,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="Makes retries safe: a retry with the same key and body returns the "
            "original answer (with 'Idempotent-Replayed: true') and stores nothing.",
            examples=["0b8f5d0e-6c53-4c35-9a9b-2f0f0d2f8d10"],
            json_schema_extra=IDEMPOTENCY_KEY_SCHEMA,
        ),
    ] = None,
) -> PushResult:
    """Validate a batch against the job's schema, write it as durable shards (fsynced), then
    append them to the manifest; only then answer. A share of the samples (the job's
    val_fraction), chosen by a hash of each sample, goes to validation. For a
    language-modelling job the samples are tokens, and each document goes whole to the split
    that a hash of its bytes chooses."""
    body = await request.body()
    outcome = await run_in_threadpool(
        plane.push, job_id, body, request.headers.get("content-type"), idempotency_key
    )
    if outcome.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return PushResult.of(job_id, outcome.record)


@router.get(
    "",
    dependencies=[Reader],
    responses={404: {"model": ErrorBody, "description": "No such job."}},
)
def get_dataset(
    job_id: JobId,
    plane: Plane,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="First shard to list.")] = 0,
    limit: Annotated[int, Query(ge=0, le=10_000, description="Shards to list (0: none).")] = 100,
) -> DatasetDetail:
    """The manifest: totals (samples per split, shards, bytes, version) and a page of shards."""
    summary, shards = plane.dataset(job_id, shard_offset=offset, shard_limit=limit)
    return DatasetDetail(
        **DatasetPublic.of(summary).model_dump(), job_id=job_id, offset=offset, items=shards
    )
