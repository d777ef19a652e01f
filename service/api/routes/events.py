"""GET /v1/jobs/{id}/events: the job's event stream as Server-Sent Events."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query
from fastapi.sse import EventSourceResponse, ServerSentEvent

from service.api.deps import ExistingJob, MetricsDep, Plane, Reader, SettingsDep
from service.api.models import ErrorBody, EventPublic
from service.jobs.errors import BadRequestError

router = APIRouter(prefix="/v1/jobs/{job_id}", tags=["events"])

STREAM_ID = re.compile(r"^\d{1,20}(-\d{1,20})?$")


def event_start(
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            description="Resume after this event id (browsers send it on reconnect).",
        ),
    ] = None,
    after: Annotated[
        str | None,
        Query(description="Resume after this event id, for clients that cannot set headers."),
    ] = None,
) -> str:
    """Where the stream starts (a dependency, so that a bad id is a 400 before streaming)."""
    start = last_event_id if last_event_id is not None else after
    if start is None:
        return "0-0"
    if not STREAM_ID.match(start):
        raise BadRequestError(
            f"'{start[:40]}' is not an event id; resume with the 'id' of the last event "
            "received (like 1700000000000-0), or 0 for the start"
        )
    return start


@router.get(
    "/events",
    response_class=EventSourceResponse,
    dependencies=[Reader],
    responses={
        200: {"model": EventPublic, "description": "Events as text/event-stream."},
        400: {"model": ErrorBody, "description": "Last-Event-ID is not an event id."},
        404: {"model": ErrorBody, "description": "No such job."},
    },
)
async def stream_events(
    *,
    job: ExistingJob,
    plane: Plane,
    settings: SettingsDep,
    metrics: MetricsDep,
    start: Annotated[str, Depends(event_start)],
    follow: Annotated[
        bool,
        Query(description="Keep the stream open for new events (false: send what is stored)."),
    ] = True,
) -> AsyncIterator[ServerSentEvent]:
    """Status changes, observations, growth decisions with their reasons, command outcomes and
    pushes, oldest first, from the job's Redis stream (the newest ``LIFELONG_EVENTS_MAXLEN`` or
    so are kept). Each event's ``id`` is its stream id: reconnect with ``Last-Event-ID`` to get
    exactly the events after it. Idle streams get a keep-alive comment; a followed stream ends
    once the job is stopped or failed and quiet."""
    last = start
    metrics.event_streams.inc()
    try:
        if follow:
            async for event in plane.follow_events(
                job.id, last, keepalive_s=settings.sse_keepalive_s
            ):
                if event is None:
                    yield ServerSentEvent(comment="keep-alive")
                else:
                    yield ServerSentEvent(
                        id=event.id,
                        event=event.type,
                        raw_data=EventPublic.of(event).model_dump_json(),
                    )
        else:
            while events := await plane.stored_events(job.id, last, limit=1000):
                for event in events:
                    last = event.id
                    yield ServerSentEvent(
                        id=event.id,
                        event=event.type,
                        raw_data=EventPublic.of(event).model_dump_json(),
                    )
    finally:
        metrics.event_streams.dec()
