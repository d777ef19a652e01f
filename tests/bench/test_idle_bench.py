"""Smoke test of the idle benchmark on a tiny clock-driven stream (in-process, no Ray): both
variants see every stage, and the one that waits when converged spends less."""

from __future__ import annotations

from pathlib import Path

import pytest

from workers.spec import ComputeSpec

pytestmark = pytest.mark.slow


def test_waiting_when_converged_spends_less_on_a_tiny_stream(tmp_path: Path) -> None:
    from bench import idle, stream

    data = stream.Stream(tmp_path, stages=(300, 600))
    registry = idle.variants()
    # A short patience and 6 s stages, so that it converges within a stage even on a loaded machine.
    quick = idle.Variant("idle-quick", "waits when converged", {"patience": 3})
    waits = idle.run_one(data, quick, seed=0, interval=6.0)
    trains = idle.run_one(data, registry["always"], seed=0, interval=6.0)
    for r in (waits, trains):
        assert len(r.stage_acc) == 2 and all(0.0 < a <= 1.0 for a in r.stage_acc)
        assert r.steps > 0 and r.flops > 0 and 0 < r.busy_s <= r.elapsed_s + 1e-6
        assert len(r.stage_busy_s) == 2
    assert trains.converged == 0 and trains.busy_s / trains.elapsed_s > 0.8
    assert waits.converged >= 1 and waits.flops < trains.flops
    default = "idle-last" if ComputeSpec().wake_from == "last" else "idle-best"
    assert [v.name for v in registry.values() if "(default)" in v.label] == [default]
