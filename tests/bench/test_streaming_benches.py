"""Smoke tests of the streaming benchmarks (in-process loop, no Ray): freshness times a push to its
first training step; memory compares the streamed reader with the resident one on data that fits."""

from __future__ import annotations

from pathlib import Path

import pytest

from workers.spec import ReplaySpec

pytestmark = pytest.mark.slow


def test_freshness_times_each_push(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from bench import freshness

    monkeypatch.setenv("LIFELONG_BENCH_CACHE", str(tmp_path))
    latencies = freshness.run_one(10_000, ReplaySpec(), pushes=2, timeout=10.0)
    assert len(latencies) == 2 and all(0.0 < x < 10.0 for x in latencies)


def test_memory_speed_runs_resident_and_streamed(tmp_path: Path) -> None:
    from bench import memory

    fits = 20_000  # a tenth of it (528 KB) leaves room for windows after the newest window
    resident = memory.speed(tmp_path, None, samples=fits, steps=150, seed=0)
    streamed = memory.speed(tmp_path, fits * 264 // 10, samples=fits, steps=150, seed=0)
    assert not resident["streamed"] and streamed["streamed"]
    assert streamed["resident_bytes"] <= fits * 264 // 10
    for run in (resident, streamed):
        assert run["samples_per_s"] > 0 and 0.0 <= run["accuracy"] <= 1.0
