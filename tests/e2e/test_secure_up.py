"""A fresh `lifelong up` is secure by default: it makes an admin key (mode 0600) in its work directory,
says where it is and how to use it, and its API refuses an unauthenticated create."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from service.client.cli import app
from service.local.stack import Stack
from tests.e2e.conftest import digits_job

pytestmark = [pytest.mark.integration, pytest.mark.slow]
BIN = Path(sys.executable).parent


def test_the_stack_refuses_an_unauthenticated_create(stack: Stack) -> None:
    assert stack.api is not None
    refused = httpx.post(f"{stack.api.url}/v1/jobs", json=digits_job("nobody"), timeout=30)
    assert refused.status_code == 401, refused.text
    assert stack.admin_key_file.stat().st_mode & 0o777 == 0o600
    headers = {"Authorization": f"Bearer {stack.admin_key}"}
    assert httpx.get(f"{stack.api.url}/v1/jobs", headers=headers, timeout=30).status_code == 200
    # The other servers of the stack listen on loopback only.
    assert stack.mlflow is not None and stack.mlflow.host == "127.0.0.1"
    assert "--dashboard-host=127.0.0.1" in stack.nodes[0].args


def test_a_fresh_lifelong_up(tmp_path: Path) -> None:
    workdir = tmp_path / "stack"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LIFELONG_", "RAY_"))}
    env["COLUMNS"] = "250"
    proc = subprocess.Popen(
        [str(BIN / "lifelong"), "up", "--workdir", str(workdir), "--cpus", "1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
    reader.start()
    try:
        url = _wait_for_url(proc, lines, timeout=300)
        key_file = workdir / "admin-key"
        assert key_file.stat().st_mode & 0o777 == 0o600
        key = key_file.read_text().strip()
        refused = httpx.post(f"{url}/v1/jobs", json=digits_job("nobody"), timeout=30)
        assert refused.status_code == 401, refused.text
        # The CLI reads the key from where 'up' said it is.
        runner = CliRunner(
            env={"LIFELONG_API_URL": url, "LIFELONG_API_KEY_FILE": str(key_file), "COLUMNS": "200"}
        )
        listed = runner.invoke(app, ["jobs", "list"])
        assert listed.exit_code == 0 and "0 jobs" in listed.output, listed.output
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=120)
        reader.join(timeout=10)
    text = " ".join("".join(lines).split())
    assert f"admin API key made in {key_file} (mode 0600)" in text
    assert f"export LIFELONG_API_KEY_FILE={key_file}" in text
    assert key not in text  # where the key is and how to use it, never the key itself


def _wait_for_url(proc: subprocess.Popen[str], lines: list[str], *, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in list(lines):
            found = re.search(r"export LIFELONG_API_URL=(\S+)", line)
            if found:
                return found.group(1)
        if proc.poll() is not None:
            raise AssertionError("lifelong up exited:\n" + "".join(lines))
        time.sleep(0.5)
    raise AssertionError("lifelong up did not print its API's URL:\n" + "".join(lines))
