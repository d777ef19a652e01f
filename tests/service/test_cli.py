"""The `lifelong` commands that talk to the API (through the typed client), against a live server."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from service.client.cli import app
from tests.service.conftest import JOB_SPEC, LiveServer, batch

pytestmark = pytest.mark.integration


def test_jobs_push_and_events(server: LiveServer, tmp_path: Path) -> None:
    runner = CliRunner(env={"LIFELONG_API_URL": server.url, "COLUMNS": "200"})
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(JOB_SPEC))
    created = runner.invoke(app, ["jobs", "create", str(spec_file)])
    assert created.exit_code == 0, created.output
    job_id = created.output.split()[1]
    assert job_id.startswith("job_") and "212 parameters" in created.output

    x, y = batch(64)
    data_file = tmp_path / "batch.npz"
    buffer = io.BytesIO()
    np.savez(buffer, features=x, labels=y)
    data_file.write_bytes(buffer.getvalue())
    pushed = runner.invoke(app, ["push", job_id, str(data_file)])
    assert pushed.exit_code == 0, pushed.output
    assert "accepted 64 samples" in pushed.output and "dataset version 1" in pushed.output

    listed = runner.invoke(app, ["jobs", "list"])
    assert job_id in listed.output and "pending" in listed.output
    shown = runner.invoke(app, ["jobs", "show", job_id])
    assert json.loads(shown.output)["dataset"]["samples"] == 64

    grown = runner.invoke(app, ["jobs", "grow", job_id, "--op", "widen", "--factor", "2"])
    assert grown.exit_code == 0 and "grow queued as cmd_" in grown.output
    assert "pause queued as cmd_" in runner.invoke(app, ["jobs", "pause", job_id]).output

    events = runner.invoke(app, ["events", job_id, "--no-follow"])
    assert events.exit_code == 0
    assert [line.split()[1] for line in events.output.strip().splitlines()] == [
        "status",
        "data",
        "command",
        "command",
    ]


def test_errors_are_printed_with_every_problem(server: LiveServer, tmp_path: Path) -> None:
    runner = CliRunner(env={"LIFELONG_API_URL": server.url, "COLUMNS": "200"})
    spec_file = tmp_path / "job.json"
    spec_file.write_text(json.dumps(dict(JOB_SPEC, batch_size=0, colour="red")))
    result = runner.invoke(app, ["jobs", "create", str(spec_file)])
    assert result.exit_code == 1
    assert "422" in result.output
    assert "- batch_size:" in result.output and "- colour: unknown key 'colour'" in result.output
    missing = runner.invoke(app, ["jobs", "show", "job_0123456789abcdef"])
    assert missing.exit_code == 1 and "404 job 'job_0123456789abcdef' not found" in missing.output
