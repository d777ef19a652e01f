"""The app as deployed: `lifelong serve` and `service.api.app:app` from the environment, the admin key
that serve makes, the refusal to start open, the embedded Redis, configured API keys and roles."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from service.api.app import InsecureStartError, create_app
from service.client import LifelongClient, LifelongError
from service.local.processes import free_port, stop_process, wait_for_http
from service.settings import Settings
from tests.service.conftest import JOB_SPEC, batch, live_server

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent


def _env(redis_url: str, redis_prefix: str, tmp_path: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFELONG_")}
    env.update(
        REDIS_URL=redis_url,
        LIFELONG_KEY_PREFIX=redis_prefix,
        LIFELONG_DATA_ROOT=str(tmp_path / "data"),
        LIFELONG_STATE_DIR=str(tmp_path / "state"),
        LIFELONG_SUPERVISE="false",
        LIFELONG_PORT=str(port),
    )
    return env


def _start(command: list[str], env: dict[str, str], port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [part.format(port=port) for part in command],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


@pytest.mark.slow
def test_serve_makes_an_admin_key_and_refuses_unauthenticated_requests(
    redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    port = free_port()
    env = _env(redis_url, redis_prefix, tmp_path, port)
    proc = _start([str(BIN / "lifelong"), "serve"], env, port)
    key_file = tmp_path / "state" / "admin-key"
    try:
        wait_for_http(f"http://127.0.0.1:{port}/readyz", timeout=60, proc=proc)
        assert key_file.stat().st_mode & 0o777 == 0o600
        key = key_file.read_text().strip()
        url = f"http://127.0.0.1:{port}"
        refused = httpx.post(f"{url}/v1/jobs", json=JOB_SPEC)
        assert refused.status_code == 401, refused.text
        assert refused.json()["detail"].startswith("an API key is required")
        with LifelongClient(url, api_key=key) as client:
            job = client.create_job(JOB_SPEC)
            assert client.push(job.id, *batch(40)).accepted == 40
        assert len(list((tmp_path / "data" / job.id / "shards").iterdir())) >= 1
    finally:
        stop_process(proc)
        output = proc.stdout.read() if proc.stdout else ""
    assert f"admin API key made in {key_file} (mode 0600)" in " ".join(output.split())
    assert key not in output  # where the key is and how to use it, never the key itself
    assert proc.returncode in (0, -15)  # uvicorn re-raises the SIGTERM it captured


@pytest.mark.slow
def test_the_app_from_the_environment_with_keys(
    redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    port = free_port()
    env = _env(redis_url, redis_prefix, tmp_path, port)
    env["LIFELONG_API_KEYS"] = '["admin:env-admin-key"]'
    command = [sys.executable, "-m", "uvicorn", "service.api.app:app", "--port", "{port}"]
    proc = _start(command, env, port)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/readyz", timeout=60, proc=proc)
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/v1/jobs").status_code == 401
        with LifelongClient(url, api_key="env-admin-key") as client:
            assert client.create_job(JOB_SPEC).status == "pending"
    finally:
        stop_process(proc)
    assert proc.returncode in (0, -15)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({}, "no API key is configured, and the API does not start open"),
        (
            {"LIFELONG_AUTH": "disabled", "LIFELONG_HOST": "0.0.0.0"},
            "LIFELONG_AUTH=disabled is accepted on loopback only",
        ),
    ],
    ids=["no keys", "disabled beyond loopback"],
)
def test_an_app_without_keys_refuses_to_start(
    extra: dict[str, str], message: str, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    port = free_port()
    env = {**_env(redis_url, redis_prefix, tmp_path, port), **extra}
    command = [sys.executable, "-m", "uvicorn", "service.api.app:app", "--port", str(port)]
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0
    assert message in " ".join(result.stderr.split())
    # The same refusal in process, for embedders of create_app.
    fields = {k.removeprefix("LIFELONG_").lower(): v for k, v in extra.items()}
    with pytest.raises(InsecureStartError, match=message.split(",", maxsplit=1)[0]):
        create_app(Settings(**fields, state_dir=tmp_path / "elsewhere"))  # type: ignore[arg-type]


def test_serve_refuses_disabled_auth_beyond_loopback(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFELONG_")}
    env.update(LIFELONG_AUTH="disabled", LIFELONG_STATE_DIR=str(tmp_path / "state"))
    result = subprocess.run(
        [str(BIN / "lifelong"), "serve", "--host", "0.0.0.0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    text = " ".join(result.stdout.split())
    assert "refusing to start: LIFELONG_AUTH=disabled is accepted on loopback only" in text
    assert not (tmp_path / "state" / "admin-key").exists()


def test_embedded_redis_when_no_url_is_given(tmp_path: Path) -> None:
    settings = Settings(
        redis_url=None,
        state_dir=tmp_path / "state",
        key_prefix="embedded:",
        supervise=False,
        auth="disabled",
    )
    with live_server(settings) as server, LifelongClient(server.url) as client:
        job = client.create_job(JOB_SPEC)
        client.push(job.id, *batch(30))
        assert client.ready().checks["redis"].startswith("ok")
        assert (tmp_path / "state" / "redis" / "redis.db.settings").exists()
        assert (tmp_path / "state" / "data" / job.id / "shards").is_dir()
    # The embedded server kept its state (append-only file): a new API finds the job.
    with live_server(settings) as server, LifelongClient(server.url) as client:
        assert client.get_job(job.id).dataset.samples == 30
    assert list((tmp_path / "state" / "redis").glob("appendonly.aof*"))


def test_api_keys_and_roles(settings: Settings, tmp_path: Path) -> None:
    keys = tmp_path / "api-keys"
    import hashlib

    reader_hash = hashlib.sha256(b"r-key").hexdigest()
    keys.write_text(f"# keys\nadmin:a-key\nwriter:w-key\nreader:sha256:{reader_hash}\n")
    secured = Settings(**{**settings.model_dump(), "api_keys_file": keys, "auth": "keys"})
    with live_server(secured) as server:
        admin = LifelongClient(server.url, api_key="a-key")
        writer = LifelongClient(server.url, api_key="w-key")
        reader = LifelongClient(server.url, api_key="r-key")
        nobody = LifelongClient(server.url)
        wrong = LifelongClient(server.url, api_key="guess")

        assert httpx.get(f"{server.url}/healthz").status_code == 200
        job = admin.create_job(JOB_SPEC)
        assert writer.push(job.id, *batch(10)).accepted == 10
        assert reader.get_job(job.id).dataset.samples == 10

        for client, status, detail in (
            (nobody, 401, "an API key is required: send 'Authorization: Bearer <key>'"),
            (wrong, 401, "the API key is not valid"),
            (reader, 403, "this needs the role 'writer'; the key's role is 'reader'"),
        ):
            with pytest.raises(LifelongError) as info:
                client.push(job.id, *batch(5))
            assert (info.value.status_code, info.value.detail) == (status, detail)
        with pytest.raises(LifelongError) as info:
            writer.stop(job.id)
        assert info.value.status_code == 403
        assert admin.get_job(job.id).dataset.samples == 10
        response = httpx.get(f"{server.url}/v1/jobs")
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
        for c in (admin, writer, reader, nobody, wrong):
            c.close()


def test_malformed_key_entries_fail_at_start_without_showing_the_key() -> None:
    with pytest.raises(ValueError, match="API key entry 2 is not 'role:key'") as info:
        Settings(api_keys=["admin:fine", "root:s3cret"])
    assert "s3cret" not in str(info.value)
