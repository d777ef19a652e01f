"""Convergence detection, budgets and compute accounting (``workers.compute``), as pure logic."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from workers.compute import ComputeMeter, ConvergenceDetector, Tally, spent, train_flops
from workers.spec import BudgetSpec, ComputeSpec


def _feed(
    detector: ConvergenceDetector,
    losses: list[float],
    *,
    version: int = 1,
    generation: int = 0,
    start: int = 0,
    batch: int = 100,
) -> list[tuple[bool, bool]]:
    """(improved, converged) per observation, one every 10 steps of ``batch`` samples."""
    out = []
    for i, loss in enumerate(losses):
        step = (start + i + 1) * 10
        verdict = detector.update(
            step=step, samples_seen=step * batch, dataset_version=version, dataset_size=500,
            generation=generation, val_loss=loss,
        )  # fmt: skip
        out.append((verdict.improved, verdict.converged is not None))
    return out


def test_converges_after_patience_observations_without_an_improvement_beyond_the_margin() -> None:
    detector = ConvergenceDetector(ComputeSpec(patience=3, min_improvement=0.01))
    # 1.0 best; 0.995 is within 1%: not an improvement; 0.98 is; then three without.
    got = _feed(detector, [1.0, 0.995, 0.98, 0.979, 0.99, 0.975])
    assert got == [(True, False), (False, False), (True, False), (False, False), (False, False),
                   (False, True)]  # fmt: skip
    verdict = detector.update(step=70, samples_seen=7000, dataset_version=1, dataset_size=500,
                              generation=0, val_loss=0.99)  # fmt: skip
    assert verdict.converged is not None
    c = verdict.converged
    assert c.best_step == 30
    assert c.numbers["best_val_loss"] == pytest.approx(0.98)
    assert c.numbers["observations_since_best"] == 4
    assert c.numbers["samples_since_best"] == 4000
    assert c.numbers["dataset_version"] == 1 and c.numbers["dataset_size"] == 500
    assert "0.98" in c.reason and "step 30" in c.reason and "no new data" in c.reason
    assert "patience 3 observations" in c.reason


def test_new_data_or_a_new_generation_starts_the_count_over() -> None:
    detector = ConvergenceDetector(ComputeSpec(patience=2, min_improvement=0.0))
    assert _feed(detector, [1.0, 1.0]) == [(True, False), (False, False)]
    # The next observation would converge on version 1; on version 2 it is a new best.
    assert _feed(detector, [1.2], version=2, start=2) == [(True, False)]
    assert _feed(detector, [1.3], version=2, start=3) == [(False, False)]
    assert _feed(detector, [1.3], version=2, generation=1, start=4) == [(True, False)]
    assert _feed(detector, [1.3, 1.3], version=2, generation=1, start=5) == [
        (False, False),
        (False, True),
    ]
    detector.reset()  # a wake without new data
    assert _feed(detector, [1.3], version=2, generation=1, start=7) == [(True, False)]


def test_patience_in_samples_and_no_validation_never_converges() -> None:
    detector = ConvergenceDetector(
        ComputeSpec(patience=200, patience_unit="samples", min_improvement=0.0)
    )
    # 10 samples per step, 10 steps per observation: 100 samples per observation.
    assert _feed(detector, [1.0, 1.0], batch=10) == [(True, False), (False, False)]
    assert _feed(detector, [1.0], batch=10, start=2) == [(False, True)]  # 200 samples since
    none = ConvergenceDetector(ComputeSpec(patience=1))
    for step in (10, 20, 30):
        verdict = none.update(step=step, samples_seen=step, dataset_version=1, dataset_size=5,
                              generation=0, val_loss=None)  # fmt: skip
        assert not verdict.improved and verdict.converged is None


def test_budgets_name_the_first_limit_reached() -> None:
    tally = Tally(steps=100, samples=6400, flops=3e9, busy_s=12.5)
    assert spent(BudgetSpec(), tally) is None
    assert spent(BudgetSpec(steps=101, samples=10_000), tally) is None
    assert spent(BudgetSpec(steps=100), tally) == "100 steps of 100"
    assert spent(BudgetSpec(samples=6400), tally) == "6,400 samples of 6,400"
    assert spent(BudgetSpec(flops=2e9), tally) == "3e+09 FLOPs of 2e+09"
    assert spent(BudgetSpec(seconds=10), tally) == "12.5 busy seconds of 10"
    assert not BudgetSpec().limited and BudgetSpec(seconds=1).limited
    with pytest.raises(ValidationError):
        BudgetSpec(steps=0)
    with pytest.raises(ValidationError):
        ComputeSpec.model_validate({"idle_when_converged": True, "patiense": 3})


def test_the_meter_books_per_generation_and_per_version_and_gives_the_duty_cycle() -> None:
    meter = ComputeMeter(started=1000.0)
    meter.add(0, 1, steps=10, samples=640, flops=train_flops(100, 640), busy_s=2.0)
    meter.add(0, 2, steps=5, samples=320, flops=train_flops(100, 320), busy_s=1.0)
    meter.add(1, 2, steps=5, samples=320, flops=train_flops(300, 320), busy_s=1.0)
    snap = meter.snapshot(now=1016.0)
    assert (snap["steps"], snap["samples"], snap["busy_s"]) == (20, 1280, 4.0)
    assert snap["flops"] == pytest.approx(6 * (100 * 960 + 300 * 320))
    assert snap["duty_cycle"] == pytest.approx(0.25) and snap["elapsed_s"] == 16.0
    assert snap["per_generation"]["0"]["steps"] == 15 and snap["per_generation"]["1"]["steps"] == 5
    assert snap["per_version"]["1"]["busy_s"] == 2.0 and snap["per_version"]["2"]["samples"] == 640
    assert meter.version(2).steps == 10 and meter.version(7).steps == 0
    again = ComputeMeter()
    again.load_state_dict(meter.state_dict())
    assert again.snapshot(now=1016.0) == snap


def test_the_snapshot_keeps_the_newest_versions_and_sums_the_rest() -> None:
    meter = ComputeMeter(started=0.0)
    for version in range(1, 26):
        meter.add(0, version, steps=1, samples=1, flops=1.0, busy_s=1.0)
    snap = meter.snapshot(now=100.0, versions=20)
    assert next(iter(snap["per_version"])) == "earlier"
    assert snap["per_version"]["earlier"]["steps"] == 5
    assert len(snap["per_version"]) == 21 and "25" in snap["per_version"]
