"""A job's generations: their lineage, their weights, and predictions from them."""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Query, Response
from starlette.concurrency import run_in_threadpool

from service.api.deps import ExistingJob, JobId, Plane, Reader
from service.api.models import (
    ErrorBody,
    GenerationList,
    GenerationPublic,
    PredictRequest,
    PredictResult,
)
from service.jobs import text_ingest
from service.jobs.errors import InvalidError
from service.jobs.ingest import SAFETENSORS, check_features
from service.runtime.exports import MEDIA_TYPES, SUFFIXES, ExportFormat
from service.state.records import JobRecord

router = APIRouter(prefix="/v1/jobs/{job_id}", tags=["generations"])

_NOT_READY: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "No such job or generation."},
    409: {"model": ErrorBody, "description": "No checkpoint of that generation exists yet."},
}
Generation = Annotated[
    int | None, Query(ge=0, description="A generation number; default the newest.")
]
Format = Annotated[
    ExportFormat, Query(description="safetensors (weights), onnx, or pt2 (torch.export).")
]


@router.get("/generations", dependencies=[Reader], responses=_NOT_READY)
def list_generations(job: ExistingJob, plane: Plane) -> GenerationList:
    """Every generation of the job's model, with its growth op and reason, preservation error,
    parameter count, latest metrics, MLflow run and registered model version."""
    ledger = plane.serving.ledger(job.id)
    runs = ledger.tracked_ids()
    generations = [
        GenerationPublic(
            generation=r.generation,
            parent=r.parent,
            op=r.op,
            policy=r.policy,
            reason=r.reason,
            started_step=r.started_step,
            closed_step=r.closed_step,
            param_count=r.param_count,
            max_abs_error=r.max_abs_error,
            val_metric_before=r.val_metric_before,
            val_metric_after=r.val_metric_after,
            metrics=r.metrics,
            checkpoint_step=r.checkpoint_step,
            mlflow_run_id=runs.runs.get(r.generation),
            model_version=runs.versions.get(r.generation),
        )
        for r in ledger.records()
    ]
    return GenerationList(
        job_id=job.id,
        experiment=runs.experiment_id,
        model_name=runs.model_name,
        generations=generations,
    )


@router.get(
    "/model",
    dependencies=[Reader],
    responses={
        **_NOT_READY,
        200: {
            "content": {SAFETENSORS: {}, MEDIA_TYPES["onnx"]: {}, MEDIA_TYPES["pt2"]: {}},
            "description": "The model in the format asked for. safetensors: the weights, the "
            "architecture (base spec and growth records) in the file's metadata under "
            "'lifelong.architecture'; onnx: torch's ONNX exporter, input 'features' with a "
            "dynamic batch, output 'outputs'; pt2: a torch.export program (torch.export.load). "
            "The generation is in the 'Lifelong-Generation' header.",
        },
    },
    response_class=Response,
)
async def model_weights(
    job_id: JobId, plane: Plane, generation: Generation = None, format: Format = "safetensors"
) -> Response:
    """A generation's model: its weights (safetensors, rebuilt with
    ``workers.checkpoint.rebuild_model(task, model, records)`` and ``load_state_dict``), or the
    whole model as ONNX or a ``torch.export`` program."""
    plane.require_job(job_id)
    payload, architecture = await run_in_threadpool(
        plane.serving.export, job_id, generation, format
    )
    media = SAFETENSORS if format == "safetensors" else MEDIA_TYPES[format]
    filename = f"{job_id}-gen{architecture['generation']}.{SUFFIXES[format]}"
    return Response(
        payload,
        media_type=media,
        headers={
            "Lifelong-Generation": str(architecture["generation"]),
            "Content-Disposition": f'attachment; filename="{filename}"',
        },
    )


@router.get("/model/architecture", dependencies=[Reader], responses=_NOT_READY)
async def model_architecture(
    job_id: JobId, plane: Plane, generation: Generation = None
) -> dict[str, Any]:
    """A generation's architecture: the task, the base model spec and the growth records that
    replay onto it (``net2net.replay``), with its parameter count."""
    plane.require_job(job_id)
    architecture: dict[str, Any] = await run_in_threadpool(
        plane.serving.architecture, job_id, generation
    )
    return architecture


@router.post(
    "/predict",
    dependencies=[Reader],
    responses={
        **_NOT_READY,
        422: {
            "model": ErrorBody,
            "description": "Features do not fit; texts to a job that is not a language model, "
            "or features to one; a text shorter than 2 tokens, ids outside the vocabulary.",
        },
    },
)
async def predict(job: ExistingJob, body: PredictRequest, plane: Plane) -> PredictResult:
    """Predictions from the newest generation (or a given one) for a batch of inputs; for a
    language-modelling job, the loss and perplexity of each text (``texts`` or ``ids``)."""
    task = job.spec.task
    if text_ingest.is_language_modeling(task) or body.features is None:
        return await _score(job, body, plane)
    if body.texts is not None or body.ids is not None:
        raise InvalidError(
            f"'texts' and 'ids' are scored by language-modelling jobs; job '{job.id}' learns "
            f"{task.kind}: send 'features' alone"
        )
    try:
        features = np.asarray(body.features, dtype=np.float64)
    except (ValueError, TypeError):
        raise InvalidError(
            "'features' must be a rectangular array of numbers, one row per sample"
        ) from None
    if features.ndim < 2:
        raise InvalidError("'features' must hold a list of samples (at least 2 dimensions)")
    checked = check_features(features, job.spec.task)
    answer = await run_in_threadpool(plane.serving.predict, job.id, checked, body.generation)
    return PredictResult(**answer)


async def _score(job: JobRecord, body: PredictRequest, plane: Plane) -> PredictResult:
    text_ingest.require_language_modeling(job.id, job.spec.task, "scoring 'texts' or 'ids'")
    if body.features is not None:
        raise InvalidError(
            f"job '{job.id}' learns language: send 'texts' (or 'ids') to score, not 'features'"
        )
    if body.texts is None and body.ids is None:
        raise InvalidError("send 'texts' (or 'ids' for tokenizer 'ids') to score")
    sequences = text_ingest.scored_ids(body.texts, body.ids, job.spec.task)
    answer = await run_in_threadpool(plane.serving.score, job.id, sequences, body.generation)
    return PredictResult(**answer)
