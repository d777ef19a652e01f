"""API keys managed through the API, their scopes, limits and revocation, the Idempotency-Key of
every mutating route, and the audit trail, over real HTTP on a server with keys on."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from service.client import LifelongClient, LifelongError, encode_batch
from service.settings import Settings
from service.state.states import JobStatus
from service.state.store import RedisStore
from tests.service.conftest import JOB_SPEC, LiveServer, batch, live_server

pytestmark = pytest.mark.integration
ADMIN = "configured-admin-key"


@pytest.fixture
def secured(settings: Settings) -> Iterator[LiveServer]:
    """The test server with keys on: one configured admin key."""
    fields = {**settings.model_dump(), "auth": "keys", "api_keys": [f"admin:{ADMIN}"]}
    with live_server(Settings(**fields)) as server:
        yield server


@pytest.fixture
def admin(secured: LiveServer) -> Iterator[LifelongClient]:
    with LifelongClient(secured.url, api_key=ADMIN, retries=0) as client:
        yield client


def _h(key: str, **more: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", **more}


def _job_routes(server: LiveServer) -> list[tuple[str, str]]:
    """(method, path template) of every operation that names a job, from the OpenAPI schema."""
    paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    return sorted(
        (method.upper(), path)
        for path, operations in paths.items()
        if "{job_id}" in path
        for method in operations
    )


def _request(server: LiveServer, key: str, method: str, template: str, job: str) -> httpx.Response:
    path = template.replace("{job_id}", job).replace("{command_id}", "cmd_0123456789abcdef")
    body: dict[str, Any] = {}
    if path.endswith("/data") and method == "POST":
        content, content_type = encode_batch(*batch(4))
        body = {"content": content, "headers": _h(key, **{"Content-Type": content_type})}
    elif path.endswith("/grow"):
        body = {"json": {"op": "widen", "factor": 2}, "headers": _h(key)}
    elif path.endswith("/predict"):
        body = {"json": {"features": [[0.0] * 8]}, "headers": _h(key)}
    params = {"follow": "false"} if path.endswith("/events") else None
    kw = body or {"headers": _h(key)}
    return httpx.request(method, f"{server.url}{path}", params=params, timeout=30, **kw)


def test_a_key_scoped_to_job_a_gets_404_on_job_b_everywhere(
    secured: LiveServer, admin: LifelongClient
) -> None:
    job_a = admin.create_job({**JOB_SPEC, "name": "a"}).id
    job_b = admin.create_job({**JOB_SPEC, "name": "b"}).id
    scoped = admin.create_key("admin", name="team a", jobs=[job_a]).key
    routes = _job_routes(secured)
    assert len(routes) >= 13
    for method, template in routes:
        answer = _request(secured, scoped, method, template, job_b)
        assert answer.status_code == 404, (method, template, answer.text)
        assert answer.json()["detail"] == f"job '{job_b}' not found", (method, template)
    # Inside its scope the same key is served (pushes, reads), and it lists job A alone.
    with LifelongClient(secured.url, api_key=scoped, retries=0) as team:
        assert team.push(job_a, *batch(8)).accepted == 8
        listing = team.list_jobs()
        assert [j.id for j in listing.jobs] == [job_a] and listing.total == 1
        # A job it creates joins its scope; job B stays out of it.
        job_c = team.create_job({**JOB_SPEC, "name": "c"}).id
        assert {j.id for j in team.list_jobs().jobs} == {job_a, job_c}
        assert admin.list_jobs().total == 3
        assert next(k for k in admin.list_keys() if k.name == "team a").jobs == sorted(
            [job_a, job_c]
        )


def test_tenant_keys_see_their_tenant_and_its_sub_tenants(
    secured: LiveServer, admin: LifelongClient
) -> None:
    outside = admin.create_job(JOB_SPEC).id
    team = admin.create_key("admin", tenant="team-a").key
    vision = admin.create_key("writer", tenant="team-a/vision").key
    other = admin.create_key("reader", tenant="team-b").key
    with (
        LifelongClient(secured.url, api_key=team, retries=0) as a,
        LifelongClient(secured.url, api_key=vision, retries=0) as v,
        LifelongClient(secured.url, api_key=other, retries=0) as b,
    ):
        job = a.create_job(JOB_SPEC).id
        assert [j.id for j in a.list_jobs().jobs] == [job]
        assert b.list_jobs().total == 0 and v.list_jobs().total == 0  # team-a is not team-a/…
        with pytest.raises(LifelongError) as info:
            b.get_job(job)
        assert info.value.status_code == 404
        with pytest.raises(LifelongError) as info:
            a.get_job(outside)
        assert info.value.status_code == 404
        # A writer of the sub-tenant cannot create (admin) and sees no job of the parent.
        with pytest.raises(LifelongError) as info:
            v.create_job(JOB_SPEC)
        assert (info.value.status_code, info.value.detail) == (
            403,
            "this needs the role 'admin'; the key's role is 'writer'",
        )


def test_a_revoked_key_is_refused_on_its_next_request(
    secured: LiveServer, admin: LifelongClient
) -> None:
    created = admin.create_key("reader", name="ci")
    assert created.key.startswith("ll_") and created.id.startswith("key_")
    listed = admin.list_keys()
    assert [(k.id, k.role, k.name) for k in listed] == [(created.id, "reader", "ci")]
    assert created.key not in json.dumps([k.model_dump() for k in listed])
    with LifelongClient(secured.url, api_key=created.key, retries=0) as reader:
        assert reader.list_jobs().total == 0
        assert admin.revoke_key(created.id).revoked
        with pytest.raises(LifelongError) as info:
            reader.list_jobs()
        assert (info.value.status_code, info.value.detail) == (401, "the API key is not valid")
    assert admin.list_keys() == []
    with pytest.raises(LifelongError) as info:
        admin.revoke_key(created.id)
    assert info.value.status_code == 404


def test_only_an_unscoped_admin_manages_keys(secured: LiveServer, admin: LifelongClient) -> None:
    writer = admin.create_key("writer").key
    scoped_admin = admin.create_key("admin", tenant="t").key
    for key, detail in (
        (writer, "this needs the role 'admin'; the key's role is 'writer'"),
        (scoped_admin, "managing API keys needs an admin key without a scope"),
    ):
        answer = httpx.post(f"{secured.url}/v1/keys", json={"role": "admin"}, headers=_h(key))
        assert answer.status_code == 403 and answer.json()["detail"].startswith(detail)
        assert httpx.get(f"{secured.url}/v1/keys", headers=_h(key)).status_code == 403
    assert httpx.get(f"{secured.url}/v1/keys").status_code == 401
    unknown = httpx.post(
        f"{secured.url}/v1/keys",
        json={"role": "reader", "jobs": ["job_0123456789abcdef"]},
        headers=_h(ADMIN),
    )
    assert unknown.status_code == 404
    assert "do not exist: job_0123456789abcdef" in unknown.json()["detail"]
    configured = httpx.delete(f"{secured.url}/v1/keys/configured:abc", headers=_h(ADMIN))
    assert configured.status_code == 409


def test_retried_creates_and_commands_act_once(
    secured: LiveServer, admin: LifelongClient, store: RedisStore
) -> None:
    url, headers = secured.url, _h(ADMIN, **{"Idempotency-Key": "create-1"})
    first = httpx.post(f"{url}/v1/jobs", json=JOB_SPEC, headers=headers)
    again = httpx.post(f"{url}/v1/jobs", json=JOB_SPEC, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert again.json() == first.json() and again.headers["location"] == first.headers["location"]
    assert store.count_jobs() == 1
    other = httpx.post(f"{url}/v1/jobs", json={**JOB_SPEC, "name": "x"}, headers=headers)
    assert other.status_code == 409 and "already used for a different request" in other.text

    job = first.json()["id"]
    grow = {"op": "widen", "factor": 2}
    answers = [
        httpx.post(f"{url}/v1/jobs/{job}/grow", json=grow, headers=_h(ADMIN, **{"Idempotency-Key": "g"}))
        for _ in range(3)
    ]  # fmt: skip
    assert {a.status_code for a in answers} == {202}
    assert len({a.json()["id"] for a in answers}) == 1
    assert [c.kind for c in store.list_commands(job)] == ["grow"]
    for kind in ("pause", "resume", "stop"):
        key = _h(ADMIN, **{"Idempotency-Key": kind})
        ids = {httpx.post(f"{url}/v1/jobs/{job}/{kind}", headers=key).json()["id"] for _ in "ab"}
        assert len(ids) == 1
    assert [c.kind for c in store.list_commands(job)] == ["stop", "resume", "pause", "grow"]

    store.set_status(job, JobStatus.STOPPED, "stopped")
    key = _h(ADMIN, **{"Idempotency-Key": "delete-1"})
    deleted = [httpx.delete(f"{url}/v1/jobs/{job}", headers=key) for _ in range(2)]
    assert [d.status_code for d in deleted] == [200, 200]
    assert deleted[1].json() == deleted[0].json() and deleted[1].headers["idempotent-replayed"]
    assert store.count_jobs() == 0


def test_concurrent_creates_with_one_key_make_one_job(
    secured: LiveServer, store: RedisStore
) -> None:
    headers = _h(ADMIN, **{"Idempotency-Key": "race"})

    def create(_: int) -> httpx.Response:
        return httpx.post(f"{secured.url}/v1/jobs", json=JOB_SPEC, headers=headers, timeout=30)

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(create, range(6)))
    # The first creates; each other one is replayed, or asked to retry while the first runs.
    assert {a.status_code for a in answers} <= {201, 409}
    created = {a.json()["id"] for a in answers if a.status_code == 201}
    assert len(created) == 1 and store.count_jobs() == 1
    for a in answers:
        if a.status_code == 409:
            assert a.headers["retry-after"] == "1" and "still being answered" in a.text


def test_a_flood_from_one_key_gets_429_while_another_key_is_served(
    secured: LiveServer, admin: LifelongClient
) -> None:
    flood = admin.create_key("reader", requests_per_s=5).key
    calm = admin.create_key("reader").key
    url = f"{secured.url}/v1/jobs"
    with httpx.Client(timeout=30) as http:
        statuses = []
        for _ in range(3):  # three tries at a burst inside one second (the windows are seconds)
            started = time.time()
            statuses = [http.get(url, headers=_h(flood)).status_code for _ in range(15)]
            served = http.get(url, headers=_h(calm))
            if time.time() - started < 0.9:
                break
        assert statuses.count(200) <= 5 and statuses.count(429) >= 10, statuses
        assert served.status_code == 200
        limited = http.get(url, headers=_h(flood))
        assert limited.status_code == 429
        assert limited.headers["retry-after"] == "1"
        assert "more than 5 requests this second" in limited.json()["detail"]
    heavy = admin.create_key("writer", bytes_per_min=4096).key
    job = admin.create_job(JOB_SPEC).id
    body, content_type = encode_batch(*batch(40))  # about 1.6 KB
    pushes = [
        httpx.post(
            f"{secured.url}/v1/jobs/{job}/data",
            content=body,
            headers=_h(heavy, **{"Content-Type": content_type}),
        )
        for _ in range(4)
    ]
    assert [p.status_code for p in pushes][:2] == [201, 201]
    assert pushes[-1].status_code == 429
    assert 1 <= int(pushes[-1].headers["retry-after"]) <= 60
    assert "bytes this minute" in pushes[-1].json()["detail"]


def test_the_audit_trail_names_the_key_id_never_the_key(
    secured: LiveServer, admin: LifelongClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="lifelong.audit"):
        writer = admin.create_key("writer", name="pusher")
        job = admin.create_job(JOB_SPEC).id
        with LifelongClient(secured.url, api_key=writer.key, retries=0) as w:
            w.push(job, *batch(8))
            with pytest.raises(LifelongError):
                w.stop(job)
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "lifelong.audit"]
    assert [(e["method"], e["route"], e["status"], e["outcome"]) for e in lines] == [
        ("POST", "/v1/keys", 201, "done"),
        ("POST", "/v1/jobs", 201, "done"),
        ("POST", "/v1/jobs/{job_id}/data", 201, "done"),
        ("POST", "/v1/jobs/{job_id}/stop", 403, "refused"),
    ]
    assert [e["job_id"] for e in lines] == [None, job, job, job]
    lines = lines[1:]
    assert lines[1]["key_id"] == lines[2]["key_id"] == writer.id
    assert lines[0]["key_id"].startswith("configured:")
    text = caplog.text
    assert writer.key not in text and ADMIN not in text
    audits = [e.data for e in admin.events(job, follow=False) if e.type == "audit"]
    assert [(a["route"], a["key_id"], a["outcome"]) for a in audits] == [
        ("/v1/jobs", lines[0]["key_id"], "done"),
        ("/v1/jobs/{job_id}/data", writer.id, "done"),
        ("/v1/jobs/{job_id}/stop", writer.id, "refused"),
    ]


def test_disabled_auth_serves_loopback_clients_only(server: LiveServer) -> None:
    # The test server runs with LIFELONG_AUTH=disabled on 127.0.0.1: no key needed.
    assert httpx.get(f"{server.url}/v1/jobs").status_code == 200
    app = server.server.config.app

    async def call() -> tuple[int, bytes]:
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 4000))
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
            answer = await http.get("/v1/jobs")
            return answer.status_code, answer.content

    import asyncio

    status, body = asyncio.run(call())
    assert status == 403 and b"serves loopback clients only" in body


def test_lifelong_keys_create_list_revoke(secured: LiveServer, admin: LifelongClient) -> None:
    from typer.testing import CliRunner

    from service.client.cli import app

    env = {"LIFELONG_API_URL": secured.url, "LIFELONG_API_KEY": ADMIN, "COLUMNS": "200"}
    runner = CliRunner(env=env)
    job = admin.create_job(JOB_SPEC).id
    made = runner.invoke(app, ["keys", "create", "writer", "--name", "ci", "--job", job])
    assert made.exit_code == 0, made.output
    key_id, key = made.output.split()[1], made.output.strip().splitlines()[-1]
    assert key_id.startswith("key_") and key.startswith("ll_")
    listed = runner.invoke(app, ["keys", "list"])
    assert key_id in listed.output and job in listed.output and key not in listed.output
    with LifelongClient(secured.url, api_key=key, retries=0) as ci:
        assert ci.push(job, *batch(4)).accepted == 4
        assert runner.invoke(app, ["keys", "revoke", key_id]).exit_code == 0
        with pytest.raises(LifelongError) as info:
            ci.get_job(job)
        assert info.value.status_code == 401
    refused = CliRunner(env={**env, "LIFELONG_API_KEY": key}).invoke(app, ["keys", "list"])
    assert refused.exit_code == 1 and "401 the API key is not valid" in refused.output


def test_the_client_finds_the_key_of_up_or_serve(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.jobs.access import create_key_file
    from service.settings import ClientSettings

    for name in ("LIFELONG_API_KEY", "LIFELONG_API_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    assert ClientSettings().key() is None
    served, made = create_key_file(tmp_path / ".lifelong" / "admin-key")
    assert made and ClientSettings().key() == served
    up, _ = create_key_file(tmp_path / ".lifelong" / "stack" / "admin-key")
    assert ClientSettings().key() == up  # the stack's key first
    assert create_key_file(tmp_path / ".lifelong" / "stack" / "admin-key") == (up, False)
    monkeypatch.setenv("LIFELONG_API_KEY_FILE", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="does not exist"):
        ClientSettings().key()
    monkeypatch.setenv("LIFELONG_API_KEY", "explicit")
    assert ClientSettings().key() == "explicit"
