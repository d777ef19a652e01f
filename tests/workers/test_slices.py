"""Per-slice validation (workers.slices): slices, forgetting, backward transfer, drift."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from workers.slices import SliceTracker, per_sample, slice_starts
from workers.spec import TaskSpec
from workers.tasks import evaluate


def test_small_versions_merge_until_a_slice_is_large_enough() -> None:
    versions = [(1, 40), (2, 10), (3, 10), (4, 15), (5, 3), (6, 50), (7, 1)]
    assert slice_starts(versions, min_samples=32) == [1, 2, 5, 7]
    assert slice_starts([], min_samples=32) == []


def _observe(
    tracker: SliceTracker, starts: list[int], per_slice: dict[int, tuple[float, float]]
) -> dict[str, Any]:
    """Each slice's (metric, loss) on 4 samples of its first version."""
    versions, losses, metrics = [], [], []
    for start, (metric, loss) in per_slice.items():
        versions += [start] * 4
        losses += [loss] * 4
        metrics += [metric] * 4
    report = tracker.update(
        starts,
        torch.tensor(versions),
        torch.tensor(losses, dtype=torch.float64),
        torch.tensor(metrics, dtype=torch.float64),
    )
    return report.fields()


def test_forgetting_backward_transfer_and_drift_by_hand() -> None:
    t = SliceTracker(higher_is_better=True)
    # Task A alone, learned to 0.9.
    r = _observe(t, [1], {1: (0.5, 1.0)})
    assert r["forgetting"] is None and r["drift"] is None
    r = _observe(t, [1], {1: (0.9, 0.3)})
    # Task B arrives: A drops to 0.6, B is new (loss 2.0 against A's 0.6).
    r = _observe(t, [1, 5], {1: (0.6, 0.6), 5: (0.2, 2.0)})
    assert r["forgetting"] == pytest.approx(0.3)
    assert r["backward_transfer"] == pytest.approx(0.6 - 0.9)
    assert r["drift"] == pytest.approx(2.0 / 0.6)
    assert set(r["slices"]) == {"v1", "v5"}
    # B learned (0.8); A recovers a little (0.7); C arrives.
    _observe(t, [1, 5], {1: (0.7, 0.5), 5: (0.8, 0.4)})
    r = _observe(t, [1, 5, 9], {1: (0.7, 0.5), 5: (0.5, 0.9), 9: (0.1, 2.1)})
    # A: best 0.9, now 0.7 → 0.2; B: best 0.8, now 0.5 → 0.3.
    assert r["forgetting"] == pytest.approx(0.3)
    assert r["average_forgetting"] == pytest.approx(0.25)
    # BWT against the metric each had as the newest: A 0.9 (its last as newest), B 0.8.
    assert r["backward_transfer"] == pytest.approx(((0.7 - 0.9) + (0.5 - 0.8)) / 2)
    assert r["drift"] == pytest.approx(2.1 / 0.7)
    assert r["slice_count"] == 3


def test_regression_turns_the_signs() -> None:
    t = SliceTracker(higher_is_better=False)
    _observe(t, [1], {1: (0.2, 0.2)})
    r = _observe(t, [1, 2], {1: (0.5, 0.5), 2: (1.0, 1.0)})
    assert r["forgetting"] == pytest.approx(0.3)
    assert r["backward_transfer"] == pytest.approx(-0.3)


def test_state_dict_keeps_the_bests_across_a_resume() -> None:
    t = SliceTracker(higher_is_better=True)
    _observe(t, [1], {1: (0.9, 0.1)})
    again = SliceTracker(higher_is_better=True)
    again.load_state_dict(t.state_dict())
    r = _observe(again, [1, 2], {1: (0.4, 1.0), 2: (0.5, 1.0)})
    assert r["forgetting"] == pytest.approx(0.5)


def test_at_most_max_reported_slices_with_newest_oldest_and_worst() -> None:
    t = SliceTracker(higher_is_better=True, max_reported=4)
    starts = list(range(1, 21))
    _observe(t, starts, dict.fromkeys(starts, (0.9, 0.1)))
    worst = dict.fromkeys(starts, (0.9, 0.1))
    worst[11] = (0.1, 3.0)
    r = _observe(t, starts, worst)
    names = set(r["slices"])
    assert len(names) == 4 and {"v1", "v20", "v11"} <= names
    assert r["forgetting"] == pytest.approx(0.8)
    assert r["slice_count"] == 20


@pytest.mark.parametrize("kind", ["classification", "regression"])
def test_per_sample_means_are_what_evaluate_returns(kind: str) -> None:
    torch.manual_seed(0)
    if kind == "classification":
        task = TaskSpec(kind="classification", input_shape=(6,), num_classes=3)
        labels = torch.randint(0, 3, (50,))
    else:
        task = TaskSpec(kind="regression", input_shape=(6,), num_outputs=3)
        labels = torch.randn(50, 3)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(50, 6)
    losses, metrics = per_sample(model, x, labels, task, batch_size=16)
    loss, metric = evaluate(model, x, labels, task, batch_size=7)
    assert losses.shape == (50,) and metrics.shape == (50,)
    assert math.isclose(float(losses.mean()), loss, rel_tol=1e-6)
    assert math.isclose(float(metrics.mean()), metric, rel_tol=1e-6)
