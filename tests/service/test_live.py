"""The live view reads the event stream: state, metrics, and a line per notable event."""

from __future__ import annotations

import pytest

from service.api.models import EventPublic
from service.client.live import JobView


def _event(type: str, data: dict[str, object]) -> EventPublic:
    return EventPublic(id="1-0", type=type, time=0.0, data=data)  # type: ignore[arg-type]


def test_observation_updates_the_state() -> None:
    view = JobView("job")
    view.apply(_event("observation", {
        "step": 120, "generation": 1, "param_count": 3000, "dataset_size": 900, "val_size": 100,
        "train_loss": 0.5, "val_loss": 0.7, "val_metric": 0.81, "metric_name": "accuracy",
        "throughput": 1234.0, "samples_seen": 7680,
    }))  # fmt: skip
    assert (view.step, view.generation, view.params, view.val_metric) == (120, 1, 3000, 0.81)
    assert view.history[-1]["samples_seen"] == 7680
    assert not view.lines  # observations are not notable


def test_growth_lines_say_whether_the_function_was_kept() -> None:
    view = JobView("job")
    base = {"op": {"op": "widen"}, "params_before": 10, "params_after": 30, "pause_s": 0.25,
            "val_metric_before": 0.5, "val_metric_after": 0.5}  # fmt: skip
    view.apply(_event("generation", {**base, "generation_after": 1, "max_abs_error": 3e-6}))
    view.apply(_event("generation", {**base, "generation_after": 2, "max_abs_error": None,
                                     "op": {"op": "shrink_perturb"}}))  # fmt: skip
    exact, inexact = (line.plain for line in view.lines)
    assert "generation 1: widen 10 → 30 parameters, max |Δf| 3.0e-06" in exact
    assert "val accuracy 0.500 → 0.500" in exact
    assert "generation 2: shrink_perturb 10 → 30 parameters, not function-preserving" in inexact
    assert len(view.growths) == 2


def test_status_and_decisions_are_kept_in_order() -> None:
    view = JobView("job")
    view.apply(_event("status", {"status": "training", "previous": "pending", "reason": None}))
    view.apply(_event("decision", {"reason": "widening all groups ×2", "op": {"op": "widen"}}))
    assert view.status == "training"
    assert [line.plain.split(maxsplit=2)[1:] for line in view.lines] == [
        ["status", "training"],
        ["decision", "widening all groups ×2"],
    ]


def test_the_duty_cycle_runs_on_while_training_and_falls_while_converged() -> None:
    view = JobView("job")
    assert view.duty_cycle() is None and view._duty_text() == "-"
    compute = {"busy_s": 30.0, "elapsed_s": 40.0, "flops": 2.5e9}
    view.apply(_event("status", {"status": "training", "previous": "pending", "reason": None}))
    view.apply(EventPublic(id="2-0", type="status", time=1000.0,  # type: ignore[arg-type]
                           data={"loop": "converged", "compute": compute}))  # fmt: skip
    assert view.duty_cycle(now=1000.0) == 0.75
    assert view.duty_cycle(now=1020.0) == pytest.approx(50 / 60)  # still training: busy
    view.apply(_event("status", {"status": "converged", "previous": "training",
                                 "reason": "converged: the validation loss ..."}))  # fmt: skip
    assert view.duty_cycle(now=1020.0) == 0.5  # 30 busy seconds of 60: waiting is not busy
    assert view.lines[-1].plain.split(maxsplit=2)[1:] == [
        "status",
        "converged: converged: the validation loss ...",
    ]
    assert "2.5 GFLOP" in view._duty_text()
