"""A nanoGPT-style causal LM grows exactly: the residual stream, the attention heads (head size
fixed, n_head updated) and the MLPs, alone and together, with the tied LM head kept tied."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import net2net

from .transformer_zoo import GPT, GPTConfig
from .zoo import assert_unchanged, randomize_norms, snapshot

TOL = 1e-5  # float32, relative to the logits' scale
STREAM = "transformer.wte"
HEADS = ("transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn")
MLPS = ("transformer.h.0.mlp.c_fc", "transformer.h.1.mlp.c_fc")


def tiny_gpt(attention: str = "sdpa", seed: int = 0) -> tuple[GPT, torch.Tensor]:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(attention=attention))
    randomize_norms(model, seed)
    idx = torch.randint(0, 65, (3, 16), generator=torch.Generator().manual_seed(seed + 1))
    return model, idx


def logits(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    flag = model.training
    model.eval()
    with torch.no_grad():
        out: torch.Tensor = model(idx)
    model.train(flag)
    return out


def assert_same_function(teacher: nn.Module, student: nn.Module, idx: torch.Tensor) -> float:
    """Logits equal within TOL · max|logits| (float32, eval mode); returns the max abs error."""
    want, got = logits(teacher, idx), logits(student, idx)
    scale = float(want.abs().max())
    torch.testing.assert_close(got, want, rtol=0.0, atol=TOL * scale)
    return float((got - want).abs().max())


@pytest.fixture(params=["sdpa", "manual"])
def attention(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_heads_and_mlps_are_groups(attention: str) -> None:
    model, idx = tiny_gpt(attention)
    groups = {g.name: g for g in net2net.width_groups(model, idx)}
    for name in HEADS:
        g = groups[name]
        assert g.width == 2  # heads, not channels
        assert g.producers == (name,)
        assert g.consumers == (name.replace("c_attn", "c_proj"),)
    for name in MLPS:
        assert groups[name].width == 128


def test_heads_alone_x2(attention: str) -> None:
    model, idx = tiny_gpt(attention)
    snap = snapshot(model)
    grown = net2net.widen(model, idx, widths=dict.fromkeys(HEADS, 4))
    assert_unchanged(model, snap)
    err = assert_same_function(model, grown.model, idx)
    assert grown.max_abs_error == pytest.approx(err, abs=1e-7)
    for block in grown.model.transformer.h:
        assert block.attn.n_head == 4
        assert block.attn.n_embd == 64  # the attention width: 4 heads of 16
        assert block.attn.c_attn.weight.shape == (3 * 64, 32)
        assert block.attn.c_proj.weight.shape == (32, 64)
    assert grown.record["attributes"]["transformer.h.0.attn.n_head"] == [2, 4]


def test_new_heads_are_copies_of_old_heads() -> None:
    model, idx = tiny_gpt()
    grown = net2net.widen(model, idx, widths={HEADS[0]: 4})
    g = grown.mappings[HEADS[0]]
    assert g[:2].tolist() == [0, 1]
    old = model.transformer.h[0].attn.c_attn.weight.detach().view(3, 2, 16, 32)
    new = grown.model.transformer.h[0].attn.c_attn.weight.detach().view(3, 4, 16, 32)
    torch.testing.assert_close(new, old[:, g], rtol=0, atol=0)  # q, k and v heads alike
    proj_old = model.transformer.h[0].attn.c_proj.weight.detach().view(32, 2, 16)
    proj_new = grown.model.transformer.h[0].attn.c_proj.weight.detach().view(32, 4, 16)
    counts = torch.bincount(g, minlength=2).float()
    torch.testing.assert_close(proj_new, proj_old[:, g] / counts[g][None, :, None])


def test_mlp_alone_x2(attention: str) -> None:
    model, idx = tiny_gpt(attention)
    grown = net2net.widen(model, idx, widths=dict.fromkeys(MLPS, 256))
    assert_same_function(model, grown.model, idx)
    assert grown.model.transformer.h[1].mlp.c_fc.out_features == 256
    assert grown.model.transformer.h[1].attn.n_head == 2
