"""A language-modelling job's observations: data counted in tokens (data_scaling's parameters per
token) and a metric where lower is better (perplexity)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from growth_policy import (
    Controller,
    GrowthPolicyConfig,
    Observation,
    PolicyContext,
    data_scaling,
    data_target,
)
from growth_policy.policies import plateau

from ._traces import make_obs

CFG = GrowthPolicyConfig()


def lm_obs(**kw: Any) -> Observation:
    return make_obs(**{"metric_name": "perplexity", "data_unit": "tokens", **kw})


def test_data_scaling_counts_parameters_per_token() -> None:
    cfg = GrowthPolicyConfig.model_validate({"data_scaling": {"coefficient_per_token": 0.5}})
    assert data_target(cfg, 1_000_000, "tokens") == 500_000
    assert data_target(cfg, 1_000_000) == 3_000_000  # samples: 'coefficient' (3)
    v = data_scaling(PolicyContext(lm_obs(dataset_size=1_000_000, param_count=200_000), [], cfg))
    assert v.grow and v.target_params == 500_000
    assert v.reason == (
        "1,000,000 tokens call for 500k parameters (0.5 × 1,000,000^1), "
        "the model has 200k (target ×2.5 >= ×1.5)"
    )
    at = data_scaling(PolicyContext(lm_obs(dataset_size=1_000_000, param_count=400_000), [], cfg))
    assert not at.grow and at.numbers["target_ratio"] == pytest.approx(1.25)
    # the default: one parameter per token
    assert data_target(CFG, 250_000, "tokens") == 250_000


def test_controller_caps_and_explains_in_tokens() -> None:
    cfg = GrowthPolicyConfig.model_validate(
        {"guards": {"min_generation_steps": 0, "warmup_passes": 0.0}}
    )
    controller = Controller(cfg)
    decision = controller.observe(lm_obs(dataset_size=100_000, param_count=20_000))
    assert decision.op is not None and decision.policy == "data_scaling"
    assert "100,000 tokens call for 100k parameters" in decision.reason


def test_perplexity_is_lower_is_better_and_the_plateau_reads_losses() -> None:
    assert lm_obs().higher_is_better is False
    assert make_obs().higher_is_better is True
    assert make_obs(metric_name="mse").higher_is_better is False
    # a flat loss is a plateau whatever the metric (the policy reads train and val losses)
    history = [
        lm_obs(step=s, generation_step=s, train_loss=2.0, val_loss=2.04, val_metric=math.exp(2.04))
        for s in range(50, 2050, 50)
    ]
    v = plateau(PolicyContext(history[-1], history, CFG))
    assert v.grow and v.state == "plateau"
