"""The drift policy: grows when the newest slice stays much harder than the history."""

from __future__ import annotations

import pytest

from growth_policy import (
    Controller,
    DriftConfig,
    GrowthPolicyConfig,
    Observation,
    PolicyContext,
    drift,
)

from ._traces import make_obs

CFG = GrowthPolicyConfig(
    policies=["drift"], drift=DriftConfig(min_drift=1.5, window_observations=4)
)


def _history(drifts: list[float | None], *, version: int = 2) -> list[Observation]:
    return [
        make_obs(
            step=100 * (i + 1), generation_step=100 * (i + 1), dataset_version=version, drift=d
        )
        for i, d in enumerate(drifts)
    ]


def _verdict(drifts: list[float | None], config: GrowthPolicyConfig = CFG) -> tuple[bool, str]:
    history = _history(drifts)
    v = drift(PolicyContext(history[-1], history, config))
    return v.grow, v.state


@pytest.mark.parametrize(
    ("drifts", "expected"),
    [
        ([None, None, None, None], (False, "no_slices")),
        ([3.0, 3.0, 3.0], (False, "measuring")),  # fewer observations than the window
        ([3.0, 3.0, 1.2, 3.0], (False, "measuring")),  # dipped below min_drift in the window
        ([3.0, 2.6, 2.2, 1.9], (False, "learning")),  # high but falling: it is learning
        ([1.1, 1.0, 1.2, 1.1], (False, "learning")),  # the new data is as hard as the old
        ([2.0, 2.05, 1.98, 2.0], (True, "stuck")),
        ([1.0, 1.0, 2.0, 2.0, 1.99, 2.01], (True, "stuck")),  # the last four count
    ],
)
def test_drift_grows_only_when_the_new_data_stays_unlearned(
    drifts: list[float | None], expected: tuple[bool, str]
) -> None:
    assert _verdict(drifts) == expected


def test_the_window_is_this_generation_on_this_data_version() -> None:
    old = _history([2.0, 2.0, 2.0], version=1)
    new = _history([2.0], version=2)
    history = [*old, new[0].model_copy(update={"step": 400})]
    v = drift(PolicyContext(history[-1], history, CFG))
    assert (v.grow, v.state) == (False, "measuring")
    assert v.numbers["observed"] == 1


def test_the_controller_grows_on_drift_with_its_reason() -> None:
    controller = Controller(CFG)
    decision = None
    for obs in _history([2.0, 2.0, 2.0, 2.0]):
        decision = controller.observe(obs)
    assert decision is not None and decision.op is not None
    assert decision.policy == "drift"
    assert "stays 2×" in decision.reason and "growing" in decision.reason
