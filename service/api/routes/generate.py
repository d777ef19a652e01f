"""POST /v1/jobs/{id}/generate: text from a language-modelling job, as JSON or streamed (SSE)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.sse import EventSourceResponse, format_sse_event
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from service.api.deps import ExistingJob, Plane, Reader
from service.api.models import ErrorBody, GeneratedToken, GenerateRequest, GenerateResult
from service.jobs import text_ingest
from service.runtime.serving import Sampling, TokenText

router = APIRouter(prefix="/v1/jobs/{job_id}", tags=["generations"])
log = logging.getLogger("lifelong.service")

EVENT_STREAM = "text/event-stream"
_STREAM_DOC = (
    "With 'Accept: text/event-stream' (or \"stream\": true), Server-Sent Events: one 'token' "
    "event per new token (its index, id and text), then one 'done' event whose data is the "
    "whole answer as in JSON (or an 'error' event, should the model fail mid-way)."
)


@router.post(
    "/generate",
    dependencies=[Reader],
    response_model=GenerateResult,
    responses={
        200: {
            "description": "The new tokens and their text. " + _STREAM_DOC,
            "content": {EVENT_STREAM: {"schema": GeneratedToken.model_json_schema()}},
        },
        404: {"model": ErrorBody, "description": "No such job or generation."},
        409: {"model": ErrorBody, "description": "No checkpoint of that generation exists yet."},
        422: {
            "model": ErrorBody,
            "description": "Not a language-modelling job; a prompt that is missing, empty, "
            "too long for the context, or with ids outside the vocabulary; top_k above it.",
        },
    },
)
async def generate(
    job: ExistingJob, body: GenerateRequest, plane: Plane, request: Request
) -> Response | GenerateResult:
    """Continue a prompt with the job's model: ``max_new_tokens`` tokens sampled at
    ``temperature`` (0: greedy) among the ``top_k`` most likely, repeatable with a ``seed``. The
    generation that serves is the one ``predict`` uses (the 'champion' release by default)."""
    task = job.spec.task
    text_ingest.require_language_modeling(job.id, task, "generate")
    prompt = text_ingest.prompt_ids(body.prompt, body.prompt_ids, task, top_k=body.top_k)
    sampling = Sampling(body.max_new_tokens, body.temperature, body.top_k, body.seed)
    served, model_task, tokens = await run_in_threadpool(
        plane.serving.generate, job.id, prompt, sampling, body.generation
    )
    header = {**served, "prompt_tokens": len(prompt)}
    text = TokenText(model_task)
    if body.stream or EVENT_STREAM in request.headers.get("accept", ""):
        return EventSourceResponse(
            _events(job.id, tokens, text, header),
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    ids = await run_in_threadpool(list, tokens)
    return GenerateResult(**header, ids=ids, text=text.whole(ids))


async def _events(
    job_id: str, tokens: Iterator[int], text: TokenText, header: dict[str, Any]
) -> AsyncIterator[bytes]:
    """The stream: each token as it comes (the model runs in a worker thread, one token per
    step, so the event loop stays free), then the whole answer."""
    ids: list[int] = []
    try:
        async for token in iterate_in_threadpool(tokens):
            event = GeneratedToken(index=len(ids), id=token, text=text.piece(token))
            ids.append(token)
            yield format_sse_event(event="token", data_str=event.model_dump_json())
    except Exception as exc:  # the answer has started: say so in the stream, then end it
        log.exception("generation for job %s failed after %d tokens", job_id, len(ids))
        detail = ErrorBody(detail=f"the generation failed after {len(ids)} tokens: {exc}")
        yield format_sse_event(event="error", data_str=detail.model_dump_json())
        return
    done = GenerateResult(**header, ids=ids, text=text.whole(ids))
    yield format_sse_event(event="done", data_str=done.model_dump_json())
