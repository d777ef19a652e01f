"""A language-modelling job's observations: data counted in tokens (data_scaling's parameters per
token) and a metric where lower is better (perplexity); a transformer deepens by whole blocks."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

import net2net
from growth_policy import (
    Controller,
    GrowthOp,
    GrowthPolicyConfig,
    Limits,
    Observation,
    PolicyContext,
    data_scaling,
    data_target,
    parse_summary,
    plan_deepen,
)
from growth_policy.policies import plateau
from workers._growth import apply_op
from workers.checkpoint import build_optimizer
from workers.models import build_model
from workers.spec import ModelSpec, OptimizerSpec, TaskSpec

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
    # the default: two parameters per token
    assert data_target(CFG, 250_000, "tokens") == 500_000


def test_controller_caps_and_explains_in_tokens() -> None:
    cfg = GrowthPolicyConfig.model_validate(
        {"guards": {"min_generation_steps": 0, "warmup_passes": 0.0}}
    )
    controller = Controller(cfg)
    decision = controller.observe(lm_obs(dataset_size=100_000, param_count=20_000))
    assert decision.op is not None and decision.policy == "data_scaling"
    assert "100,000 tokens call for 200k parameters" in decision.reason


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


def gpt_and_summary(n_layer: int = 2) -> tuple[Any, Any, torch.Tensor]:
    task = TaskSpec(kind="language_modeling", context_length=16)
    spec = ModelSpec.model_validate(
        {"family": "gpt", "n_layer": n_layer, "n_head": 2, "d_model": 16}
    )
    torch.manual_seed(0)
    model = build_model(spec, task)
    idx = torch.randint(0, 256, (2, 16))
    return model, parse_summary(net2net.summarize(model, idx)), idx


@pytest.mark.parametrize(("where", "after"), [("last", "blocks.1"), ("first", "blocks.0")])
def test_a_transformer_deepens_by_a_whole_block(where: str, after: str) -> None:
    model, shape, idx = gpt_and_summary()
    params = sum(p.numel() for p in model.parameters())
    config = GrowthPolicyConfig.model_validate({"deepen": {"where": where}})
    plan = plan_deepen(lm_obs(param_count=params), shape, config, Limits(max_params=10**9))
    assert plan.op is not None
    assert (plan.op.after, plan.op.style) == (after, "block")
    grown = net2net.deepen(model, idx, after=plan.op.after, style=plan.op.style, seed=0)
    assert grown.exact and len(grown.model.blocks) == 3
    assert plan.params_after == sum(p.numel() for p in grown.model.parameters())
    residual = GrowthPolicyConfig.model_validate({"deepen": {"style": "residual"}})
    plan = plan_deepen(lm_obs(param_count=params), shape, residual, Limits(max_params=10**9))
    assert plan.op is not None and plan.op.style == "residual"  # a layer, as asked


def test_a_deepen_op_by_default_inserts_a_block_where_one_is_exact() -> None:
    model, _, idx = gpt_and_summary(1)
    op = GrowthOp(op="deepen", after="blocks.0")
    assert op.style == "auto"
    spec = OptimizerSpec()
    applied = apply_op(model, build_optimizer(spec, model.parameters()), idx, op)
    assert len(applied.model.blocks) == 2 and applied.record is not None
    assert applied.record["style"] == "block"
    mlp = build_model(
        ModelSpec(family="mlp", hidden=[8]), TaskSpec(input_shape=(4,), num_classes=2)
    )
    x = torch.randn(3, 4)
    deep = apply_op(
        mlp, build_optimizer(spec, mlp.parameters()), x, GrowthOp(op="deepen", after="act1")
    )
    assert deep.record is not None and deep.record["style"] == "identity"
