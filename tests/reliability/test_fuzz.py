"""A schema-driven fuzz of the whole API: schemathesis reads ``/openapi.json`` of a live server
and sends generated requests to every operation, with every check it has: no 5xx; status codes,
content types, headers and bodies as documented; schema-valid requests accepted and
schema-violating ones refused; missing and invalid keys refused on every operation that declares
security (``ignored_auth``); and a check of our own that no operation answers 2xx to a key below
the role its schema states (``x-required-role``).

Seven passes, each bounded in examples per operation (``LIFELONG_FUZZ_EXAMPLES``, default 25):
schema-valid requests with an admin key on a real job, the same with generated job ids, with a
reader key and with a writer key, without a key and with a wrong key (401 everywhere but the open
routes), and schema-violating requests (schemathesis' negative mode) on the real job.
``LIFELONG_FUZZ_REPORT=<file>`` writes every finding there. The server is the bad-input one: API
keys on, small limits, no Ray.
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

from tests.reliability.bad_inputs import KEYS, SPEC

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXAMPLES = int(os.environ.get("LIFELONG_FUZZ_EXAMPLES", "25"))
RANK = {"reader": 0, "writer": 1, "admin": 2}
# Operations whose acceptance of a schema-valid request depends on what JSON Schema cannot state:
# the job's own schema (a push's arrays, a prediction's features, a generation's prompt against
# the job's task: its kind, vocabulary and context), the job's current model (which
# width groups and modules a growth may name) and the job spec's cross-field rules (a task's
# shape and its model family, parameter and memory budgets). They answer 422 naming the problem;
# every other operation must accept every schema-valid request.
STATEFUL = {
    "POST /v1/jobs",
    "POST /v1/jobs/{job_id}/data",
    "POST /v1/jobs/{job_id}/grow",
    "POST /v1/jobs/{job_id}/predict",
    "POST /v1/jobs/{job_id}/generate",
}


@pytest.fixture
def server(redis_url: str, redis_prefix: str, tmp_path: Path) -> Iterator[Any]:
    from tests.reliability.bad_inputs import bad_input_server

    with bad_input_server(redis_url, redis_prefix, tmp_path) as live:
        yield live


def _role_check() -> Any:
    """A check of our own: an operation never answers 2xx to a key below the role that its
    schema states (``x-required-role``)."""
    import schemathesis

    @schemathesis.check
    def role_is_enforced(ctx: Any, response: Any, case: Any) -> bool | None:
        needed = case.operation.definition.raw.get("x-required-role")
        sent = (case.headers or {}).get("Authorization") or ""
        role = next((r for r, k in KEYS.items() if sent == f"Bearer {k}"), None)
        if needed and role and RANK[role] < RANK[needed] and 200 <= response.status_code < 300:
            raise AssertionError(f"answered {response.status_code} to a {role} key; needs {needed}")
        return None

    return role_is_enforced


def test_fuzz_the_whole_api(server: Any) -> None:
    import schemathesis
    from schemathesis import GenerationMode

    keyed = {role: {"Authorization": f"Bearer {key}"} for role, key in KEYS.items()}
    job = httpx.post(f"{server.url}/v1/jobs", json=SPEC, headers=keyed["admin"]).json()["id"]
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    passes = [
        ("valid, admin key, real job", GenerationMode.POSITIVE, keyed["admin"], True),
        ("valid, admin key, generated ids", GenerationMode.POSITIVE, keyed["admin"], False),
        ("valid, reader key, real job", GenerationMode.POSITIVE, keyed["reader"], True),
        ("valid, writer key, real job", GenerationMode.POSITIVE, keyed["writer"], True),
        ("valid, no key", GenerationMode.POSITIVE, {}, True),
        ("valid, a wrong key", GenerationMode.POSITIVE, {"Authorization": "Bearer no"}, True),
        ("invalid, admin key, real job", GenerationMode.NEGATIVE, keyed["admin"], True),
    ]
    failures: list[str] = []
    counts: dict[str, int] = {}
    started = time.monotonic()
    operations = [result.ok() for result in schema.get_all_operations()]
    role_check = _role_check()
    for name, mode, headers, real_job in passes:
        for operation in operations:
            sent, found = _fuzz(operation, mode, headers, job if real_job else None, role_check)
            counts[name] = counts.get(name, 0) + sent
            failures += [f"[{name}] {operation.label}: {text}" for text in found]
    seconds = time.monotonic() - started
    print(
        f"\nfuzz: {len(operations)} operations, {sum(counts.values())} requests "
        f"({counts}) in {seconds:.0f} s, {len(failures)} findings"
    )
    report = os.environ.get("LIFELONG_FUZZ_REPORT")
    if report:  # every finding, for whoever fixes them
        Path(report).write_text("\n\n".join(failures))
    assert not failures, f"{len(failures)} failures; the first:\n" + "\n\n".join(failures[:5])
    assert httpx.get(f"{server.url}/healthz").status_code == 200


def _fuzz(
    operation: Any, mode: Any, headers: dict[str, str], job: str | None, role_check: Any
) -> tuple[int, list[str]]:
    """Up to ``EXAMPLES`` requests to one operation, every check of schemathesis on (and ours);
    returns how many requests, and the failures."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode
    from schemathesis.checks import positive_data_acceptance

    sent = 0
    failures: list[str] = []
    semantic = operation.label in STATEFUL and mode == GenerationMode.POSITIVE
    excluded = [positive_data_acceptance] if semantic else []

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
            case.query = dict(case.query or {})
            if mode == GenerationMode.POSITIVE or "follow" not in case.query:
                case.query["follow"] = "false"  # a negative case may have made it invalid
        sent += 1
        try:
            case.call_and_validate(
                headers=headers,
                timeout=30,
                additional_checks=[role_check],
                excluded_checks=excluded,
            )
        except BaseException as exc:  # schemathesis raises a group of failures
            failures.append(str(exc))

    with contextlib.suppress(Unsatisfiable):  # nothing to negate without parameters or body
        fuzz()
    return sent, failures
