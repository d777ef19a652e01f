"""Every bad input of ``bad_inputs.py`` gets a 4xx that names the problem, stores nothing and
leaves the server unharmed; and the table in ``docs/reliability.md`` is what they get today."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest

from service.client import encode_batch
from tests.reliability.bad_inputs import (
    KEYS,
    LIMITS,
    bad_input_server,
    collect,
    doc_table,
    table,
)
from tests.reliability.bad_inputs import _batch as batch

pytestmark = pytest.mark.integration


def test_bad_inputs_are_refused_and_documented(
    redis_url: str, redis_prefix: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.ERROR),
        bad_input_server(redis_url, redis_prefix, tmp_path) as server,
    ):
        rows, job = collect(server)
        admin = {"Authorization": f"Bearer {KEYS['admin']}"}
        store = server.server.config.app.state.plane.store
        # Nothing refused was stored: the 10 samples pushed before the cases, and the 10 of
        # the first use of the reused Idempotency-Key, and no more; the jobs made on purpose.
        summary = store.dataset_summary(job)
        assert summary.train_samples + summary.val_samples == 20
        assert store.count_jobs() == LIMITS["max_jobs"]
        # The server is unharmed: a good push still goes through.
        body, content_type = encode_batch(*batch(5))
        ok = httpx.post(
            f"{server.url}/v1/jobs/{job}/data",
            content=body,
            headers={**admin, "Content-Type": content_type},
        )
        assert ok.status_code == 201, ok.text

    assert len(rows) >= 60
    unexpected = [
        r for r in rows if not 400 <= r.status < 500 and r.case != "no key on /healthz (open)"
    ]
    assert not unexpected, unexpected
    assert all(r.detail for r in rows if r.status >= 400), [r for r in rows if not r.detail]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [
        r.getMessage() for r in caplog.records
    ]
    for secret in KEYS.values():
        assert not [r for r in rows if secret in r.detail]
    assert doc_table() == table(rows), (
        "docs/reliability.md does not show what the bad inputs get today; rewrite its table "
        "with `python -m tests.reliability.bad_inputs` (REDIS_URL set, or an embedded Redis)"
    )
