"""Every zoo model: widen ×2, odd widths with a random split, every exact init mode, deepen
(identity and residual), repeated growth composed, replay — function preserved in eval mode with
non-default norm statistics, input model untouched."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import net2net

from .zoo import ZOO, Case, assert_unchanged, build, max_err, odd_widths, snapshot

TOL = 1e-5  # float32; relative to max(1, max |f_teacher|) where outputs are large


def bound(scale: float) -> float:
    return TOL * max(1.0, scale)


@pytest.fixture(params=ZOO, ids=[c.name for c in ZOO])
def case(request: pytest.FixtureRequest) -> Case:
    c: Case = request.param
    return c


def test_widen_x2(case: Case) -> None:
    model, x = build(case)
    snap = snapshot(model)
    groups = net2net.width_groups(model, x)
    assert groups, "every zoo model has a growable group"
    grown = net2net.widen(model, x, factor=2.0)
    assert_unchanged(model, snap)
    err, scale = max_err(model, grown.model, x)
    assert err < bound(scale)
    assert grown.max_abs_error == pytest.approx(err, abs=1e-7)
    assert grown.exact
    assert grown.widths == {g.name: (g.width, 2 * g.width) for g in groups}
    after = {g.name: g.width for g in net2net.width_groups(grown.model, x)}
    assert after == {g.name: 2 * g.width for g in groups}
    assert {n for n, _ in grown.model.named_parameters()} == {
        n for n, _ in model.named_parameters()
    }


def test_every_listed_group_grows_alone(case: Case) -> None:
    """width_groups and summarize never list a group that widen then refuses or gets wrong: each
    grows alone (with the groups it must grow with, by one factor)."""
    model, x = build(case)
    groups = net2net.width_groups(model, x)
    by_name = {g.name: g for g in groups}
    assert [g["name"] for g in net2net.summarize(model, x)["groups"]] == list(by_name)
    for g in groups:
        m = g.multiple_of
        widths = {g.name: 2 * g.width if g.integer_factor else -(-(g.width + 1) // m) * m}
        if g.grows_with:
            widths = {n: 2 * by_name[n].width for n in (g.name, *g.grows_with)}
        grown = net2net.widen(model, x, widths=widths)
        err, scale = max_err(model, grown.model, x)
        assert err < bound(scale), g.name
        assert grown.widths == {n: (by_name[n].width, w) for n, w in widths.items()}


def test_widen_odd_widths_random_split(case: Case) -> None:
    model, x = build(case)
    snap = snapshot(model)
    groups = net2net.width_groups(model, x)
    widths = odd_widths(groups)
    grown = net2net.widen(model, x, widths=widths, split="random", seed=3, init="net2net")
    assert_unchanged(model, snap)
    err, scale = max_err(model, grown.model, x)
    assert err < bound(scale)
    got = {g.name: g.width for g in net2net.width_groups(grown.model, x)}
    assert got == widths


@pytest.mark.parametrize("init", ["copy_zero", "random_zero"])
def test_widen_zero_outgoing_modes_are_exact(case: Case, init: str) -> None:
    model, x = build(case)
    grown = net2net.widen(model, x, factor=2.0, init=init, seed=1)
    err, scale = max_err(model, grown.model, x)
    assert grown.exact
    assert err < bound(scale)


def test_random_pad_is_honestly_inexact(case: Case) -> None:
    model, x = build(case)
    grown = net2net.widen(model, x, factor=2.0, init="random_pad")
    err, _ = max_err(model, grown.model, x)
    assert not grown.exact
    assert err > 1e-4
    assert grown.max_abs_error == pytest.approx(err, rel=1e-6)


def test_noise_is_honestly_inexact(case: Case) -> None:
    model, x = build(case)
    grown = net2net.widen(model, x, factor=2.0, noise=0.1, init="net2net")
    err, _ = max_err(model, grown.model, x)
    assert not grown.exact
    assert grown.max_abs_error == pytest.approx(err, rel=1e-6)
    assert err > 1e-6


@pytest.mark.parametrize("style", ["identity", "residual"])
def test_deepen(case: Case, style: str) -> None:
    model, x = build(case)
    snap = snapshot(model)
    after = case.deepen_after if style == "identity" else case.residual_after
    grown = net2net.deepen(model, x, after=after, style=style)
    assert_unchanged(model, snap)
    err, scale = max_err(model, grown.model, x)
    assert err < bound(scale)
    assert grown.new_param_names
    added = sum(dict(grown.model.named_parameters())[n].numel() for n in grown.new_param_names)
    assert net2net.count_params(grown.model) == net2net.count_params(model) + added
    assert net2net.predict_param_count(
        net2net.summarize(model, x), deepen_after=after, style=style
    ) == net2net.count_params(grown.model)


def test_repeated_growth_composes_and_replays(case: Case) -> None:
    model, x = build(case)
    snap = snapshot(model)
    records = []
    current: nn.Module = model
    steps = [
        lambda m: net2net.widen(m, x, factor=2.0, seed=1, init="net2net"),
        lambda m: net2net.deepen(m, x, after=case.deepen_after),
        lambda m: net2net.widen(
            m,
            x,
            widths=odd_widths(net2net.width_groups(m, x)),
            split="random",
            seed=2,
            init="net2net",
        ),
        lambda m: net2net.deepen(m, x, after=case.residual_after, style="residual", seed=4),
        lambda m: net2net.widen(m, x, factor=2.0, init="random_zero", seed=5),
    ]
    for step in steps:
        summary = net2net.summarize(current, x)
        grown = step(current)
        records.append(grown.record)
        if grown.op == "widen":
            widths = {k: v[1] for k, v in grown.record["widths"].items()}
            predicted = net2net.predict_param_count(summary, widths=widths)
            assert predicted == net2net.count_params(grown.model)
        current = grown.model
    assert_unchanged(model, snap)
    err, scale = max_err(model, current, x)
    assert err < 4 * bound(scale)  # five ops, each within float rounding

    rebuilt = net2net.replay(model, records)
    assert_unchanged(model, snap)
    assert [(n, p.shape) for n, p in rebuilt.named_parameters()] == [
        (n, p.shape) for n, p in current.named_parameters()
    ]
    assert [n for n, _ in rebuilt.named_modules()] == [n for n, _ in current.named_modules()]
    rebuilt.load_state_dict(current.state_dict())
    err_replay, _ = max_err(current, rebuilt, x)
    assert err_replay == 0.0


def test_grown_model_trains(case: Case) -> None:
    model, x = build(case)
    grown = net2net.widen(model, x, factor=2.0, init="random_zero").model
    grown.train()
    with torch.no_grad():
        target = torch.randn_like(grown(x))
    opt = torch.optim.Adam(grown.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = nn.functional.mse_loss(grown(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize("init", ["net2net", "copy_zero", "random_zero", "random_pad"])
def test_replay_on_the_base_weights_reproduces_the_grown_weights(init: str) -> None:
    model, x = build(ZOO[3])  # the ResNet
    noise = 0.05 if init in ("net2net", "copy_zero") else 0.0
    grown = net2net.widen(model, x, factor=2.0, init=init, noise=noise, seed=11)
    deeper = net2net.deepen(grown.model, x, after="layer1", style="residual", seed=3)
    rebuilt = net2net.replay(model, [grown.record, deeper.record])
    expected = deeper.model.state_dict()
    for name, value in rebuilt.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0)
