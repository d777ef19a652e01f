"""Net2DeeperNet details: identity kernels, BatchNorm calibration, residual blocks, names, dtype."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import net2net

from .zoo import ResNet, cnn_flatten, mlp_bn, randomize_norms


def test_conv_identity_kernel_has_its_one_at_the_centre_tap() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3))
    x = torch.randn(2, 3, 9, 9)
    grown = net2net.deepen(model, x, after="1")
    conv = grown.model.get_submodule("1_deep.0")
    assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3) and conv.padding == (1, 1)
    expected = torch.zeros(4, 4, 3, 3)
    expected[torch.arange(4), torch.arange(4), 1, 1] = 1.0
    torch.testing.assert_close(conv.weight.detach(), expected, rtol=0, atol=0)
    assert grown.max_abs_error == 0.0
    assert isinstance(grown.model.get_submodule("1_deep.1"), nn.ReLU)


def test_conv1d_identity() -> None:
    model = nn.Sequential(nn.Conv1d(2, 5, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(35, 2))
    grown = net2net.deepen(model, torch.randn(3, 2, 7), after="1")
    assert isinstance(grown.model.get_submodule("1_deep.0"), nn.Conv1d)
    assert grown.max_abs_error < 1e-6


def _train_mode_output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    m = copy.deepcopy(model).train()  # train mode updates running stats: work on a copy
    with torch.no_grad():
        out: torch.Tensor = m(x)
    return out


def test_batchnorm_calibration_undoes_the_normalisation() -> None:
    torch.manual_seed(0)
    model = randomize_norms(cnn_flatten())
    x = torch.randn(16, 3, 8, 8)
    grown = net2net.deepen(model, x, after="2")
    bn = grown.model.get_submodule("2_deep.1")
    assert isinstance(bn, nn.BatchNorm2d)
    with torch.no_grad():  # the activations as training sees them: batch statistics
        h = copy.deepcopy(model[:3]).train()(x)
    mean = h.mean(dim=(0, 2, 3))
    var = h.var(dim=(0, 2, 3), unbiased=False)
    assert bn.running_mean is not None and bn.running_var is not None
    torch.testing.assert_close(bn.bias.detach(), mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.weight.detach(), (var + bn.eps).sqrt(), rtol=1e-5, atol=1e-6)
    # eval mode is exact for any data: the running statistics undo the same affine map
    torch.testing.assert_close(bn.running_mean, bn.bias.detach())
    torch.testing.assert_close(bn.running_var, bn.weight.detach() ** 2 - bn.eps)
    assert grown.max_abs_error < 1e-5
    # in train mode on the calibration batch the new BN's batch statistics are the calibrated
    # ones, so the deeper model still computes the teacher's function
    torch.testing.assert_close(
        _train_mode_output(grown.model, x), _train_mode_output(model, x), rtol=1e-4, atol=1e-4
    )


def test_calibration_accepts_a_list_of_batches() -> None:
    torch.manual_seed(0)
    model = randomize_norms(mlp_bn())
    x = torch.randn(8, 6)
    batches = [torch.randn(32, 6), torch.randn(16, 6)]
    grown = net2net.deepen(model, x, after="2", calibration=batches)
    with torch.no_grad():
        prefix = copy.deepcopy(model[:3]).train()
        h = torch.cat([prefix(b) for b in batches])
    bn = grown.model.get_submodule("2_deep.1")
    torch.testing.assert_close(bn.bias.detach(), h.mean(0), rtol=1e-5, atol=1e-6)
    assert grown.max_abs_error < 1e-5


def test_residual_block_starts_at_zero_and_learns() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2))
    x = torch.randn(8, 4)
    grown = net2net.deepen(model, x, after="1", style="residual")
    block = grown.model.get_submodule("1_deep")
    assert isinstance(block, net2net.Residual)
    body = block.body
    assert isinstance(body, nn.Sequential) and isinstance(body[1], nn.Tanh)
    last = body[2]
    assert float(last.weight.detach().abs().max()) == 0.0
    assert float(last.bias.detach().abs().max()) == 0.0
    assert grown.max_abs_error == 0.0
    grown.model(x).pow(2).sum().backward()
    assert float(last.weight.grad.abs().max()) > 0  # the zero layer gets a gradient at once
    assert float(body[0].weight.grad.abs().max()) == 0  # the first one after that layer moves


def test_deepen_outside_a_sequential_wraps_and_renames() -> None:
    torch.manual_seed(0)
    model = ResNet()
    x = torch.randn(2, 3, 8, 8)
    grown = net2net.deepen(model, x, after="layer1.0.bn1")
    assert grown.record["renamed"] == {"layer1.0.bn1": "layer1.0.bn1.0"}
    assert grown.record["inserted"] == "layer1.0.bn1.1"
    assert grown.max_abs_error < 1e-5
    rebuilt = net2net.replay(model, [grown.record])
    assert [n for n, _ in rebuilt.named_parameters()] == [
        n for n, _ in grown.model.named_parameters()
    ]


def test_deepen_twice_at_the_same_place_gets_unique_names() -> None:
    model = mlp_bn()
    x = torch.randn(4, 6)
    g1 = net2net.deepen(model, x, after="2")
    g2 = net2net.deepen(g1.model, x, after="2")
    assert g1.record["inserted"] == "2_deep" and g2.record["inserted"] == "2_deep2"
    assert g2.max_abs_error < 1e-5


@pytest.mark.parametrize("op", ["widen", "deepen"])
def test_dtype_and_device_are_kept(op: str) -> None:
    torch.manual_seed(0)
    model = mlp_bn().double()
    x = torch.randn(4, 6, dtype=torch.float64)
    grown = (
        net2net.widen(model, x, factor=2.0, init="random_zero")
        if op == "widen"
        else net2net.deepen(model, x, after="2", style="residual")
    )
    assert {p.dtype for p in grown.model.parameters()} == {torch.float64}
    assert {b.dtype for b in grown.model.buffers() if b.is_floating_point()} == {torch.float64}
    assert grown.max_abs_error < 1e-12


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_model_stays_on_cuda() -> None:  # pragma: no cover - no GPU on the CI machines
    model = mlp_bn().cuda()
    x = torch.randn(4, 6, device="cuda")
    for grown in (net2net.widen(model, x, factor=2.0), net2net.deepen(model, x, after="2")):
        assert {p.device.type for p in grown.model.parameters()} == {"cuda"}
        assert grown.max_abs_error < 1e-5
