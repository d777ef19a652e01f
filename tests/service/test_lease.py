"""A job's lease against a real Redis: one owner at a time, a lost lease is noticed."""

from __future__ import annotations

import threading
import time

import pytest

from service.jobs.spec import validate_job_spec
from service.runtime.lease import JobLease
from service.state.store import RedisStore
from tests.service.conftest import JOB_SPEC

pytestmark = pytest.mark.integration


def test_one_owner_at_a_time_and_a_lost_lease_is_noticed(store: RedisStore) -> None:
    job = store.create_job(validate_job_spec(JOB_SPEC, max_workers=4), max_jobs=100, param_count=1)
    first = JobLease(store, job.id, "first", ttl_ms=1000)
    second = JobLease(store, job.id, "second", ttl_ms=1000)
    assert first.acquire(wanted=lambda: True) and first.held
    assert store.lease_owner(job.id) == "first"
    # The second owner waits twice the TTL for a lease that the first keeps alive, then gives up.
    done, lost = threading.Event(), threading.Event()
    keeper = threading.Thread(target=first.keep_alive, args=(done, lost.set), daemon=True)
    keeper.start()
    started = time.monotonic()
    assert not second.acquire(wanted=lambda: True)
    assert time.monotonic() - started >= 2.0
    assert not second.held and not lost.is_set()
    # A job that no longer needs an owner: no wait at all.
    assert not second.acquire(wanted=lambda: False)
    # Another owner takes the key (the first's TTL ran out while it was stalled): noticed.
    store.client.set(store.keys.lease(job.id), "second")
    assert lost.wait(5.0)
    keeper.join(timeout=5.0)
    assert not first.held
    first.release()  # not held: leaves the other owner's lease alone
    assert store.lease_owner(job.id) == "second"
