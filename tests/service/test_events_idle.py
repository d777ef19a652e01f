"""An event stream stays open across silences longer than Redis clients' default read timeout."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from service.client import LifelongClient
from service.settings import Settings
from tests.service.conftest import JOB_SPEC, batch, live_server


@pytest.mark.integration
@pytest.mark.slow
def test_follow_survives_a_long_silence(settings: Settings) -> None:
    # A keep-alive of 7 s: each blocking read waits 7 s, beyond redis-py's 5 s default timeout.
    quiet = Settings(**{**settings.model_dump(), "sse_keepalive_s": 7.0})
    with live_server(quiet) as server, LifelongClient(server.url) as client:
        job = client.create_job(JOB_SPEC)
        got: list[str] = []
        errors: list[BaseException] = []

        def follow() -> None:
            try:
                with httpx.stream(
                    "GET", f"{server.url}/v1/jobs/{job.id}/events", timeout=60
                ) as response:
                    for line in response.iter_lines():
                        if line.startswith("event: "):
                            got.append(line.removeprefix("event: "))
                        if "data" in got:
                            return
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=follow, daemon=True)
        thread.start()
        time.sleep(9.0)  # silence: more than one keep-alive, more than 5 s
        x, y = batch(10)
        client.push(job.id, x, y)
        thread.join(timeout=30)
        assert not errors, errors
        assert got[-1] == "data"
