"""Property-based tests: random MLP and CNN architectures, random target widths and init modes.

For every drawn case: the grown model computes the teacher's function (eval mode, non-default norm
statistics), every group gets exactly the requested width, the parameter count matches the
prediction from the summary, replay rebuilds the same shapes, and the input model is untouched.
"""

from __future__ import annotations

from typing import Any

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import net2net

from .zoo import assert_unchanged, max_err, randomize_norms, snapshot

ACTS: list[type[nn.Module]] = [nn.ReLU, nn.GELU, nn.Tanh, nn.SiLU, nn.LeakyReLU, nn.Identity]
SETTINGS = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class Skip(nn.Module):
    """x + f(x) around a sub-stack of equal width: couples the groups on both sides."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


@st.composite
def mlps(draw: st.DrawFn) -> tuple[nn.Module, torch.Tensor]:
    d_in = draw(st.integers(1, 6))
    layers: list[nn.Module] = []
    width = d_in
    for _ in range(draw(st.integers(1, 3))):
        new = draw(st.integers(1, 9))
        block: list[nn.Module] = [nn.Linear(width, new)]
        norm = draw(st.sampled_from(["none", "batch", "layer"]))
        if norm == "batch":
            block.append(nn.BatchNorm1d(new))
        elif norm == "layer":
            block.append(nn.LayerNorm(new))
        block.append(draw(st.sampled_from(ACTS))())
        if draw(st.booleans()):
            block.append(nn.Dropout(0.2))
        if new == width and draw(st.booleans()):
            layers.append(Skip(nn.Sequential(*block)))
        else:
            layers += block
        width = new
    layers.append(nn.Linear(width, draw(st.integers(1, 4))))
    torch.manual_seed(draw(st.integers(0, 2**16)))
    model = randomize_norms(nn.Sequential(*layers), seed=1)
    return model, torch.randn(draw(st.integers(2, 9)), d_in)


@st.composite
def cnns(draw: st.DrawFn) -> tuple[nn.Module, torch.Tensor]:
    c = draw(st.integers(1, 4))
    hw = draw(st.sampled_from([4, 6, 8]))
    x = torch.randn(draw(st.integers(2, 4)), c, hw, hw)
    layers: list[nn.Module] = []
    for _ in range(draw(st.integers(1, 3))):
        new = draw(st.integers(1, 7))
        k = draw(st.sampled_from([1, 3]))
        layers.append(nn.Conv2d(c, new, k, padding=k // 2))
        if draw(st.booleans()):
            layers.append(nn.BatchNorm2d(new))
        layers.append(draw(st.sampled_from(ACTS))())
        if new > 1 and draw(st.booleans()):  # depthwise + BN
            layers += [nn.Conv2d(new, new, 3, padding=1, groups=new), nn.BatchNorm2d(new)]
        if hw >= 4 and draw(st.booleans()):
            layers.append(draw(st.sampled_from([nn.MaxPool2d, nn.AvgPool2d]))(2))
            hw //= 2
        c = new
    if draw(st.booleans()):
        layers += [nn.Flatten(), nn.Linear(c * hw * hw, draw(st.integers(1, 4)))]
    else:
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, draw(st.integers(1, 4)))]
    torch.manual_seed(draw(st.integers(0, 2**16)))
    return randomize_norms(nn.Sequential(*layers), seed=2), x


@st.composite
def requests(draw: st.DrawFn, groups: list[net2net.WidthGroup]) -> dict[str, Any]:
    widths = {}
    for g in groups:
        if not draw(st.booleans()):
            continue
        if g.integer_factor:
            widths[g.name] = g.width * draw(st.integers(1, 3))
        else:
            widths[g.name] = g.width + draw(st.integers(0, 7)) * g.multiple_of
    init = draw(st.sampled_from(["net2net", "copy_zero", "random_zero"]))
    split = draw(st.sampled_from(["equal", "random"])) if init == "net2net" else "equal"
    return {"widths": widths, "init": init, "split": split, "seed": draw(st.integers(0, 99))}


def check(model: nn.Module, x: torch.Tensor, data: st.DataObject) -> None:
    snap = snapshot(model)
    groups = net2net.width_groups(model, x)
    if not groups:
        return
    kwargs = data.draw(requests(groups))
    summary = net2net.summarize(model, x)
    grown = net2net.widen(model, x, **kwargs)
    assert_unchanged(model, snap)
    err, scale = max_err(model, grown.model, x)
    assert err < 1e-5 * max(1.0, scale)
    after = {g.name: g.width for g in net2net.width_groups(grown.model, x)}
    for g in groups:
        assert after[g.name] == kwargs["widths"].get(g.name, g.width)
    assert net2net.count_params(grown.model) == net2net.predict_param_count(
        summary, widths=kwargs["widths"]
    )
    rebuilt = net2net.replay(model, [grown.record])
    assert [(n, p.shape) for n, p in rebuilt.named_parameters()] == [
        (n, p.shape) for n, p in grown.model.named_parameters()
    ]


@SETTINGS
@given(mlps(), st.data())
def test_random_mlps(case: tuple[nn.Module, torch.Tensor], data: st.DataObject) -> None:
    check(*case, data)


@SETTINGS
@given(cnns(), st.data())
def test_random_cnns(case: tuple[nn.Module, torch.Tensor], data: st.DataObject) -> None:
    check(*case, data)


@SETTINGS
@given(mlps(), st.integers(0, 4), st.sampled_from(["identity", "residual"]))
def test_random_deepen(case: tuple[nn.Module, torch.Tensor], pick: int, style: str) -> None:
    model, x = case
    cands = [
        c
        for c in net2net.summarize(model, x)["deepen_candidates"]
        if c["added_params"][style] is not None
    ]
    cand = cands[pick % len(cands)]
    grown = net2net.deepen(model, x, after=cand["after"], style=style)
    err, scale = max_err(model, grown.model, x)
    assert err < 1e-5 * max(1.0, scale)
