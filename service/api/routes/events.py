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
# Stated in the schema, checked by event_start (a 400 that says what an event id looks like).
_EVENT_ID = {"pattern": STREAM_ID.pattern, "examples": ["1700000000000-0"]}


def event_start(
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            description="Resume after this event id (browsers send it on reconnect).",
            json_schema_extra=_EVENT_ID,
        ),
    ] = None,
    after: Annotated[
        str | None,
        Query(
            description="Resume after this event id, for clients that cannot set headers.",
            json_schema_extra=_EVENT_ID,
        ),
    ] = None,
) -> str:
    """Where the stream starts (a dependency, so that a bad id is a 400 before streaming):
    Last-Event-ID when given, else ``after``; each one given must be an event id."""
    for given in (last_event_id, after):
        if given is not None and not STREAM_ID.match(given):
            raise BadRequestError(
                f"'{given[:40]}' is not an event id; resume with the 'id' of the last event "
                "received (like 1700000000000-0), or 0 for the start"
            )
    start = last_event_id if last_event_id is not None else after
    return "0-0" if start is None else start


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
