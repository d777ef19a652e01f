"""Every refusal over real HTTP: the status code, the detail that names the problem, and that
nothing was stored."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from service.client import LifelongClient, LifelongError, encode_batch
from service.settings import Settings
from service.state.states import JobStatus
from service.state.store import RedisStore
from tests.service.conftest import JOB_SPEC, LiveServer, batch

pytestmark = pytest.mark.integration

UNKNOWN = "job_0123456789abcdef"


@pytest.fixture
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


@pytest.fixture
def job_id(client: LifelongClient) -> str:
    return client.create_job(JOB_SPEC).id


def refusal(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert isinstance(body["detail"], str) and body["detail"]
    return body


def assert_nothing_stored(client: LifelongClient, server: LiveServer, job_id: str) -> None:
    assert client.dataset(job_id).version == 0
    assert server.leftover_files(job_id) == []


def push(
    http: httpx.Client, job_id: str, content: bytes, content_type: str | None, **headers: str
) -> httpx.Response:
    if content_type is not None:
        headers["Content-Type"] = content_type
    return http.post(f"/v1/jobs/{job_id}/data", content=content, headers=headers)


# --- 400 ---------------------------------------------------------------------------------------


def test_400_unreadable_bodies(
    http: httpx.Client, client: LifelongClient, server: LiveServer, job_id: str
) -> None:
    cases = {
        "application/json": (b'{"features": [[1, 2', "the body is not valid JSON"),
        "application/x-safetensors": (b"\x10\x00\x00\x00\x00\x00\x00\x00{nope", "not a readable safetensors file"),
        "application/x-npz": (b"PK\x03\x04garbage", "not a readable .npz archive"),
        "application/vnd.apache.parquet": (b"PAR1garbagePAR1", "not a readable Parquet file"),
    }  # fmt: skip
    for content_type, (content, detail) in cases.items():
        assert detail in refusal(push(http, job_id, content, content_type), 400)["detail"]
    assert "body is empty" in refusal(push(http, job_id, b"", "application/json"), 400)["detail"]
    assert_nothing_stored(client, server, job_id)


def test_400_malformed_job_spec_json(http: httpx.Client, client: LifelongClient) -> None:
    response = http.post(
        "/v1/jobs", content=b"{'name': 1}", headers={"Content-Type": "application/json"}
    )
    assert refusal(response, 400)["detail"].startswith("the body is not valid JSON")
    assert client.list_jobs().total == 0


def test_400_bad_idempotency_key_and_last_event_id(
    http: httpx.Client, client: LifelongClient, server: LiveServer, job_id: str
) -> None:
    body, content_type = encode_batch(*batch(5))
    response = push(http, job_id, body, content_type, **{"Idempotency-Key": "x" * 256})
    assert "Idempotency-Key must be 1 to 255 printable ASCII" in refusal(response, 400)["detail"]
    assert_nothing_stored(client, server, job_id)
    response = http.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": "yesterday"})
    assert "'yesterday' is not an event id" in refusal(response, 400)["detail"]


def test_400_malformed_grow_body(http: httpx.Client, job_id: str, client: LifelongClient) -> None:
    response = http.post(
        f"/v1/jobs/{job_id}/grow", content=b"{", headers={"Content-Type": "application/json"}
    )
    assert refusal(response, 400)["detail"] == "the body is not valid JSON"
    assert client.commands(job_id) == []


# --- 404 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/jobs/{id}"),
        ("GET", "/v1/jobs/{id}/data"),
        ("POST", "/v1/jobs/{id}/data"),
        ("POST", "/v1/jobs/{id}/grow"),
        ("POST", "/v1/jobs/{id}/pause"),
        ("POST", "/v1/jobs/{id}/resume"),
        ("POST", "/v1/jobs/{id}/stop"),
        ("GET", "/v1/jobs/{id}/commands"),
        ("GET", "/v1/jobs/{id}/events"),
    ],
)
@pytest.mark.parametrize("job", [UNKNOWN, "not-a-job-id", "job_%7Bx%7D"])
def test_404_unknown_job(http: httpx.Client, method: str, path: str, job: str) -> None:
    kwargs: dict[str, Any] = {}
    if path.endswith("/data") and method == "POST":
        kwargs = {
            "content": encode_batch(*batch(3))[0],
            "headers": {"Content-Type": "application/x-safetensors"},
        }
    elif path.endswith("/grow"):
        kwargs = {"json": {"op": "widen", "factor": 2}}
    response = http.request(method, path.format(id=job), **kwargs)
    detail = refusal(response, 404)["detail"]
    assert detail.startswith("job '") and detail.endswith("' not found")


def test_404_unknown_command_and_route(http: httpx.Client, job_id: str) -> None:
    response = http.get(f"/v1/jobs/{job_id}/commands/cmd_0123456789abcdef")
    assert (
        refusal(response, 404)["detail"]
        == f"command 'cmd_0123456789abcdef' of job '{job_id}' not found"
    )
    assert refusal(http.get("/v2/everything"), 404)["detail"] == "Not Found"


# --- 409 ---------------------------------------------------------------------------------------


def test_409_finished_job_takes_no_data_or_commands(
    http: httpx.Client, client: LifelongClient, server: LiveServer, store: RedisStore, job_id: str
) -> None:
    store.set_status(job_id, JobStatus.FAILED, "out of memory")
    body, content_type = encode_batch(*batch(5))
    detail = refusal(push(http, job_id, body, content_type), 409)["detail"]
    assert detail == f"job '{job_id}' is failed; it accepts no more data"
    for kind in ("pause", "resume", "stop"):
        detail = refusal(http.post(f"/v1/jobs/{job_id}/{kind}"), 409)["detail"]
        assert detail == f"job '{job_id}' is failed; it accepts no more data or commands"
    assert client.commands(job_id) == []
    assert_nothing_stored(client, server, job_id)


def test_409_idempotency_key_reused_for_another_body(
    http: httpx.Client, client: LifelongClient, server: LiveServer, job_id: str
) -> None:
    first, content_type = encode_batch(*batch(5, seed=1))
    second, _ = encode_batch(*batch(5, seed=2))
    assert push(http, job_id, first, content_type, **{"Idempotency-Key": "k1"}).status_code == 201
    detail = refusal(push(http, job_id, second, content_type, **{"Idempotency-Key": "k1"}), 409)[
        "detail"
    ]
    assert "already used for a different body" in detail
    assert client.dataset(job_id).version == 1
    assert len(server.leftover_files(job_id)) == len(client.dataset(job_id).items)


def test_409_job_limit(settings: Settings, client: LifelongClient) -> None:
    for _ in range(settings.max_jobs):
        client.create_job(JOB_SPEC)
    with pytest.raises(LifelongError) as info:
        client.create_job(JOB_SPEC)
    assert info.value.status_code == 409
    assert info.value.detail == (
        "this deployment holds its maximum of 20 jobs (LIFELONG_MAX_JOBS); raise the limit to "
        "create more"
    )
    assert client.list_jobs().total == settings.max_jobs


# --- 413 ---------------------------------------------------------------------------------------


def test_413_body_too_large(
    http: httpx.Client, client: LifelongClient, server: LiveServer, settings: Settings, job_id: str
) -> None:
    limit = settings.max_push_bytes
    big = b"\x00" * (limit + 1)
    detail = refusal(push(http, job_id, big, "application/x-safetensors"), 413)["detail"]
    assert detail == (
        f"the body has {limit + 1:,} bytes, above the limit of {limit:,} bytes "
        "(LIFELONG_MAX_PUSH_BYTES); split the push into smaller batches"
    )

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(limit // 65536 + 2):
            yield b"\x00" * 65536

    response = http.post(
        f"/v1/jobs/{job_id}/data", content=chunks(), headers={"Content-Type": "application/x-npz"}
    )
    assert f"more than {limit:,} bytes" in refusal(response, 413)["detail"]
    assert_nothing_stored(client, server, job_id)
    # Other routes have the smaller request limit.
    spec = dict(JOB_SPEC, name="x" * 10, padding="y" * settings.max_request_bytes)
    response = http.post(
        "/v1/jobs", content=json.dumps(spec), headers={"Content-Type": "application/json"}
    )
    assert "(LIFELONG_MAX_REQUEST_BYTES)" in refusal(response, 413)["detail"]
    assert client.list_jobs().total == 1


def test_413_too_many_samples(
    http: httpx.Client, client: LifelongClient, server: LiveServer, job_id: str
) -> None:
    body, content_type = encode_batch(*batch(5001))
    detail = refusal(push(http, job_id, body, content_type), 413)["detail"]
    assert detail == (
        "5,001 samples in one push, above the limit of 5,000 (LIFELONG_MAX_SAMPLES_PER_PUSH); "
        "split the batch"
    )
    assert_nothing_stored(client, server, job_id)


# --- 415 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type", [None, "text/csv", "application/octet-stream", "multipart/form-data"]
)
def test_415_content_type(
    http: httpx.Client,
    client: LifelongClient,
    server: LiveServer,
    job_id: str,
    content_type: str | None,
) -> None:
    body, _ = encode_batch(*batch(5))
    detail = refusal(push(http, job_id, body, content_type), 415)["detail"]
    supported = "application/x-safetensors, application/x-npz, application/vnd.apache.parquet, application/json, text/plain"
    if content_type is None:
        assert detail == f"a Content-Type is required; send one of {supported}"
    else:
        assert detail == f"Content-Type '{content_type}' is not supported; send one of {supported}"
    assert_nothing_stored(client, server, job_id)


# --- 422 ---------------------------------------------------------------------------------------


def test_422_job_spec_lists_every_problem(http: httpx.Client, client: LifelongClient) -> None:
    spec = {
        "name": "bad/name",
        "task": {"kind": "classification", "input_shape": [64], "num_classes": 10},
        "model": {"family": "mlp", "hidden": [0]},
        "optimizer": {"lr": -1},
        "val_fraction": 0.9,
        "scaling": {"num_workers": 1000},
        "tenant": "x",
    }
    body = refusal(http.post("/v1/jobs", json=spec), 422)
    locs = [e["loc"] for e in body["errors"]]
    assert locs == [
        "name",
        "optimizer.lr",
        "val_fraction",
        "tenant",
        "model",
        "scaling.num_workers",
    ]
    assert body["detail"].startswith(
        "invalid job spec (6 problems): name: String should match pattern"
    )
    assert "unknown key 'tenant'" in body["detail"]
    assert "at most 16 (LIFELONG_MAX_WORKERS_PER_JOB)" in body["detail"]
    assert client.list_jobs().total == 0


def test_422_model_does_not_fit_the_task(http: httpx.Client) -> None:
    spec = dict(JOB_SPEC, model={"family": "cnn", "channels": [8]})
    body = refusal(http.post("/v1/jobs", json=spec), 422)
    assert body["errors"][0]["loc"] == "model"
    assert "cnn" in body["detail"]


@pytest.mark.parametrize(
    ("features", "labels", "detail"),
    [
        (np.zeros((3, 7)), np.zeros(3, int), "each sample must have shape [8] (task.input_shape)"),
        (
            np.zeros((3, 8)),
            np.zeros(2, int),
            "3 feature rows but 2 labels; send one label per sample",
        ),
        (np.zeros((0, 8)), np.zeros(0, int), "the batch is empty: send at least one sample"),
        (np.full((2, 8), np.nan), np.zeros(2, int), "'features' holds 16 non-finite values"),
        (
            np.zeros((2, 8)),
            np.array([0, 4]),
            "labels must be class indices in [0, 4) (task.num_classes=4); 1 are outside, the first at sample 1 (value 4)",
        ),
        (np.zeros((2, 8)), np.array([0, -1]), "the first at sample 1 (value -1)"),
        (
            np.zeros((2, 8)),
            np.array([0.0, 1.0]),
            "classification labels must be integers (class indices); got dtype float64",
        ),
        (
            np.zeros((2, 8)),
            np.zeros((2, 2), int),
            "classification labels must be one class index per sample, shape [2]; got [2, 2]",
        ),
    ],
)
@pytest.mark.parametrize("fmt", ["safetensors", "json"])
def test_422_batch_does_not_fit_the_job(
    *,
    http: httpx.Client,
    client: LifelongClient,
    server: LiveServer,
    job_id: str,
    features: np.ndarray,
    labels: np.ndarray,
    detail: str,
    fmt: str,
) -> None:
    if fmt == "json":
        content = json.dumps({"features": features.tolist(), "labels": labels.tolist()}).encode()
        content = content.replace(b"NaN", b"NaN")
        content_type = "application/json"
    else:
        from safetensors.numpy import save

        content = save({"features": np.ascontiguousarray(features, np.float32), "labels": labels})
        content_type = "application/x-safetensors"
    if fmt == "json" and features.shape[0] == 0:
        detail = "the batch is empty"
    assert detail in refusal(push(http, job_id, content, content_type), 422)["detail"]
    assert_nothing_stored(client, server, job_id)


def test_422_grow_op(http: httpx.Client, client: LifelongClient, job_id: str) -> None:
    body = refusal(http.post(f"/v1/jobs/{job_id}/grow", json={"op": "deepen"}), 422)
    assert "deepen needs 'after', the name of the module to insert after" in body["detail"]
    body = refusal(http.post(f"/v1/jobs/{job_id}/grow", json={"op": "widen", "factor": 0.5}), 422)
    assert body["errors"][0]["loc"] == "body.factor"
    body = refusal(http.post(f"/v1/jobs/{job_id}/grow", json={"op": "explode"}), 422)
    assert "body.op" in body["detail"]
    assert client.commands(job_id) == []


def test_server_is_unharmed(http: httpx.Client, client: LifelongClient, job_id: str) -> None:
    for content in (b"\xff" * 100, b"[]", b"{}", b'{"features": {}, "labels": 3}', b"null"):
        assert 400 <= push(http, job_id, content, "application/json").status_code < 500
    x, y = batch(10)
    assert client.push(job_id, x, y).accepted == 10
    assert client.ready().status == "ready"


def test_503_when_the_data_store_cannot_write(
    http: httpx.Client, client: LifelongClient, server: LiveServer, job_id: str
) -> None:
    server.data_root.mkdir(parents=True, exist_ok=True)
    (server.data_root / job_id).write_text("a file where the job's folder should be")
    body, content_type = encode_batch(*batch(10))
    detail = refusal(push(http, job_id, body, content_type), 503)["detail"]
    assert detail.startswith("the data store could not write the batch (")
    assert detail.endswith("nothing was stored, retry later")
    assert client.dataset(job_id).version == 0
