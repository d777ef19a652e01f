"""A schema-driven fuzz of the whole API: schemathesis reads ``/openapi.json`` of a live server
and sends generated requests to every operation. No answer may be a 5xx, and every answer must
conform to the schema (a documented status code, content type, headers and body).

Four passes, each bounded in examples per operation (``LIFELONG_FUZZ_EXAMPLES``, default 25):
schema-valid requests with an admin key on a real job, the same with generated job ids,
schema-valid requests without a key (401 everywhere but the open routes), and schema-invalid
requests (schemathesis' negative mode) on the real job. The server is the bad-input one: API keys
on, small limits, no Ray.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXAMPLES = int(os.environ.get("LIFELONG_FUZZ_EXAMPLES", "25"))


@pytest.fixture
def server(redis_url: str, redis_prefix: str, tmp_path: Path) -> Iterator[Any]:
    from tests.reliability.bad_inputs import bad_input_server

    with bad_input_server(redis_url, redis_prefix, tmp_path) as live:
        yield live


def test_fuzz_the_whole_api(server: Any) -> None:
    import schemathesis
    from schemathesis import GenerationMode
    from schemathesis import checks as c

    from tests.reliability.bad_inputs import KEYS, SPEC

    admin = {"Authorization": f"Bearer {KEYS['admin']}"}
    job = httpx.post(f"{server.url}/v1/jobs", json=SPEC, headers=admin).json()["id"]
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    checks = [
        c.not_a_server_error,
        c.status_code_conformance,
        c.content_type_conformance,
        c.response_headers_conformance,
        c.response_schema_conformance,
    ]
    # Checks that judge the API's semantics by the schema alone (a cross-field rule of a job
    # spec is "schema-valid data rejected") are not what this test asks.
    excluded = [
        c.positive_data_acceptance,
        c.negative_data_rejection,
        c.missing_required_header,
        c.unsupported_method,
        c.use_after_free,
        c.ensure_resource_availability,
        c.ignored_auth,
    ]
    passes = [
        ("valid, admin key, real job", GenerationMode.POSITIVE, admin, True),
        ("valid, admin key, generated ids", GenerationMode.POSITIVE, admin, False),
        ("valid, no key", GenerationMode.POSITIVE, {}, True),
        ("invalid, admin key, real job", GenerationMode.NEGATIVE, admin, True),
    ]
    failures: list[str] = []
    counts: dict[str, int] = {}
    started = time.monotonic()
    operations = [result.ok() for result in schema.get_all_operations()]
    for name, mode, headers, real_job in passes:
        for operation in operations:
            sent, found = _fuzz(
                operation,
                mode,
                headers,
                job if real_job else None,
                checks=checks,
                excluded=excluded,
            )
            counts[name] = counts.get(name, 0) + sent
            failures += [f"[{name}] {operation.label}: {text}" for text in found]
    seconds = time.monotonic() - started
    print(
        f"\nfuzz: {len(operations)} operations, {sum(counts.values())} requests "
        f"({counts}) in {seconds:.0f} s"
    )
    assert not failures, f"{len(failures)} failures; the first:\n" + "\n\n".join(failures[:3])
    assert httpx.get(f"{server.url}/healthz").status_code == 200


def _fuzz(
    operation: Any,
    mode: Any,
    headers: dict[str, str],
    job: str | None,
    *,
    checks: list[Any],
    excluded: list[Any],
) -> tuple[int, list[str]]:
    """Up to ``EXAMPLES`` requests to one operation; returns how many, and the failures."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable

    sent = 0
    failures: list[str] = []

    @given(case=operation.as_strategy(mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,  # the same requests in every run: a CI failure reproduces
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case: Any) -> None:
        nonlocal sent
        if job is not None and "job_id" in (case.path_parameters or {}):
            case.path_parameters["job_id"] = job
        if operation.path.endswith("/events"):  # a followed stream never ends
            case.query = {**(case.query or {}), "follow": "false"}
        sent += 1
        try:
            case.call_and_validate(
                headers=headers, timeout=30, checks=checks, excluded_checks=excluded
            )
        except BaseException as exc:  # schemathesis raises a group of failures
            failures.append(str(exc))

    with contextlib.suppress(Unsatisfiable):  # nothing to negate without parameters or body
        fuzz()
    return sent, failures
