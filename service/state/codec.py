"""How the store's records are written to and read from Redis hashes and streams."""

from __future__ import annotations

import json
import time
from typing import Any

from redis.typing import EncodableT, FieldT

from service.jobs.spec import JobSpec
from service.state.records import CommandRecord, EventRecord, JobRecord, PushRecord
from service.state.states import CommandKind, CommandStatus, EventType, JobStatus


def s(value: Any) -> str:
    """A response value as text (the clients decode responses; the types say bytes | str)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def hash(h: Any) -> dict[str, str]:
    return {s(k): s(v) for k, v in h.items()}


def entries(entries: Any) -> list[tuple[str, dict[str, str]]]:
    """Stream entries from XRANGE / XREVRANGE (or one stream of an XREAD answer)."""
    return [(s(sid), hash(fields) if fields else {}) for sid, fields in entries or []]


def read_entries(response: Any) -> list[tuple[str, dict[str, str]]]:
    """The entries of the one stream asked for in an XREAD / XREADGROUP answer."""
    if not response:
        return []
    if isinstance(response, dict):  # RESP3
        return entries(next(iter(response.values()))[0])
    return entries(response[0][1])


def job_fields(job: JobRecord) -> list[Any]:
    return [
        "id", job.id,
        "name", job.name,
        "spec", job.spec.model_dump_json(),
        "status", job.status,
        "reason", job.reason or "",
        "generation", job.generation,
        "param_count", "" if job.param_count is None else job.param_count,
        "metrics", json.dumps(job.metrics),
        "created", job.created,
        "updated", job.updated,
    ]  # fmt: skip


def parse_job(h: dict[str, str]) -> JobRecord | None:
    if not h:
        return None
    return JobRecord(
        id=h["id"],
        name=h["name"],
        spec=JobSpec.model_validate_json(h["spec"]),
        status=JobStatus(h["status"]),
        reason=h.get("reason") or None,
        generation=int(h.get("generation") or 0),
        param_count=int(h["param_count"]) if h.get("param_count") else None,
        metrics=json.loads(h.get("metrics") or "{}"),
        created=float(h["created"]),
        updated=float(h["updated"]),
    )


def parse_push(h: dict[str, str]) -> PushRecord:
    return PushRecord(
        version=int(h["version"]),
        accepted=int(h["accepted"]),
        accepted_train=int(h["accepted_train"]),
        accepted_val=int(h["accepted_val"]),
        train_samples=int(h["train_samples"]),
        val_samples=int(h["val_samples"]),
        shards=int(h["shards"]),
        shard_ids=h["shard_ids"].split(",") if h.get("shard_ids") else [],
    )


def parse_command(h: dict[str, str]) -> CommandRecord | None:
    if not h:
        return None
    return CommandRecord(
        id=h["id"],
        kind=CommandKind(h["kind"]),
        args=json.loads(h.get("args") or "{}"),
        status=CommandStatus(h["status"]),
        detail=h.get("detail") or None,
        result=json.loads(h["result"]) if h.get("result") else None,
        created=float(h["created"]),
        updated=float(h["updated"]),
        stream_id=h["stream_id"],
    )


def event_fields(type: EventType, data: dict[str, Any]) -> dict[FieldT, EncodableT]:
    return {"type": str(type), "time": repr(time.time()), "data": json.dumps(data)}


def parse_event(stream_id: str, fields: dict[str, str]) -> EventRecord:
    return EventRecord(
        id=stream_id,
        type=EventType(fields["type"]),
        time=float(fields["time"]),
        data=json.loads(fields["data"]),
    )
