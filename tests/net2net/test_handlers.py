"""Registering a handler for your own layer type, opaque leaves, and subclasses."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

import net2net


class ScaledLinear(nn.Module):
    """A user layer: y = (x Wᵀ + b) · gain, with one gain per output unit."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.in_features, self.out_features = n_in, n_out
        self.weight = nn.Parameter(torch.randn(n_out, n_in) / n_in**0.5)
        self.bias = nn.Parameter(torch.randn(n_out) * 0.1)
        self.gain = nn.Parameter(1 + 0.2 * torch.randn(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) * self.gain


class ScaledLinearHandler(net2net.Handler):
    def trace(self, module: nn.Module, ctx: net2net.TraceContext) -> dict:  # type: ignore[type-arg]
        assert isinstance(module, ScaledLinear)
        return ctx.dense(-1, module.out_features)

    def param_axes(self, module: nn.Module) -> Mapping[str, net2net.ParamAxes]:
        return {
            "weight": net2net.ParamAxes(out=0, in_=1),
            "bias": net2net.ParamAxes(out=0, fresh="zero"),
            "gain": net2net.ParamAxes(out=0, fresh="copy"),
        }

    def resize(self, module: nn.Module, out_width: int | None, in_width: int | None) -> None:
        assert isinstance(module, ScaledLinear)
        if out_width is not None:
            module.out_features = out_width
        if in_width is not None:
            module.in_features = in_width


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        ScaledLinear(5, 7), nn.ReLU(), ScaledLinear(7, 6), nn.Tanh(), nn.Linear(6, 2)
    )


def test_unregistered_layer_blocks_with_a_clear_reason() -> None:
    class Unregistered(ScaledLinear):
        pass  # a new type: no handler (subclasses of a registered type inherit only via forward)

    m = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), Unregistered(7, 3))
    x = torch.randn(4, 5)
    summary = net2net.summarize(m, x)
    assert summary["groups"] == []
    reason = summary["blocked_groups"][0]["reason"]
    assert "op 'torch.linear'" in reason and "in group '0' is not supported" in reason
    assert "net2net.register_handler" in reason


def test_custom_handler_widens_exactly() -> None:
    net2net.register_handler(ScaledLinear, ScaledLinearHandler())
    m = model()
    x = torch.randn(16, 5)
    assert [g.name for g in net2net.width_groups(m, x)] == ["0", "2"]
    for init in ("net2net", "copy_zero", "random_zero"):
        grown = net2net.widen(m, x, widths={"0": 11, "2": 9}, init=init, seed=3)
        assert grown.max_abs_error < 1e-5
        assert grown.model[0].out_features == 11 and grown.model[2].in_features == 11
        assert grown.model[0].gain.shape == (11,)
    grown = net2net.widen(m, x, factor=2.0, init="random_zero")
    g = grown.mappings["0"]
    torch.testing.assert_close(grown.model[0].gain.detach(), m[0].gain.detach()[g])  # copied
    assert float(grown.model[0].bias.detach()[7:].abs().max()) == 0.0  # fresh: zero


def test_opaque_leaf_keeps_its_groups() -> None:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(6, 6)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.fc(x))

    m = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), Block(), nn.Linear(6, 2))
    x = torch.randn(3, 4)
    assert [g.name for g in net2net.width_groups(m, x)] == ["0", "2.fc"]
    net2net.register_handler(Block, net2net.Opaque())
    try:
        assert net2net.width_groups(m, x) == []
        reasons = [b["reason"] for b in net2net.summarize(m, x)["blocked_groups"]]
        assert any("module '2' (Block) is registered as opaque" in r for r in reasons)
    finally:
        del net2net._handlers._REGISTRY[Block]


def test_subclass_keeps_the_handler_only_if_forward_is_kept() -> None:
    class MyLinear(nn.Linear):
        pass

    class TwiceLinear(nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward(x)

    x = torch.randn(3, 4)
    m = nn.Sequential(MyLinear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    assert [g.name for g in net2net.width_groups(m, x)] == ["0"]
    m2 = nn.Sequential(TwiceLinear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    assert net2net.width_groups(m2, x) == []  # traced through: F.linear on raw parameters
