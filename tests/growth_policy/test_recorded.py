"""Policies and controller on recorded traces: real training on sklearn digits, staged data.

``data/digits_traces.json`` is written by ``data/record_digits_traces.py``: a 3-unit MLP that
underfits (its loss flattens late in each stage, with a 9-28% relative gap) and a 256-unit MLP that
memorises its data (a gap of 1× to 250×). Neither grows; the tests read what the policies say.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from growth_policy import (
    Controller,
    GrowthPolicyConfig,
    Observation,
    PolicyContext,
    data_scaling,
    plateau,
)

TRACES = json.loads((Path(__file__).parent / "data" / "digits_traces.json").read_text())
CFG = GrowthPolicyConfig()


def load(name: str) -> list[Observation]:
    return [Observation(**o) for o in TRACES[name]]


def test_plateau_on_the_underfitting_trace_fires_late_in_the_later_stages() -> None:
    obs = load("narrow")
    verdicts = [plateau(PolicyContext(o, obs[: i + 1], CFG)) for i, o in enumerate(obs)]
    fired = [o.step for o, v in zip(obs, verdicts, strict=True) if v.grow]
    # 4550-4650: the fitted loss rose 2-5% over the window there, which is not a plateau.
    assert fired == [3000, 3050, 3750, 3800, 3850, 3950, 4450, 4500]
    for o, v in zip(obs, verdicts, strict=True):
        assert o.val_loss is not None
        gap = (o.val_loss - o.train_loss) / o.train_loss
        if v.grow:
            assert gap <= CFG.plateau.max_gap
            assert float(v.numbers["improvement"]) < CFG.plateau.min_improvement
            # Stages are 800 steps; the window needs 300 steps of the current stage.
            assert o.step % 800 >= 300 or o.step % 800 == 0
        assert v.state != "overfitting" or gap > CFG.plateau.max_gap


def test_plateau_on_the_memorising_trace_waits_for_data() -> None:
    obs = load("wide")
    verdicts = [plateau(PolicyContext(o, obs[: i + 1], CFG)) for i, o in enumerate(obs)]
    assert not any(v.grow for v in verdicts)
    assert sum(v.state == "overfitting" for v in verdicts) >= 90
    assert "waiting for data" in verdicts[-1].reason


@pytest.mark.parametrize(("name", "fires"), [("narrow", True), ("wide", False)])
def test_data_scaling_on_recorded_traces(name: str, fires: bool) -> None:
    # narrow: 235 parameters, target ≥ 500 from the first stage; wide: 19,210, target ≤ 3,750.
    obs = load(name)
    verdicts = [data_scaling(PolicyContext(o, [o], CFG)) for o in obs]
    assert all(v.grow is fires for v in verdicts)


def test_controller_on_the_memorising_trace_reports_overfitting_once_per_episode() -> None:
    obs = load("wide")
    # Plateau is what reports overfitting; shrink-and-perturb (on by default) would act on the
    # trace's pushes, which is not what this test is about.
    c = Controller(
        GrowthPolicyConfig(policies=["data_scaling", "plateau"], shrink_perturb={"enabled": False})
    )
    decisions = [c.observe(o) for o in obs]
    assert not any(d.grows for d in decisions)
    notable = [d for d in decisions if d.notable]
    # One event when overfitting is first seen; the state never changes back on this trace
    # except at the very first observations, before there is a gap to speak of.
    assert 1 <= len(notable) <= 2
    assert notable[-1].reason.startswith("data_scaling: 19.2k parameters for a target of")
    assert "overfitting: validation loss" in notable[-1].reason
