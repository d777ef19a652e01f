"""init= modes: exactness, and whether new units actually learn something different under Adam.

The divergence check: after growth and 200 Adam steps on a seeded problem, every new
unit of every mode advertised as learning has moved away from its source unit (cosine similarity
of incoming weights below 0.99), while the paper's exact copies (equal or random split) have not.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

import net2net

from .zoo import PreLNMLP

LEARNING = [name for name, m in net2net.init_modes().items() if m["learns_under_adam"]]


def test_modes_are_described_as_data() -> None:
    modes = net2net.init_modes()
    json.dumps(modes)
    assert list(modes) == ["net2net", "copy_zero", "random_zero", "random_pad"]
    assert LEARNING == ["copy_zero", "random_zero", "random_pad"]
    for mode in modes.values():
        assert mode["exact"] and mode["symmetry"] and mode["optimizer"] in ("carry", "reset")


def _problem(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(512, 10, generator=g)
    teacher = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 3))
    with torch.no_grad():
        for p in teacher.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
        y = teacher(x) + 0.05 * torch.randn(512, 3, generator=g)
    return x, y


def _cosines_after_training(
    act: type[nn.Module], init: str, split: str = "equal", seed: int = 0
) -> torch.Tensor:
    """Cosine similarity between each new unit's incoming weights and its source unit's, after
    widening a trained MLP ×2 and 200 more Adam steps (state carried)."""
    x, y = _problem(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(10, 8), act(), nn.Linear(8, 8), act(), nn.Linear(8, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()
    grown = net2net.widen(model, x, factor=2.0, init=init, split=split, seed=seed)
    assert grown.max_abs_error < 1e-5 or init == "random_pad"
    opt2 = net2net.transfer_optimizer(opt, model, grown)
    for _ in range(200):
        opt2.zero_grad()
        F.mse_loss(grown.model(x), y).backward()
        opt2.step()
    cos = []
    for name, src in grown.mappings.items():
        w = grown.model.get_submodule(name).weight.detach()
        new = torch.arange(8, 16)
        cos.append(F.cosine_similarity(w[new], w[src[new]], dim=1))
    return torch.cat(cos)


@pytest.mark.parametrize("act", [nn.ReLU, nn.Tanh], ids=["relu", "tanh"])
@pytest.mark.parametrize("init", LEARNING)
def test_learning_modes_diverge_under_adam(act: type[nn.Module], init: str) -> None:
    cos = _cosines_after_training(act, init)
    assert float(cos.max()) < 0.99, cos


@pytest.mark.parametrize("act", [nn.ReLU, nn.Tanh], ids=["relu", "tanh"])
def test_exact_copies_do_not_diverge_under_adam(act: type[nn.Module]) -> None:
    """The paper's exact mode (equal split, no noise) gains no capacity: copies get identical
    updates and stay copies (documented in docs/net2net.md)."""
    cos = _cosines_after_training(act, "net2net", split="equal")
    assert float(cos.min()) > 0.999, cos


@pytest.mark.parametrize("act", [nn.ReLU, nn.Tanh], ids=["relu", "tanh"])
def test_random_split_does_diverge_under_adam(act: type[nn.Module]) -> None:
    """Measured, and contrary to the expectation that Adam normalises the split away: the copies'
    incoming updates are equal, but their outgoing weights (s_j·w, s_k·w) receive equal additive
    updates, stop being proportional, and the copies' backpropagated signals then differ."""
    cos = _cosines_after_training(act, "net2net", split="random")
    assert float(cos.min()) < 0.99, cos


def test_random_zero_falls_back_to_copies_where_a_layernorm_normalises() -> None:
    torch.manual_seed(0)
    model = PreLNMLP()
    x = torch.randn(16, 6)
    grown = net2net.widen(model, x, factor=2.0, init="random_zero")
    assert grown.exact and grown.max_abs_error < 1e-5
    assert any("'embed': new units are copies" in n for n in grown.notes)
    w_old, w_new = model.embed.weight.detach(), grown.model.embed.weight.detach()
    torch.testing.assert_close(w_new, w_old[grown.mappings["embed"]])
    # the hidden groups (no LayerNorm over them) do get random new units
    fc1 = grown.model.blocks[0].fc1.weight.detach()
    assert (
        float(F.cosine_similarity(fc1[12:], fc1[grown.mappings["blocks.0.fc1"][12:]]).max()) < 0.99
    )


def test_noisy_copies_under_a_layernorm_are_flagged_inexact() -> None:
    torch.manual_seed(0)
    model = PreLNMLP()
    x = torch.randn(16, 6)
    grown = net2net.widen(model, x, factor=2.0, init="copy_zero", noise=0.1)
    assert not grown.exact and grown.max_abs_error > 1e-5
    plain = net2net.widen(model, x, widths={"blocks.0.fc1": 24}, init="copy_zero", noise=0.1)
    assert plain.exact and plain.max_abs_error < 1e-5  # zero outgoing weights hide the noise


def test_zero_outgoing_modes_start_with_zero_columns() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    x = torch.randn(8, 4)
    for init in ("copy_zero", "random_zero"):
        grown = net2net.widen(model, x, widths={"0": 9}, init=init)
        head = grown.model[2].weight.detach()
        torch.testing.assert_close(head[:, :5], model[2].weight.detach(), rtol=0, atol=0)
        assert float(head[:, 5:].abs().max()) == 0.0
        assert grown.shares["0"].tolist() == [1.0] * 5 + [0.0] * 4
