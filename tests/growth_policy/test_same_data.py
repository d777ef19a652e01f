"""The data rule: no growth on a training set that has not grown since the last growth, unless
the model plainly underfits it (``guards.regrow_on_same_data``)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from growth_policy import Controller, Decision, GrowthOp, GrowthPolicyConfig

from ._traces import make_obs, mlp_params, mlp_summary

W64 = mlp_params(40, [64, 64], 10)


def _grown_once(rule: str = "underfitting") -> Controller:
    """A controller whose data_scaling always wants more, after one growth (w16 → w64) at 1,000
    samples, applied at step 1010."""
    c = Controller(
        GrowthPolicyConfig.model_validate(
            {
                "guards": {"min_generation_steps": 0, "cooldown_steps": 0,
                           "max_params_over_target": None, "regrow_on_same_data": rule},
                "data_scaling": {"coefficient": 20},
            }
        )
    )  # fmt: skip
    first = c.observe(make_obs(summary=mlp_summary(40, [16, 16], 10)))
    assert first.grows and first.reason.endswith("; data: no growth before on this job's data")
    assert first.op is not None and first.op.factor == 4.0
    c.on_growth(SimpleNamespace(step=1010, generation_after=1, op=first.op))
    return c


def _after(c: Controller, steps: range, **kw: Any) -> list[Decision]:
    """Observations of generation 1 (w64) with a flat loss: train 1.0, validation 1.02."""
    return [
        c.observe(
            make_obs(step=s, generation=1, generation_step=s - 1010, param_count=W64,
                     summary=mlp_summary(40, [64, 64], 10), **kw)
        )
        for s in steps
    ]  # fmt: skip


def test_same_data_waits_until_the_model_plainly_underfits() -> None:
    c = _grown_once()
    decisions = _after(c, range(1050, 1400, 50))
    refused = decisions[0]
    assert not refused.grows and refused.notable and refused.policy == "same_data"
    assert refused.reason.startswith(
        "the training set has not grown since the last growth (1.0k samples): no growth on the "
        "same data (not plainly underfitting: plateau: 0 of 300 steps observed"
    )
    assert "data_scaling would grow" in refused.reason
    assert refused.numbers["grown_dataset_size"] == 1000
    grown = [d for d in decisions if d.grows]
    # The loss is flat from step 1050: the plateau window (300 steps) is full at step 1350.
    assert [d.step for d in grown] == [1350]
    assert "data: the training set has not grown since the last growth (1.0k samples), but " in (
        grown[0].reason
    )
    assert "the model underfits it (train loss improved 0% over 300 steps" in grown[0].reason


def test_an_overfitting_model_on_the_same_data_never_grows() -> None:
    c = _grown_once()
    decisions = _after(c, range(1050, 1600, 50), train_loss=0.1, val_loss=0.5)
    assert not any(d.grows for d in decisions)
    assert "not plainly underfitting: overfitting: validation loss 0.5" in decisions[0].reason


def test_new_data_lets_the_policy_grow_and_says_so() -> None:
    c = _grown_once()
    (d,) = _after(c, range(1050, 1100, 50), dataset_size=2000)
    assert d.grows and d.policy == "data_scaling"
    assert d.reason.endswith("; data: 1.0k → 2.0k samples since the last growth")
    assert (d.numbers["dataset_size"], d.numbers["grown_dataset_size"]) == (2000, 1000)


def test_never_and_always() -> None:
    never = _grown_once("never")
    decisions = _after(never, range(1050, 1600, 50))
    assert not any(d.grows for d in decisions)
    assert decisions[-1].policy == "same_data" or not decisions[-1].notable
    assert "(regrow_on_same_data='never')" in decisions[0].reason
    always = _grown_once("always")
    (d,) = _after(always, range(1050, 1100, 50))
    assert d.grows and "regrow_on_same_data='always'" in d.reason


def test_the_rule_survives_a_checkpoint_and_spares_manual_growth() -> None:
    c = _grown_once()
    again = Controller(c.config)
    again.load_state_dict(c.state_dict())
    assert again.state_dict()["grown_dataset_size"] == 1000
    assert _after(again, range(1050, 1100, 50))[0].policy == "same_data"
    again.request(GrowthOp(op="widen", factor=1.5), "user asked")
    (manual,) = _after(again, range(1100, 1150, 50))
    assert manual.grows and manual.policy == "manual"
