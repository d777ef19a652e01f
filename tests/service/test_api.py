"""The whole life cycle of a job over real HTTP (uvicorn) and a real Redis, without training."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from growth_policy import GrowthOp
from service.client import LifelongClient, encode_batch
from service.settings import Settings
from service.state.states import CommandStatus, EventType, JobStatus
from service.state.store import RedisStore
from tests.service.conftest import JOB_SPEC, LiveServer, batch, live_server
from workers.shards import ShardStore

pytestmark = pytest.mark.integration


def test_health_ready_and_openapi(client: LifelongClient, server: LiveServer) -> None:
    assert client.health().status == "ok"
    ready = client.ready()
    assert ready.status == "ready" and ready.checks["redis"].startswith("ok")
    assert ready.checks["storage"] == "ok"
    schema = httpx.get(f"{server.url}/openapi.json").json()
    paths = schema["paths"]
    for path in (
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/data",
        "/v1/jobs/{job_id}/grow",
        "/v1/jobs/{job_id}/pause",
        "/v1/jobs/{job_id}/resume",
        "/v1/jobs/{job_id}/stop",
        "/v1/jobs/{job_id}/events",
        "/v1/jobs/{job_id}/commands/{command_id}",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        assert path in paths, path
    create = paths["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]
    assert create["schema"] == {"$ref": "#/components/schemas/JobCreate"}
    assert "JobCreate" in schema["components"]["schemas"] and create["examples"]
    push = paths["/v1/jobs/{job_id}/data"]["post"]["requestBody"]["content"]
    assert set(push) == {
        "application/x-safetensors",
        "application/x-npz",
        "application/vnd.apache.parquet",
        "application/json",
        "text/plain",  # language-modelling jobs
    }
    assert paths["/v1/jobs/{job_id}/grow"]["post"]["requestBody"]["content"]["application/json"][
        "examples"
    ]


def test_job_life_cycle(client: LifelongClient, server: LiveServer, store: RedisStore) -> None:
    job = client.create_job(JOB_SPEC)
    assert job.status == JobStatus.PENDING
    assert job.param_count == 8 * 16 + 16 + 16 * 4 + 4
    assert job.dataset.version == 0 and job.dataset.samples == 0
    assert [j.id for j in client.list_jobs().jobs] == [job.id]

    # Push in every format; each push is one dataset version.
    pushed = 0
    for version, fmt in enumerate(["json", "safetensors", "npz", "parquet"], start=1):
        x, y = batch(200, start=pushed, seed=version)
        result = client.push(job.id, x, y, format=fmt)  # type: ignore[arg-type]
        pushed += 200
        assert result.version == version
        assert result.accepted == 200 and result.accepted_train + result.accepted_val == 200
        assert result.samples == pushed
        assert 20 < result.accepted_val < 80  # val_fraction 0.25 of 200, by hash

    manifest = client.dataset(job.id)
    assert manifest.version == 4 and manifest.samples == 800
    assert manifest.shards == 8 == len(manifest.items)
    assert [s.version for s in manifest.items] == [1, 1, 2, 2, 3, 3, 4, 4]
    assert client.dataset(job.id, limit=0).items == []
    assert len(client.dataset(job.id, offset=6, limit=5).items) == 2

    # What the API acknowledged is what the workers read: same shards, same samples.
    worker_view = store.manifest_source(job.id).load()
    assert [s.shard_id for s in worker_view.shards] == [s.shard_id for s in manifest.items]
    shards = ShardStore(server.settings.data_root_uri)
    index = np.concatenate([shards.read(s)[0][:, 0] for s in worker_view.shards])
    assert sorted(index.astype(int).tolist()) == list(range(800))
    assert len(server.shard_files(job.id)) == 8

    listed = client.get_job(job.id)
    assert listed.dataset.train_samples == worker_view.train_size
    assert listed.dataset.val_samples == worker_view.val_size

    # Commands are queued with ids; their outcome shows up once the supervisor records it.
    grow = client.grow(job.id, "widen", factor=2)
    deepen = client.grow(job.id, GrowthOp(op="deepen", after="act1"))
    pause, resume = client.pause(job.id), client.resume(job.id)
    assert grow.status == CommandStatus.QUEUED and grow.args == {"op": "widen", "factor": 2.0}
    assert deepen.args == {"op": "deepen", "after": "act1"}
    assert [c.id for c in client.commands(job.id)] == [resume.id, pause.id, deepen.id, grow.id]
    queued = store.read_commands(job.id, block_ms=10, count=10)
    assert [c.id for c in queued] == [grow.id, deepen.id, pause.id, resume.id]
    store.update_command(job.id, grow.id, CommandStatus.DONE, "widened ×2", {"generation": 1})
    outcome = client.wait_command(job.id, grow.id, timeout=5)
    assert outcome.status == CommandStatus.DONE and outcome.result == {"generation": 1}

    # The supervisor's status changes are the job's status.
    store.set_status(job.id, JobStatus.TRAINING)
    assert client.get_job(job.id).status == JobStatus.TRAINING

    stop = client.stop(job.id)
    store.update_command(job.id, stop.id, CommandStatus.DONE)
    store.set_status(job.id, JobStatus.STOPPED, "stopped by command")
    final = client.get_job(job.id)
    assert final.status == JobStatus.STOPPED and final.reason == "stopped by command"

    # The whole story is in the event stream, in order; the stream ends as the job has ended.
    events = list(client.events(job.id))
    kinds = [e.type for e in events]
    assert kinds[0] == EventType.STATUS and kinds[-1] == EventType.STATUS
    assert [e.data["version"] for e in events if e.type == EventType.DATA] == [1, 2, 3, 4]
    assert [e.data["status"] for e in events if e.type == EventType.STATUS] == [
        "pending",
        "training",
        "stopped",
    ]
    commands = [(e.data["kind"], e.data["status"]) for e in events if e.type == EventType.COMMAND]
    assert commands == [
        ("grow", "queued"),
        ("grow", "queued"),
        ("pause", "queued"),
        ("resume", "queued"),
        ("grow", "done"),
        ("stop", "queued"),
        ("stop", "done"),
    ]
    ids = [e.id for e in events]
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))

    # Resuming after any event gives exactly the events after it.
    middle = events[5].id
    assert [e.id for e in client.events(job.id, last_event_id=middle)] == ids[6:]


def test_events_follow_live_and_resume_with_last_event_id(
    client: LifelongClient, server: LiveServer, store: RedisStore
) -> None:
    job = client.create_job(JOB_SPEC)
    received: list[str] = []
    seen_two = threading.Event()

    def follow() -> None:
        for event in client.events(job.id):
            received.append(event.id)
            if len(received) == 2:
                seen_two.set()
                return  # the client goes away mid-stream

    reader = threading.Thread(target=follow)
    reader.start()
    x, y = batch(10)
    client.push(job.id, x, y)  # event 2: the push
    assert seen_two.wait(10)
    reader.join(10)

    # While nobody listens, more happens.
    client.push(job.id, *batch(10, start=10))
    client.pause(job.id)
    store.set_status(job.id, JobStatus.STOPPED)

    # Reconnect as a browser would, with the last id seen: the rest, nothing twice.
    with httpx.stream(
        "GET",
        f"{server.url}/v1/jobs/{job.id}/events",
        headers={"Last-Event-ID": received[-1]},
        timeout=10,
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        text = "".join(response.iter_text())
    ids = [line[4:] for line in text.splitlines() if line.startswith("id: ")]
    types = [line[7:] for line in text.splitlines() if line.startswith("event: ")]
    assert types == ["data", "command", "status"]
    assert len(set(ids) | set(received)) == 5

    # The query parameter works too, and follow=false sends what is stored and ends.
    response = httpx.get(
        f"{server.url}/v1/jobs/{job.id}/events",
        params={"after": received[0], "follow": "false"},
        timeout=10,
    )
    assert response.text.count("\nid: ") == 4


def test_event_stream_keeps_alive_and_ends_when_the_client_leaves(
    client: LifelongClient, server: LiveServer
) -> None:
    job = client.create_job(JOB_SPEC)
    with httpx.stream("GET", f"{server.url}/v1/jobs/{job.id}/events", timeout=10) as response:
        lines = response.iter_lines()
        assert next(lines) == "event: status"
        started = time.monotonic()
        comment = next(line for line in lines if line.startswith(":"))
        assert comment == ": keep-alive"
        assert time.monotonic() - started < 2  # sse_keepalive_s = 0.3 in the tests
        assert _gauge(server, "lifelong_event_streams_open") == 1
    deadline = time.monotonic() + 5
    while _gauge(server, "lifelong_event_streams_open") != 0:
        assert time.monotonic() < deadline, "the stream did not end after the client left"
        time.sleep(0.05)


def _gauge(server: LiveServer, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    line = next(ln for ln in text.splitlines() if ln.startswith(name + " "))
    return float(line.split()[1])


def test_metrics_count_requests_by_route_and_samples(
    client: LifelongClient, server: LiveServer
) -> None:
    job = client.create_job(JOB_SPEC)
    body, content_type = encode_batch(*batch(100), "safetensors")
    client.push_bytes(job.id, body, content_type)
    client.get_job(job.id)
    text = httpx.get(f"{server.url}/metrics").text
    assert (
        'lifelong_http_requests_total{method="POST",route="/v1/jobs/{job_id}/data",status="201"} 1.0'
        in text
    )
    assert (
        'lifelong_http_requests_total{method="GET",route="/v1/jobs/{job_id}",status="200"} 1.0'
        in text
    )
    assert 'lifelong_http_request_duration_seconds_count{method="POST",route="/v1/jobs"}' in text
    train = float(text.split('lifelong_ingest_samples_total{split="train"} ')[1].split()[0])
    val = float(text.split('lifelong_ingest_samples_total{split="val"} ')[1].split()[0])
    assert train + val == 100
    assert f'lifelong_ingest_body_bytes_total{{format="safetensors"}} {float(len(body))}' in text
    assert job.id not in text  # raw paths never become label values


def test_readyz_says_what_is_missing(settings: Settings, tmp_path: Path) -> None:
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("x")
    broken = Settings(
        **{**settings.model_dump(), "redis_url": "redis://127.0.0.1:1/0", "data_root": str(blocked)}
    )
    with live_server(broken) as server:
        response = httpx.get(f"{server.url}/readyz", timeout=30)
        assert response.status_code == 503
        detail = response.json()["detail"]
        assert detail.startswith("not ready: redis unreachable: ConnectionError")
        assert "storage unusable" in detail
        assert httpx.get(f"{server.url}/healthz").status_code == 200
        response = httpx.get(f"{server.url}/v1/jobs", timeout=30)
        assert response.status_code == 503
        assert response.json() == {
            "detail": "the state store (Redis) is unreachable; retry shortly"
        }


def test_restarted_api_finds_its_jobs(
    settings: Settings, client: LifelongClient, server: LiveServer
) -> None:
    job = client.create_job(JOB_SPEC)
    client.push(job.id, *batch(50))
    with live_server(settings) as second, LifelongClient(second.url) as other:
        again = other.get_job(job.id)
        assert again.dataset.samples == 50 and again.spec.name == "digits"


def test_hooks_for_the_supervisor_launcher(client: LifelongClient, server: LiveServer) -> None:
    plane = server.server.config.app.state.plane
    started: list[str] = []
    plane.on_job_created = lambda job: started.append(job.id)
    job = client.create_job(JOB_SPEC)
    assert started == [job.id]

    def broken(job: object) -> None:
        raise RuntimeError("Ray is away")

    plane.on_job_created = broken  # the job is stored all the same; a reconciler starts it later
    assert client.create_job(JOB_SPEC).status == JobStatus.PENDING

    plane.readiness_checks["ray"] = lambda: "connecting to 127.0.0.1:6380"
    response = httpx.get(f"{server.url}/readyz")
    assert response.status_code == 503
    assert response.json()["detail"].endswith("ray connecting to 127.0.0.1:6380")
    plane.readiness_checks["ray"] = lambda: "ok (2 nodes)"
    assert client.ready().checks["ray"] == "ok (2 nodes)"
