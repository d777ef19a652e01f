"""What and where: widen modes, deepen rule, limits that shrink or refuse, manual ops."""

from __future__ import annotations

from typing import Any

import pytest

from growth_policy import (
    GrowthOp,
    GrowthPolicyConfig,
    Limits,
    check_op,
    growth_op_from_request,
    parse_summary,
    plan_deepen,
    plan_widen,
)
from growth_policy.shape import ModelShape

from ._traces import make_obs, mlp_params, mlp_summary


def cfg(**kw: Any) -> GrowthPolicyConfig:
    return GrowthPolicyConfig.model_validate(kw)


def shape_of(widths: list[int]) -> ModelShape:
    return parse_summary(mlp_summary(40, widths, 10))


def obs_for(widths: list[int], **kw: Any) -> Any:
    return make_obs(param_count=mlp_params(40, widths, 10), **kw)


NO_LIMITS = Limits(max_params=10**9)


def test_factor_mode_widens_every_group_with_exact_counts() -> None:
    c = cfg(widen={"mode": "factor", "factor": 2.0, "init": "random_pad", "noise": 0.0})
    plan = plan_widen(obs_for([16, 16]), shape_of([16, 16]), c, NO_LIMITS)
    assert plan.op is not None
    assert plan.op.factor == 2.0
    assert plan.op.widths is None
    assert plan.op.init == "random_pad"
    assert plan.params_after == mlp_params(40, [32, 32], 10) == 2698
    assert plan.description == "widening all groups ×2, 1.1k → 2.7k parameters"


def test_target_mode_takes_the_smallest_factor_that_reaches_the_target() -> None:
    c = cfg()  # mode 'target'
    plan = plan_widen(obs_for([16, 16]), shape_of([16, 16]), c, NO_LIMITS, target_params=5000)
    assert plan.op is not None and plan.op.factor is not None
    f = plan.op.factor
    assert plan.params_after >= 5000
    assert shape_of([16, 16]).count(shape_of([16, 16]).widths_for_factor(f - 0.01)) < 5000
    assert plan.numbers["target_params"] == 5000


def test_target_mode_is_clamped_to_the_factor_range() -> None:
    c = cfg(widen={"min_factor": 1.25, "max_factor": 3.0, "factor": 2.0})
    huge = plan_widen(obs_for([16, 16]), shape_of([16, 16]), c, NO_LIMITS, target_params=10**7)
    assert huge.op is not None and huge.op.factor == 3.0
    tiny = plan_widen(obs_for([16, 16]), shape_of([16, 16]), c, NO_LIMITS, target_params=1100)
    assert tiny.op is not None and tiny.op.factor == 1.25


def test_max_params_shrinks_the_factor_to_fit() -> None:
    c = cfg(widen={"mode": "factor", "factor": 2.0})
    limits = Limits(max_params=2000)
    plan = plan_widen(obs_for([16, 16]), shape_of([16, 16]), c, limits)
    assert plan.op is not None and plan.op.factor is not None
    assert 1.25 <= plan.op.factor < 2.0
    assert plan.params_after <= 2000
    assert plan.params_after == mlp_params(40, [int(-(-16 * plan.op.factor // 1))] * 2, 10)
    assert "(×2 capped to fit)" in plan.description


def test_refused_when_even_the_smallest_growth_breaks_max_params() -> None:
    c = cfg(widen={"mode": "factor", "factor": 2.0})
    plan = plan_widen(obs_for([16, 16]), shape_of([16, 16]), c, Limits(max_params=1200))
    assert plan.op is None
    assert plan.state == "max_params"
    assert plan.description == "max params 1.2k would be exceeded: 1.1k → 2.7k"
    assert plan.numbers["params_after"] == 2698
    assert plan.numbers["max_params"] == 1200


def test_memory_budget_refuses_a_growth_that_would_not_fit() -> None:
    c = cfg(widen={"mode": "factor"}, memory={"budget_gb": 1e-5, "batch_size": 64})
    plan = plan_widen(obs_for([16, 16]), shape_of([16, 16]), c, Limits.from_config(c))
    # 2698 params × 4 values × 4 B + 64 × 64 units × 4 × 4 B = 108,704 B > 10,737 B.
    assert plan.op is None
    assert plan.state == "memory"
    assert "memory budget 0.00 GiB would be exceeded: 1.1k → 2.7k parameters" in plan.description
    assert plan.numbers["memory_bytes"] == 2698 * 16 + 64 * 64 * 16


def test_data_cap_limits_automatic_growth() -> None:
    c = cfg(widen={"mode": "factor", "factor": 4.0})
    plan = plan_widen(obs_for([16, 16]), shape_of([16, 16]), c, Limits(10**9, cap_params=5000))
    assert plan.op is not None
    assert plan.params_after <= 5000
    refused = plan_widen(obs_for([16, 16]), shape_of([16, 16]), c, Limits(10**9, cap_params=1200))
    assert refused.state == "data_cap"
    assert "the data pays for at most 1.2k parameters (2 × the data-scaling target)" in (
        refused.description
    )


def test_saturated_mode_widens_only_saturated_groups() -> None:
    c = cfg(widen={"mode": "saturated"}, saturation={"threshold": 0.9})
    signals = {"fc0": {"active_fraction": 0.95}, "fc1": {"active_fraction": 0.5}}
    plan = plan_widen(obs_for([16, 16]), shape_of([16, 16]), c, NO_LIMITS, signals=signals)
    assert plan.op is not None
    assert plan.op.widths == {"fc0": 32}
    assert plan.params_after == mlp_params(40, [32, 16], 10)
    assert "widening 1 of 2 groups (fc0 16→32)" in plan.description
    assert plan.numbers["active_fraction[fc1]"] == 0.5


def test_saturated_mode_refuses_when_no_group_is_saturated() -> None:
    c = cfg(widen={"mode": "saturated"})
    signals = {"fc0": {"active_fraction": 0.4}, "fc1": {"active_fraction": 0.7}}
    plan = plan_widen(obs_for([16, 16]), shape_of([16, 16]), c, NO_LIMITS, signals=signals)
    assert plan.op is None
    assert plan.state == "not_saturated"
    assert plan.description == "no width group is saturated: highest active_fraction 0.7 < 0.9"


def test_saturated_mode_without_signals_widens_everything_and_says_so() -> None:
    c = cfg(widen={"mode": "saturated"})
    plan = plan_widen(obs_for([16, 16]), shape_of([16, 16]), c, NO_LIMITS, signals={})
    assert plan.op is not None and plan.op.factor == 2.0
    assert "no active_fraction signals reported, so all groups" in plan.description


def test_max_width_excludes_groups_at_the_limit() -> None:
    c = cfg(widen={"mode": "factor", "max_width": 48})
    plan = plan_widen(obs_for([48, 16]), shape_of([48, 16]), c, NO_LIMITS)
    assert plan.op is not None
    assert plan.op.widths == {"fc1": 32}
    clamp = plan_widen(obs_for([40, 40]), shape_of([40, 40]), c, NO_LIMITS)
    assert clamp.op is not None and clamp.op.widths == {"fc0": 48, "fc1": 48}
    none = plan_widen(obs_for([48, 48]), shape_of([48, 48]), c, NO_LIMITS)
    assert none.op is None and none.state == "max_width"


def test_without_a_summary_the_widen_is_estimated() -> None:
    c = cfg(widen={"mode": "factor"})
    plan = plan_widen(make_obs(param_count=1000), None, c, NO_LIMITS)
    assert plan.op is not None and plan.op.factor == 2.0
    assert plan.params_after == 4000
    assert "no model summary: sizes estimated" in plan.description
    assert "1.0k → ≈4.0k parameters" in plan.description


@pytest.mark.parametrize(("where", "after"), [("last", "act1"), ("first", "act0")])
def test_deepen_rule_and_style(where: str, after: str) -> None:
    c = cfg(deepen={"where": where})
    widths = [16, 24]
    plan = plan_deepen(obs_for(widths), shape_of(widths), c, NO_LIMITS)
    assert plan.op is not None
    assert plan.op.op == "deepen"
    assert plan.op.after == after
    assert plan.op.style == "identity"  # the candidate says identity is exact there
    w = widths[int(after[-1])]
    assert plan.params_after == mlp_params(40, widths, 10) + w * w + w


def test_deepen_auto_style_is_residual_where_identity_is_not_exact() -> None:
    s = parse_summary(mlp_summary(40, [16], 10, exact=False))
    plan = plan_deepen(obs_for([16]), s, cfg(), NO_LIMITS)
    assert plan.op is not None and plan.op.style == "residual"


def test_deepen_refusals() -> None:
    no_summary = plan_deepen(make_obs(), None, cfg(), NO_LIMITS)
    assert no_summary.state == "no_summary"
    over = plan_deepen(obs_for([16, 16]), shape_of([16, 16]), cfg(), Limits(max_params=1100))
    assert over.state == "max_params"
    assert over.description == "max params 1.1k would be exceeded: 1.1k → 1.4k"


def test_check_op_applies_a_manual_op_as_given_or_refuses() -> None:
    c = cfg()
    s = shape_of([16, 16])
    ok = check_op(obs_for([16, 16]), s, GrowthOp(op="widen", widths={"fc1": 20}), c, NO_LIMITS)
    assert ok.op is not None and ok.op.widths == {"fc1": 20}
    assert ok.params_after == mlp_params(40, [16, 20], 10)
    assert ok.description == "widening fc1 to 20, 1.1k → 1.2k parameters"
    bad = check_op(obs_for([16, 16]), s, GrowthOp(op="widen", widths={"zz": 20}), c, NO_LIMITS)
    assert bad.state == "unknown_target"
    assert "unknown width groups zz; groups: fc0, fc1" in bad.description
    big = check_op(obs_for([16, 16]), s, GrowthOp(op="widen", factor=4.0), c, Limits(5000))
    assert big.state == "max_params"
    assert big.description == "max params 5.0k would be exceeded: 1.1k → 7.4k"
    where = check_op(obs_for([16, 16]), s, GrowthOp(op="deepen", after="fc9"), c, NO_LIMITS)
    assert where.state == "unknown_target"
    sp = GrowthOp(op="shrink_perturb", shrink=0.5, perturb=0.01)
    assert check_op(obs_for([16, 16]), s, sp, c, NO_LIMITS).params_after == 1098


def test_integer_factor_groups_get_explicit_widths() -> None:
    s = mlp_summary(40, [16, 16], 10)
    s["groups"][1]["integer_factor"] = True  # say a LayerNorm normalises over fc1
    shape = parse_summary(s)
    plan = plan_widen(obs_for([16, 16]), shape, cfg(), NO_LIMITS, target_params=2000)
    assert plan.op is not None
    # net2net.widen(factor=1.5) would refuse the LayerNorm group: the op names widths instead.
    assert plan.op.factor is None
    assert plan.op.widths is not None
    assert plan.op.widths["fc1"] == 32
    assert plan.op.widths["fc0"] < 32
    assert plan.params_after == mlp_params(40, [plan.op.widths["fc0"], 32], 10)


def test_residual_deepen_counts_the_residual_block() -> None:
    c = cfg(deepen={"style": "residual"})
    plan = plan_deepen(obs_for([16, 16]), shape_of([16, 16]), c, NO_LIMITS)
    assert plan.op is not None and plan.op.style == "residual"
    assert plan.params_after == 1098 + 2 * (16 * 16 + 16)
    strict = cfg(deepen={"style": "identity"})
    s = parse_summary(mlp_summary(40, [16], 10, exact=False))
    refused = plan_deepen(obs_for([16]), s, strict, NO_LIMITS)
    assert refused.state == "not_exact"
    assert "an identity layer is not exact after act0" in refused.description


def test_a_widen_request_takes_what_it_leaves_unsaid_from_the_jobs_widen_config() -> None:
    c = cfg(widen={"init": "copy_zero", "noise": 0.05, "split": "random"})
    op = growth_op_from_request({"op": "widen", "factor": 2}, c)
    assert op is not None
    assert (op.factor, op.init, op.noise, op.split) == (2.0, "copy_zero", 0.05, "random")
    said = growth_op_from_request({"op": "widen", "factor": 2, "init": "net2net", "noise": 0}, c)
    assert said is not None
    assert (said.init, said.noise, said.split) == ("net2net", 0.0, "random")
    assert GrowthOp(op="widen", factor=2).init == "net2net"  # not the GrowthOp default


def test_a_request_other_than_widen_is_validated_as_given() -> None:
    c = cfg(widen={"init": "copy_zero"})
    assert growth_op_from_request({}, c) is None  # the controller chooses
    op = growth_op_from_request({"op": "deepen", "after": "act0"}, c)
    assert op == GrowthOp(op="deepen", after="act0")
    with pytest.raises(ValueError, match="exactly one of 'factor' or 'widths'"):
        growth_op_from_request({"op": "widen"}, c)
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        growth_op_from_request({"op": "deepen", "after": "act0", "size": 2}, c)


def test_planned_widens_use_the_jobs_widen_config() -> None:
    c = cfg(widen={"mode": "factor", "init": "copy_zero", "noise": 0.05, "split": "random"})
    plan = plan_widen(obs_for([16, 16]), shape_of([16, 16]), c, NO_LIMITS)
    assert plan.op is not None
    assert (plan.op.init, plan.op.noise, plan.op.split) == ("copy_zero", 0.05, "random")
