"""Width groups as data: who is coupled with whom, printed readably, and the exact weight surgery
for concatenation offsets, flatten blocks, depthwise and grouped convs."""

from __future__ import annotations

import torch
from torch import nn

import net2net

from .zoo import DenseNet, Inception, PreLNMLP, ResNet, cnn_flatten, depthwise_separable, mlp_bn


def by_name(model: nn.Module, x: torch.Tensor) -> dict[str, net2net.WidthGroup]:
    return {g.name: g for g in net2net.width_groups(model, x)}


def test_mlp_groups() -> None:
    groups = by_name(mlp_bn(), torch.randn(4, 6))
    assert list(groups) == ["0", "4"]
    g = groups["0"]
    assert (g.width, g.producers, g.norms, g.consumers) == (16, ("0",), ("1",), ("4",))
    assert g.modules == ("0", "1", "4")
    assert groups["4"].consumers == ("7",)
    assert str(g) == ("group '0': width 16\n  producers: 0\n  norms:     1\n  consumers: 4")


def test_resnet_residual_stream_is_one_group() -> None:
    groups = by_name(ResNet(), torch.randn(2, 3, 8, 8))
    stream = groups["stem.0"]
    assert stream.producers == ("stem.0", "layer1.0.conv2", "layer1.1.conv2")
    assert set(stream.norms) == {"stem.1", "layer1.0.bn2", "layer1.1.bn2"}
    assert set(stream.consumers) == {
        "layer1.0.conv1",
        "layer1.1.conv1",
        "layer2.0.conv1",
        "layer2.0.shortcut.0",
    }
    # the projection shortcut and the block's conv2 meet at the add: one group
    out = groups["layer2.0.conv2"]
    assert set(out.producers) == {"layer2.0.conv2", "layer2.0.shortcut.0"}
    assert out.consumers == ("fc",)
    assert set(out.norms) == {"layer2.0.bn2", "layer2.0.shortcut.1"}
    assert groups["layer2.0.conv1"].consumers == ("layer2.0.conv2",)
    assert "fc" not in groups


def test_inception_concat_offsets() -> None:
    torch.manual_seed(0)
    model = Inception()
    x = torch.randn(2, 3, 8, 8)
    groups = by_name(model, x)
    for name in ("b1.0", "b2.3", "b3.1"):
        assert "mix_bn" in groups[name].norms and "mix" in groups[name].consumers
    grown = net2net.widen(
        model, x, widths={"b2.3": 7}, init="net2net"
    )  # 5 -> 7: two copies inside the concat
    g = grown.mappings["b2.3"]
    assert g[:5].tolist() == [0, 1, 2, 3, 4]
    old, new = model.mix.weight.detach(), grown.model.mix.weight.detach()
    assert new.shape == (7, 13, 1, 1)
    counts = torch.bincount(g, minlength=5).float()
    torch.testing.assert_close(new[:, :4], old[:, :4])  # b1 keeps offset 0
    torch.testing.assert_close(new[:, 4:11], old[:, 4:9][:, g] / counts[g][None, :, None, None])
    torch.testing.assert_close(new[:, 11:], old[:, 9:])  # b3 moved by two
    bn_old, bn_new = model.mix_bn, grown.model.mix_bn
    assert bn_new.running_mean is not None and bn_old.running_mean is not None
    torch.testing.assert_close(bn_new.running_mean[4:11], bn_old.running_mean[4:9][g])
    torch.testing.assert_close(bn_new.running_mean[11:], bn_old.running_mean[9:])


def test_flatten_gives_each_channel_a_block() -> None:
    torch.manual_seed(0)
    model = cnn_flatten()
    x = torch.randn(2, 3, 8, 8)
    grown = net2net.widen(model, x, widths={"4": 13}, init="net2net")
    head_old, head_new = model[8].weight.detach(), grown.model[8].weight.detach()
    assert head_new.shape == (10, 13 * 16)
    src = int(grown.mappings["4"][12])
    count = int((grown.mappings["4"] == src).sum())
    torch.testing.assert_close(head_new[:, 12 * 16 :], head_old[:, src * 16 : (src + 1) * 16] / 2)
    assert count == 2
    torch.testing.assert_close(head_new[:, src * 16 : (src + 1) * 16], head_new[:, 12 * 16 :])


def test_channels_last_flatten_repeats_the_segments() -> None:
    class ChannelsLast(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.fc = nn.Linear(2 * 2 * 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.conv(x).permute(0, 2, 3, 1).flatten(1))

    torch.manual_seed(0)
    model = ChannelsLast()
    x = torch.randn(2, 3, 2, 2)
    grown = net2net.widen(model, x, widths={"conv": 6})
    assert grown.model.fc.in_features == 24
    assert grown.max_abs_error < 1e-6


def test_depthwise_conv_is_channelwise() -> None:
    model = depthwise_separable()
    x = torch.randn(2, 3, 6, 6)
    groups = by_name(model, x)
    assert groups["0"].norms == ("1", "3", "4")
    assert groups["0"].consumers == ("6",)
    grown = net2net.widen(model, x, widths={"0": 11})
    dw = grown.model[3]
    assert (dw.in_channels, dw.out_channels, dw.groups) == (11, 11, 11)
    assert dw.weight.shape == (11, 1, 3, 3)


def test_grouped_conv_keeps_blocks() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 1, groups=2)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 1), nn.ReLU(), conv, nn.ReLU(), nn.Flatten(), nn.Linear(6, 2)
    )
    x = torch.randn(5, 3, 1, 1)
    groups = by_name(model, x)
    assert groups["0"].multiple_of == 2 and groups["2"].multiple_of == 2
    grown = net2net.widen(model, x, widths={"0": 8})
    g = grown.mappings["0"]
    # blocks: [old 0, 1, new, new | old 2, 3, new, new]: each new unit copies from its own block
    assert g[:2].tolist() == [0, 1] and g[4:6].tolist() == [2, 3]
    assert set(g[2:4].tolist()) <= {0, 1} and set(g[6:8].tolist()) <= {2, 3}
    assert grown.model[2].weight.shape == (6, 4, 1, 1)
    assert grown.max_abs_error < 1e-6


def test_densenet_concatenation_chain() -> None:
    groups = by_name(DenseNet(), torch.randn(2, 3, 8, 8))
    stem = groups["stem"]
    assert set(stem.norms) == {"layers.0.0", "layers.1.0", "layers.2.0", "transition.0"}
    assert set(stem.consumers) == {"layers.0.2", "layers.1.2", "layers.2.2", "transition.2"}
    assert groups["layers.2.2"].consumers == ("transition.2",)


def test_layernorm_group_constraint() -> None:
    groups = by_name(PreLNMLP(), torch.randn(3, 6))
    stream = groups["embed"]
    assert stream.integer_factor
    assert set(stream.integer_factor_norms) == {"blocks.0.norm", "blocks.1.norm", "norm"}
    assert set(stream.producers) == {"embed", "blocks.0.fc2", "blocks.1.fc2"}
    assert not groups["blocks.0.fc1"].integer_factor
    assert "integer multiple of 8" in str(stream)


def test_nothing_to_grow() -> None:
    assert net2net.width_groups(nn.Linear(3, 2), torch.randn(2, 3)) == []
