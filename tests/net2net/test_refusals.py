"""Every refusal: a GrowthError (a ValueError) whose message names the op, the module and the
group and says what to change — and the input model is left untouched."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import net2net

from .zoo import PreLNMLP, assert_unchanged, grouped_cnn, snapshot


class GroupNormBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.norm = nn.GroupNorm(2, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.norm(self.fc1(x))))


class Blocks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(GroupNormBlock())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class Attention(nn.Module):
    """Splits the channels into heads with a reshape."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(8, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, 8)
        b, t, _ = x.shape
        h = self.qkv(x).view(b, t, 2, 4).transpose(1, 2)  # (B, heads, T, 4)
        a = torch.softmax(h @ h.transpose(-1, -2), dim=-1) @ h
        return self.out(a.transpose(1, 2).reshape(b, t, 8))


class InputResidual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc(x)) + x)


class SumOverChannels(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 5)
        self.head = nn.Linear(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc(x).sum(dim=1, keepdim=True))


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
            return self.fc(x)
        return x


class HardCoded(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).view(-1, 64))  # a literal width


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(5, 5)
        self.b = nn.Linear(5, 5)
        self.b.weight = self.a.weight
        self.head = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.b(torch.relu(self.a(x)))))


class UnknownLeaf(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 6)
        self.rnn = nn.GRU(6, 3, batch_first=True)
        self.head = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, 4)
        out, _ = self.rnn(self.fc(x))
        return self.head(out[:, -1])


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.GELU(), nn.Linear(5, 2))


def refuse(model: nn.Module, call: Callable[[nn.Module], Any], *fragments: str) -> str:
    """Assert that ``call(model)`` raises a GrowthError containing every fragment and leaves the
    model untouched; return the message."""
    snap = snapshot(model)
    with pytest.raises(net2net.GrowthError) as info:
        call(model)
    assert isinstance(info.value, ValueError)
    msg = str(info.value)
    for f in fragments:
        assert f in msg, f"{f!r} not in {msg!r}"
    assert_unchanged(model, snap)
    return msg


X4 = torch.randn(3, 4)


def test_groupnorm_is_named_with_its_group() -> None:
    model = Blocks()
    assert [g.name for g in net2net.width_groups(model, X4)] == []
    msg = refuse(
        model,
        lambda m: net2net.widen(m, X4, widths={"blocks.0.fc1": 16}),
        "widen: norm 'blocks.0.norm' (GroupNorm) in group 'blocks.0.fc1' cannot be widened "
        "without changing the function; use BatchNorm or LayerNorm",
    )
    assert msg.startswith("widen:")
    refuse(model, lambda m: net2net.widen(m, X4, factor=2.0), "no width group that can grow")


def test_layernorm_needs_integer_factors() -> None:
    model = PreLNMLP()
    x = torch.randn(3, 6)
    refuse(
        model,
        lambda m: net2net.widen(m, x, widths={"embed": 11}),
        "norm 'blocks.0.norm'",
        "group 'embed' (width 8)",
        "multiple of 8 (e.g. 16)",
    )
    refuse(
        model,
        lambda m: net2net.widen(m, x, factor=1.5),
        "widen:",
        "normalises over group 'embed'",
        "factor 1.5 gives width 12",
        "use an integer factor",
    )
    grown = net2net.widen(model, x, widths={"embed": 24, "blocks.0.fc1": 13})
    assert grown.widths["embed"] == (8, 24)


def test_grouped_conv_needs_multiples() -> None:
    model = grouped_cnn()
    x = torch.randn(2, 3, 6, 6)
    refuse(
        model,
        lambda m: net2net.widen(m, x, widths={"2": 13}),
        "grouped conv '2'",
        "group '2' into 4 blocks",
        "multiple of 4 (e.g. 16)",
    )


def test_attention_with_a_literal_head_count_is_refused() -> None:
    model = Attention()
    x = torch.randn(2, 5, 8)
    assert "qkv" not in {g.name for g in net2net.width_groups(model, x)}
    refuse(
        model,
        lambda m: net2net.widen(m, x, widths={"qkv": 4}),
        "widen: Tensor.view (node 'view') in 'Attention' (Attention)",
        "hard-codes the size 2 of group 'qkv' as a literal",
        "read it from an attribute of the module (e.g. self.n_head",
    )


def test_output_layer_is_never_widened() -> None:
    refuse(
        mlp(),
        lambda m: net2net.widen(m, X4, widths={"4": 3}),
        "group '4' is an output of the model; output layers are never widened",
    )


def test_unknown_module_is_named() -> None:
    model = UnknownLeaf()
    x = torch.randn(2, 5, 4)
    refuse(
        model,
        lambda m: net2net.widen(m, x, widths={"fc": 8}),
        "module 'rnn' (GRU) in group 'fc' has no net2net handler",
        "net2net.register_handler(GRU, ...)",
    )


def test_fixed_size_coupling_is_named() -> None:
    x = torch.randn(3, 6)
    refuse(
        InputResidual(),
        lambda m: net2net.widen(m, x, widths={"fc": 8}),
        "group 'fc' meets a fixed-size tensor at op 'operator.add'",
        "add a projection layer",
    )


def test_reduction_over_channels_is_named() -> None:
    x = torch.randn(3, 6)
    refuse(
        SumOverChannels(),
        lambda m: net2net.widen(m, x, widths={"fc": 8}),
        "op 'Tensor.sum'",
        "reduces over the channels of group 'fc'",
    )


def test_tied_parameters_are_named() -> None:
    x = torch.randn(3, 5)
    refuse(
        Tied(),
        lambda m: net2net.widen(m, x, widths={"a": 8}),
        "a parameter of 'a' is shared with 'b'",
        "group 'a' cannot grow while it is tied",
    )


def test_untraceable_forward_says_what_to_change() -> None:
    refuse(
        Branchy(),
        lambda m: net2net.widen(m, X4, factor=2.0),
        "widen: torch.fx cannot trace Branchy",
        "no Python control flow on tensor values",
        "net2net.Opaque()",
    )


def test_hard_coded_width_is_named() -> None:
    x = torch.randn(2, 3, 4, 4)
    assert net2net.width_groups(HardCoded(), x) == []
    refuse(
        HardCoded(),
        lambda m: net2net.widen(m, x, widths={"conv": 8}),
        "widen: Tensor.view (node 'view') in 'HardCoded' (HardCoded)",
        "hard-codes the size 64 of group 'conv' as a literal",
    )


@pytest.mark.parametrize(
    ("kwargs", "fragments"),
    [
        ({"factor": 2.0, "widths": {"0": 8}}, ["give exactly one of factor= or widths="]),
        ({}, ["give exactly one of factor= or widths="]),
        ({"factor": 0.5}, ["factor must be a finite number >= 1"]),
        ({"factor": float("nan")}, ["factor must be a finite number >= 1"]),
        ({"widths": {"nope": 9}}, ["no width group named 'nope'", "can grow are: 0, 2"]),
        ({"widths": {"0": 4}}, ["group '0' has width 6; 4 would shrink it"]),
        ({"widths": {"0": 7.5}}, ["the width for group '0' must be an int"]),
        ({"factor": 2.0, "init": "magic"}, ["unknown init 'magic'", "net2net, copy_zero"]),
        ({"factor": 2.0, "split": "odd"}, ["unknown split 'odd'"]),
        ({"factor": 2.0, "init": "random_zero", "split": "random"}, ["applies to init='net2net'"]),
        ({"factor": 2.0, "init": "random_zero", "noise": 0.1}, ["leave noise=0"]),
        ({"factor": 2.0, "noise": -1.0}, ["noise must be a number >= 0"]),
    ],
)
def test_bad_widen_arguments(kwargs: dict[str, Any], fragments: list[str]) -> None:
    refuse(mlp(), lambda m: net2net.widen(m, X4, **kwargs), "widen:", *fragments)


def test_bad_example_input() -> None:
    refuse(mlp(), lambda m: net2net.widen(m, [1, 2], factor=2.0), "example_input must be")
    refuse(
        mlp(),
        lambda m: net2net.widen(m, torch.randn(3, 7), factor=2.0),
        "widen: running Sequential on example_input failed",
    )


@pytest.mark.parametrize(
    ("kwargs", "fragments"),
    [
        ({"after": "nope"}, ["deepen: no module named 'nope'"]),
        ({"after": ""}, ["deepen: no module named ''"]),
        ({"after": "3"}, ["style='identity' after '3' (GELU) is not exact", "style='residual'"]),
        ({"after": "1", "style": "wide"}, ["unknown style 'wide'"]),
        ({"after": "1", "calibration": []}, ["calibration must be a batch"]),
    ],
)
def test_bad_deepen_arguments(kwargs: dict[str, Any], fragments: list[str]) -> None:
    refuse(mlp(), lambda m: net2net.deepen(m, X4, **kwargs), *fragments)


def test_deepen_after_a_module_called_twice() -> None:
    from .zoo import ResNet

    x = torch.randn(2, 3, 8, 8)
    refuse(
        ResNet(),
        lambda m: net2net.deepen(m, x, after="layer1.0.relu"),
        "deepen: module 'layer1.0.relu' is called 2 times",
    )


def test_register_handler_checks_its_arguments() -> None:
    with pytest.raises(net2net.GrowthError, match=r"not an nn\.Module subclass"):
        net2net.register_handler(int, net2net.Opaque())  # type: ignore[arg-type]
    with pytest.raises(net2net.GrowthError, match=r"not a net2net\.Handler"):
        net2net.register_handler(nn.Linear, object())  # type: ignore[arg-type]


def test_replay_refuses_bad_records() -> None:
    model = mlp()
    refuse(model, lambda m: net2net.replay(m, [{"x": 1}]), "replay: record 0 is not a growth")
    refuse(
        model,
        lambda m: net2net.replay(m, [{"op": "shrink", "input": []}]),
        "replay: record 0 (shrink): unknown op 'shrink'",
    )
    rec = net2net.widen(model, X4, factor=2.0).record
    refuse(
        model,
        lambda m: net2net.replay(m, [{**rec, "format": 99}]),
        "newer than this net2net",
    )
    refuse(
        model,
        lambda m: net2net.replay(m, [{k: v for k, v in rec.items() if k != "seed"}]),
        "lacks the field 'seed'",
    )
    refuse(model, lambda m: net2net.replay(m, [rec, rec]), "replay: record 1 (widen):")


def test_messages_start_with_the_op() -> None:
    for call in (
        lambda: net2net.widen(mlp(), X4, factor=0.1),
        lambda: net2net.deepen(mlp(), X4, after="zz"),
        lambda: net2net.width_groups(Branchy(), X4),
        lambda: net2net.summarize(Branchy(), X4),
    ):
        with pytest.raises(net2net.GrowthError) as info:
            call()
        assert re.match(r"^(widen|deepen|width_groups|summarize): ", str(info.value))


def test_factor_leaves_blocked_groups_and_says_so() -> None:
    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 6)
            self.gn = nn.GroupNorm(2, 6)
            self.b = nn.Linear(6, 5)
            self.head = nn.Linear(5, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.relu(self.b(self.gn(self.a(x)))))

    model = Mixed()
    grown = net2net.widen(model, X4, factor=2.0)
    assert grown.widths == {"b": (5, 10)}
    assert any("norm 'gn' (GroupNorm) in group 'a'" in n for n in grown.notes)
    refuse(model, lambda m: net2net.widen(m, X4, widths={"a": 12}), "norm 'gn' (GroupNorm)")
