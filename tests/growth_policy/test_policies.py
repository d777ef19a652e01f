"""Each policy fires exactly where it should on synthetic traces, and not elsewhere."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from pydantic import ValidationError

from growth_policy import (
    Controller,
    GrowthPolicyConfig,
    Observation,
    PolicyContext,
    Verdict,
    data_scaling,
    get_policy,
    manual,
    plateau,
    register_policy,
    registered_policies,
    schedule,
    unregister_policy,
)

from ._traces import make_obs

CFG = GrowthPolicyConfig()


def trace(
    loss: Callable[[int], float],
    *,
    gap: float = 0.05,
    until: int = 2000,
    every: int = 50,
    size: Callable[[int], int] = lambda s: 1000,
    generation: Callable[[int], int] = lambda s: 0,
) -> list[Observation]:
    out = []
    gen_start = 0
    for step in range(every, until + every, every):
        g = generation(step)
        if out and g != out[-1].generation:
            gen_start = step
        out.append(
            make_obs(
                step=step,
                generation=g,
                generation_step=step - gen_start,
                dataset_size=size(step),
                train_loss=loss(step),
                val_loss=loss(step) * (1 + gap),
            )
        )
    return out


def run_policy(
    policy: Callable[[PolicyContext], Verdict],
    obs: list[Observation],
    cfg: GrowthPolicyConfig = CFG,
) -> list[tuple[Observation, Verdict]]:
    return [(o, policy(PolicyContext(o, obs[: i + 1], cfg))) for i, o in enumerate(obs)]


def linear_then_flat(step: int) -> float:
    """Falls 0.001 per step until step 1000, then flat at 1.0."""
    return 2.0 - 0.001 * min(step, 1000)


def test_plateau_fires_exactly_when_the_window_has_flattened() -> None:
    verdicts = run_policy(plateau, trace(linear_then_flat))
    fired = [o.step for o, v in verdicts if v.grow]
    # At 1250 the window starts at 950 (loss 1.05 → 1.0: 4.8% ≥ 1%); from 1300 it starts at 1000.
    assert fired == list(range(1300, 2050, 50))
    states = {o.step: v.state for o, v in verdicts}
    assert states[300] == "measuring"  # the first observation is at step 50
    assert states[350] == "improving"
    assert states[1250] == "improving"
    first = {o.step: v for o, v in verdicts}[1300]
    assert first.reason == "train loss improved 0% over 300 steps (< 1%), gap 5% (<= 50%)"
    assert first.numbers["improvement"] == 0.0
    assert first.numbers["gap"] == pytest.approx(0.05)


def test_plateau_reads_a_line_through_the_window_not_two_noisy_points() -> None:
    # Falling 5% per 300 steps with ±3% alternating noise: two end points would see plateaus.
    def noisy(step: int) -> float:
        return (2.0 - 0.1 * step / 300) * (1.03 if (step // 50) % 4 < 2 else 0.97)

    obs = trace(noisy, until=1500)
    two_point = [
        o.step
        for i, o in enumerate(obs)
        if i >= 6 and (obs[i - 6].train_loss - o.train_loss) / obs[i - 6].train_loss < 0.01
    ]
    assert two_point  # the naive reading would have grown
    assert not any(v.grow for _, v in run_policy(plateau, obs))


def test_plateau_reason_carries_the_numbers() -> None:
    # 0.4% improvement over the window: 1.0 → 0.996.
    obs = [
        make_obs(step=100, generation_step=100, train_loss=1.0, val_loss=1.03),
        make_obs(step=400, generation_step=400, train_loss=0.996, val_loss=0.996 * 1.03),
    ]
    v = plateau(PolicyContext(obs[-1], obs, CFG))
    assert v.grow
    assert "train loss improved 0.4% over 300 steps (< 1%)" in v.reason
    assert "gap 3% (<= 50%)" in v.reason


def test_plateau_does_not_grow_on_a_rising_loss() -> None:
    # New data lifts the smoothed loss for a while: 1.0 → 1.05 over the window is no plateau;
    # a flat window with a slight rise (0.5%, within the 1% band) still is.
    rising = [
        make_obs(step=100, generation_step=100, train_loss=1.0, val_loss=1.03),
        make_obs(step=400, generation_step=400, train_loss=1.05, val_loss=1.05 * 1.03),
    ]
    v = plateau(PolicyContext(rising[-1], rising, CFG))
    assert not v.grow
    assert v.state == "rising"
    assert "rose 5% over 300 steps" in v.reason
    flat = [rising[0], rising[1].model_copy(update={"train_loss": 1.005, "val_loss": 1.035})]
    assert plateau(PolicyContext(flat[-1], flat, CFG)).grow


def test_plateau_does_not_grow_while_overfitting_and_says_so() -> None:
    verdicts = run_policy(plateau, trace(linear_then_flat, gap=0.8))
    assert not any(v.grow for _, v in verdicts)
    last = verdicts[-1][1]
    assert last.state == "overfitting"
    assert last.notable
    assert "overfitting" in last.reason
    assert "80% above train loss" in last.reason
    assert "waiting for data" in last.reason


def test_plateau_needs_a_validation_loss() -> None:
    obs = [o.model_copy(update={"val_loss": None}) for o in trace(linear_then_flat)]
    verdicts = run_policy(plateau, obs)
    assert not any(v.grow for _, v in verdicts)
    assert verdicts[-1][1].state == "no_validation"


def test_plateau_window_restarts_when_data_grows() -> None:
    # The dataset doubles at step 1100: the window may only start there, so the first firing is at 1400.
    obs = trace(linear_then_flat, size=lambda s: 1000 if s < 1100 else 2000)
    fired = [o.step for o, v in run_policy(plateau, obs) if v.grow]
    assert fired[0] == 1400
    assert 1300 not in fired


def test_plateau_small_data_growth_does_not_restart_the_window() -> None:
    obs = trace(linear_then_flat, size=lambda s: 1000 if s < 1100 else 1050)
    fired = [o.step for o, v in run_policy(plateau, obs) if v.grow]
    assert fired[0] == 1300


def test_plateau_window_stays_inside_the_generation() -> None:
    obs = trace(linear_then_flat, generation=lambda s: 0 if s < 1200 else 1)
    fired = [o.step for o, v in run_policy(plateau, obs) if v.grow]
    # Generation 1 starts at 1200; its window is full at 1500.
    assert fired[0] == 1500
    assert all(s >= 1500 for s in fired)


# The data-scaling mechanics at the original coefficient (the default is 3.0, docs/learning.md).
CFG25 = GrowthPolicyConfig.model_validate({"data_scaling": {"coefficient": 2.5}})


def test_data_scaling_grows_when_far_enough_below_target() -> None:
    ctx = PolicyContext(make_obs(dataset_size=1000, param_count=1098), [], CFG25)
    v = data_scaling(ctx)
    assert v.grow
    assert v.target_params == 2500
    assert v.reason == (
        "1,000 samples call for 2.5k parameters (2.5 × 1,000^1), "
        "the model has 1.1k (target ×2.28 >= ×1.5)"
    )
    assert v.numbers["target_params"] == 2500
    assert v.numbers["target_ratio"] == pytest.approx(2500 / 1098)


@pytest.mark.parametrize(
    ("dataset_size", "params", "grows"),
    [
        (600, 1000, True),  # target 1500: ratio exactly 1.5
        (599, 1000, False),  # target 1498
        (1000, 2000, False),  # ratio 1.25
        (32_000, 40_000, True),  # target 80k: ratio 2
        (0, 1000, False),  # no data
    ],
)
def test_data_scaling_threshold(dataset_size: int, params: int, grows: bool) -> None:
    v = data_scaling(
        PolicyContext(make_obs(dataset_size=dataset_size, param_count=params), [], CFG25)
    )
    assert v.grow is grows


def test_data_scaling_coefficient_and_exponent_are_used() -> None:
    cfg = GrowthPolicyConfig.model_validate(
        {"data_scaling": {"coefficient": 10.0, "exponent": 0.5}}
    )
    v = data_scaling(PolicyContext(make_obs(dataset_size=10_000, param_count=500), [], cfg))
    assert v.target_params == 1000  # 10 × sqrt(10,000)
    assert v.grow


def test_schedule_counts_thresholds_against_the_generation() -> None:
    cfg = GrowthPolicyConfig.model_validate(
        {
            "policies": ["schedule"],
            "schedule": {"at_dataset_sizes": [2000, 8000], "at_steps": [5000]},
        }
    )

    def verdict(size: int, step: int, gen: int) -> Verdict:
        o = make_obs(dataset_size=size, step=step, generation=gen)
        return schedule(PolicyContext(o, [o], cfg))

    assert not verdict(1999, 4999, 0).grow
    v = verdict(2000, 100, 0)
    assert v.grow
    assert v.reason == "schedule: dataset size 2,000 >= 2,000: 1 growths due, generation 0"
    assert not verdict(2000, 100, 1).grow
    assert verdict(2000, 5000, 1).grow  # the step threshold is the second growth due
    assert not verdict(8000, 5000, 3).grow
    assert verdict(8000, 5000, 2).numbers["growths_due"] == 3
    assert "next at dataset size 8,000" in verdict(2000, 100, 1).reason


def test_manual_policy_never_fires() -> None:
    v = manual(PolicyContext(make_obs(dataset_size=10**6, param_count=10), [], CFG))
    assert not v.grow
    assert v.state == "manual"


def test_registry_accepts_a_custom_policy_and_the_controller_uses_it() -> None:
    def always(ctx: PolicyContext) -> Verdict:
        return Verdict("always", True, "always", f"always grows (step {ctx.obs.step})", {"x": 1})

    with pytest.raises(ValidationError, match="unknown 'always'"):
        GrowthPolicyConfig(policies=["always"])
    register_policy("always", always)
    try:
        assert "always" in registered_policies()
        assert get_policy("always") is always
        cfg = GrowthPolicyConfig(policies=["always"])
        d = Controller(cfg).observe(make_obs(step=5000, generation_step=5000))
        assert d.grows
        assert d.policy == "always"
        assert d.reason.startswith("always grows (step 5000): widening")
        with pytest.raises(ValueError, match="already registered"):
            register_policy("always", always)
    finally:
        unregister_policy("always")
    assert "always" not in registered_policies()
    with pytest.raises(ValueError, match="built in"):
        unregister_policy("plateau")
    with pytest.raises(KeyError, match="unknown policy 'always'"):
        get_policy("always")
