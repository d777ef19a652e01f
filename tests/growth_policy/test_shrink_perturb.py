"""Shrink-and-perturb as a controller action: when the data has grown enough, never in a cooldown's
way, off by default."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from pydantic import ValidationError

from growth_policy import Controller, GrowthPolicyConfig, ShrinkPerturbConfig

from ._traces import make_obs, mlp_summary, simulate

STAGES = [1000, 2000, 4000, 8000, 16000, 32000]


def cfg(**kw: Any) -> GrowthPolicyConfig:
    return GrowthPolicyConfig.model_validate(kw)


def test_on_by_default_but_never_with_manual_policies_only() -> None:
    assert GrowthPolicyConfig().shrink_perturb.enabled is True
    run = simulate(Controller(), stages=STAGES, steps_per_stage=1500)
    assert sum(d.op.op == "shrink_perturb" for _, d in run.growths if d.op is not None) == 5
    manual = simulate(Controller(cfg(policies=["manual"])), stages=STAGES, steps_per_stage=1500)
    assert not manual.growths
    off = simulate(
        Controller(cfg(shrink_perturb={"enabled": False})), stages=STAGES, steps_per_stage=1500
    )
    assert all(d.op.op != "shrink_perturb" for _, d in off.growths if d.op is not None)


def test_once_per_doubling_of_the_data_after_the_growth_it_brings() -> None:
    # Shrink-and-perturb opens generations too: leave room under max_generations.
    config = cfg(
        shrink_perturb={"enabled": True, "shrink": 0.5, "perturb": 0.02},
        guards={"max_generations": 20},
    )
    run = simulate(Controller(config), stages=STAGES, steps_per_stage=1500)
    sp = [(o, d) for o, d in run.growths if d.op is not None and d.op.op == "shrink_perturb"]
    widen = [(o, d) for o, d in run.growths if d.op is not None and d.op.op == "widen"]
    # One per stage after the first (the data doubles each time), with the configured values.
    assert [o.dataset_size for o, _ in sp] == STAGES[1:]
    for o, d in sp:
        assert d.op is not None and d.op.shrink == 0.5 and d.op.perturb == 0.02
        assert d.policy == "shrink_perturb" and d.notable
        assert "shrink and perturb" in d.reason and "×2" in d.reason
        assert d.numbers["params_before"] == d.numbers["params_after"] == o.param_count
    # It does not hold back growth: the same widths as without it, each stage's growth first.
    plain = simulate(
        Controller(cfg(shrink_perturb={"enabled": False})), stages=STAGES, steps_per_stage=1500
    )
    assert run.widths == plain.widths
    assert [o.step for o, _ in widen] == [o.step for o, _ in plain.growths]
    # Growth cooldowns are counted between growths only.
    steps = [o.step for o, _ in widen]
    assert all(b - a >= 300 for a, b in itertools.pairwise(steps))
    # Seeds follow the generation like any growth.
    seeds = [d.op.seed for _, d in run.growths if d.op is not None]
    assert len(set(seeds)) == len(seeds)


def test_waits_for_the_warm_up_and_a_large_enough_push() -> None:
    config = cfg(
        data_scaling={"coefficient": 1e-3},  # automatic, but never below its target
        shrink_perturb={"enabled": True, "min_data_growth": 0.5},
    )
    c = Controller(config)
    summary = mlp_summary(40, [16, 16], 10)
    d = c.observe(make_obs(step=50, samples_seen=500, dataset_size=1000, summary=summary))
    assert d.op is None
    # +40%: not enough; +60%: but still inside the warm-up pass over the first 1,000 samples.
    assert c.observe(make_obs(step=100, samples_seen=900, dataset_size=1400)).op is None
    assert c.observe(make_obs(step=150, samples_seen=990, dataset_size=1600)).op is None
    d = c.observe(make_obs(step=200, samples_seen=1100, dataset_size=1600))
    assert d.op is not None and d.op.op == "shrink_perturb"
    c.notify_grown(step=200, generation=1, op=d.op)
    # Measured from the last one now: 1,600 × 1.5 = 2,400.
    assert c.observe(make_obs(step=250, generation=1, generation_step=50, samples_seen=1200,
                              dataset_size=2300)).op is None  # fmt: skip
    d = c.observe(make_obs(step=300, generation=1, generation_step=100, samples_seen=1300,
                           dataset_size=2400))  # fmt: skip
    assert d.op is not None and d.op.op == "shrink_perturb"


def test_state_round_trip_keeps_the_reference_size() -> None:
    config = cfg(data_scaling={"coefficient": 1e-3}, shrink_perturb={"enabled": True})
    c = Controller(config)
    c.observe(make_obs(step=50, samples_seen=2000, dataset_size=1000))
    d = c.observe(make_obs(step=100, samples_seen=3000, dataset_size=2000))
    assert d.op is not None and d.op.op == "shrink_perturb"
    c.notify_grown(step=100, generation=1, op=d.op)
    fresh = Controller(config)
    fresh.load_state_dict(c.state_dict())
    obs = make_obs(step=150, generation=1, generation_step=50, samples_seen=4000, dataset_size=3000)
    assert fresh.observe(obs).op is None  # 3,000 < 2 × 2,000


def test_config_refuses_a_no_op() -> None:
    with pytest.raises(ValidationError, match="would change nothing"):
        ShrinkPerturbConfig(shrink=1.0, perturb=0.0)
