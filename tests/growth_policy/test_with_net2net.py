"""Against the real net2net: its summaries, its transforms, its width groups.

These check that what the controller predicts and decides is what net2net then does.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch
from torch import nn

import net2net
from growth_policy import Controller, GrowthOp, GrowthPolicyConfig, Observation, parse_summary
from growth_policy.shape import deepen_param_count
from workers.signals import group_signals


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(40, 16),
        nn.ReLU(),
        nn.Linear(16, 24),
        nn.ReLU(),
        nn.Linear(24, 10),
    )


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 6, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, 10),
    )


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


CASES = [(mlp, (32, 40)), (cnn, (4, 3, 8, 8))]


@pytest.mark.parametrize(("build", "shape"), CASES, ids=["mlp", "cnn"])
def test_planner_counts_match_net2net_and_the_grown_model(
    build: Any, shape: tuple[int, ...]
) -> None:
    model, x = build(), torch.randn(*shape)
    summary = net2net.summarize(model, x)
    s = parse_summary(summary)
    assert s.count() == count(model) == summary["param_count"]
    for factor in (1.5, 2.0, 1.3):
        grown = net2net.widen(model, x, factor=factor, init="random_zero")
        planned = s.count(s.widths_for_factor(factor))
        assert planned == net2net.predict_param_count(summary, factor=factor)
        assert planned == count(grown.model)
    first = s.groups[0].name
    widths = {first: s.groups[0].width + 3}
    grown = net2net.widen(model, x, widths=widths, init="random_zero")
    assert s.count(widths) == net2net.predict_param_count(summary, widths=widths)
    assert s.count(widths) == count(grown.model)
    for site in s.deepen_sites():
        deeper = net2net.deepen(model, x, after=site.after)
        planned = s.count() + deepen_param_count(site)
        assert planned == net2net.predict_param_count(summary, deepen_after=site.after)
        assert planned == count(deeper.model)


def test_deepen_sites_on_real_models() -> None:
    s = parse_summary(net2net.summarize(mlp(), torch.randn(4, 40)))
    assert [c.after for c in s.deepen_sites()] == ["1", "3"]  # after each ReLU, not the head
    c = parse_summary(net2net.summarize(cnn(), torch.randn(4, 3, 8, 8)))
    assert [x.after for x in c.deepen_sites()] == ["3", "5"]  # after the pool, after the ReLU


def test_controller_decisions_apply_with_net2net() -> None:
    model, x = mlp(), torch.randn(32, 40)
    controller = Controller(GrowthPolicyConfig(strategy="alternate"), seed=1)
    step = 0
    kinds = []
    for generation in range(3):
        step += 500
        summary = net2net.summarize(model, x)
        obs = Observation(
            step=step,
            generation=generation,
            generation_step=500,
            samples_seen=step * 32,
            passes=10.0,
            dataset_size=8000 * (generation + 1),
            train_loss=1.0,
            val_loss=1.1,
            param_count=count(model),
            summary=summary,
            group_signals=group_signals(model, x),
        )
        d = controller.observe(obs)
        assert d.op is not None, d.reason
        kinds.append(d.op.op)
        if d.op.op == "widen":
            grown = net2net.widen(model, x, **d.op.widen_kwargs())
        else:
            assert d.op.after is not None
            grown = net2net.deepen(model, x, after=d.op.after, style=d.op.style, seed=d.op.seed)
        assert grown.max_abs_error < 1e-5
        assert count(grown.model) == d.numbers["params_after"], d.reason
        model = grown.model
        controller.notify_grown(step=step + 1, generation=generation + 1, op=d.op)
    assert kinds == ["widen", "deepen", "widen"]
    names = {g.name for g in net2net.width_groups(model, x)}
    assert set(group_signals(model, x)) == names


def test_widen_kwargs_are_exactly_net2net_widens_keywords() -> None:
    params = inspect.signature(net2net.widen).parameters
    keywords = {n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    op = GrowthOp(op="widen", widths={"0": 20}, init="net2net", noise=0.1, split="random", seed=7)
    kwargs = op.widen_kwargs()
    assert set(kwargs) == keywords
    grown = net2net.widen(mlp(), torch.randn(8, 40), **kwargs)
    assert grown.widths == {"0": (16, 20)}
    r = grown.record
    assert (r["init"], r["noise"], r["split"], r["seed"]) == ("net2net", 0.1, "random", 7)
    with pytest.raises(ValueError, match="not a widen"):
        GrowthOp(op="deepen", after="1").widen_kwargs()


def test_group_signals_with_net2net_groups() -> None:
    model, x = cnn(), torch.randn(16, 3, 8, 8)
    groups = net2net.width_groups(model, x)
    signals = group_signals(model, x)  # groups traced here
    assert set(signals) == {g.name for g in groups}
    for g in groups:
        assert signals[g.name]["width"] == g.width
        assert 0.0 <= signals[g.name]["active_fraction"] <= 1.0
    assert signals == group_signals(model, x, groups)
