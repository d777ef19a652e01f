"""Head-size growth: widen_head_size(model, x, {group: hs'}) grows every head of an attention group from hs
to hs' channels exactly (q rescaled where the scale is 1/sqrt(hs)), and refuses rotary embeddings,
nn.MultiheadAttention and head sizes computed from the stream width."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

import net2net
from tests.net2net.transformer_zoo import (
    GPT,
    LLAMA_PRESETS,
    GPTConfig,
    Llama,
    TorchMHALM,
)


class HeadDimAttention(nn.Module):
    """Separate q, k, v and o projections with a ``head_dim`` attribute; ``style`` picks SDPA with
    its default scale, SDPA with a constant ``scale=``, or the attention written out with the
    scale computed from k.size(-1) or q.size(-1)."""

    def __init__(self, d: int, n_head: int, head_dim: int, style: str) -> None:
        super().__init__()
        self.n_head, self.head_dim, self.style = n_head, head_dim, style
        self.scale = 0.3  # the constant of style "explicit"
        self.q_proj = nn.Linear(d, n_head * head_dim)
        self.k_proj = nn.Linear(d, n_head * head_dim)
        self.v_proj = nn.Linear(d, n_head * head_dim)
        self.o_proj = nn.Linear(n_head * head_dim, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.size()
        q, k, v = (
            p(x)
            .view(b, t, self.n_head, 8 if self.style == "literal" else self.head_dim)
            .transpose(1, 2)
            for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        if self.style in ("sdpa", "literal"):
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif self.style == "explicit":
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        else:
            scale = {
                "written_k": lambda: k.size(-1) ** -0.5,
                "written_q": lambda: 1 / q.size(-1) ** 0.5,
                "written_const": lambda: self.scale,
            }[self.style]()
            att = (q @ k.transpose(-2, -1)) * scale
            mask = torch.ones_like(att[0, 0], dtype=torch.bool).tril()  # (T, T)
            att = att.masked_fill(~mask, float("-inf"))
            y = F.softmax(att, dim=-1) @ v
        out: torch.Tensor = self.o_proj(y.transpose(1, 2).reshape(b, t, -1))
        return out


class HeadDimLM(nn.Module):
    def __init__(self, style: str, d: int = 32, n_head: int = 4, head_dim: int = 8) -> None:
        super().__init__()
        self.tok = nn.Embedding(50, d)
        self.blocks = nn.ModuleList(
            [HeadDimAttention(d, n_head, head_dim, style) for _ in range(2)]
        )
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, 50)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx)
        for block in self.blocks:
            x = x + block(x)
        logits: torch.Tensor = self.head(self.ln(x))
        return logits


def _idx(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 8), generator=torch.Generator().manual_seed(1))


def _grow(model: nn.Module, idx: torch.Tensor, groups: list[str], new: int) -> net2net.Grown:
    grown = net2net.widen_head_size(model, idx, dict.fromkeys(groups, new))
    with torch.no_grad():
        before, after = model(idx), grown.model(idx)
    scale = float(before.abs().max())
    torch.testing.assert_close(after, before, atol=1e-5 * scale, rtol=0)
    assert grown.max_abs_error <= 1e-5 * scale
    return grown


STYLES = ["sdpa", "written_k", "written_q", "explicit"]


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("new", [16, 12])
def test_head_dim_models_grow_exactly(style: str, new: int) -> None:
    torch.manual_seed(0)
    model = HeadDimLM(style).eval()
    grown = _grow(model, _idx(50), ["blocks.0.q_proj", "blocks.1.q_proj"], new)
    for block in grown.model.blocks:  # type: ignore[union-attr]
        assert block.head_dim == new
        assert block.q_proj.weight.shape == (4 * new, 32)
        assert block.o_proj.weight.shape == (32, 4 * new)
    assert grown.record["head_size"] == {"blocks.0.q_proj": [8, new], "blocks.1.q_proj": [8, new]}
    assert grown.record["attributes"]["blocks.0.head_dim"] == [8, new]


def test_explicit_scale_keeps_q() -> None:
    torch.manual_seed(0)
    model = HeadDimLM("explicit").eval()
    grown = _grow(model, _idx(50), ["blocks.0.q_proj"], 16)
    old = model.blocks[0].q_proj.weight.view(4, 8, 32)  # type: ignore[union-attr]
    new = grown.model.blocks[0].q_proj.weight.view(4, 16, 32)  # type: ignore[union-attr]
    torch.testing.assert_close(new[:, :8], old, atol=0, rtol=0)
    torch.manual_seed(0)
    base = HeadDimLM("sdpa").eval()
    default = _grow(base, _idx(50), ["blocks.0.q_proj"], 16)
    scaled = default.model.blocks[0].q_proj  # type: ignore[union-attr,index]
    q = base.blocks[0].q_proj  # type: ignore[union-attr,index]
    torch.testing.assert_close(
        scaled.weight.view(4, 16, 32)[:, :8], q.weight.view(4, 8, 32) * 2**0.5
    )
    torch.testing.assert_close(scaled.bias.view(4, 16)[:, :8], q.bias.view(4, 8) * 2**0.5)
    assert float(scaled.weight.detach().view(4, 16, 32)[:, 8:].abs().max()) == 0.0


def test_constant_scale_of_written_attention_refused() -> None:
    torch.manual_seed(0)
    msg = _refusal(HeadDimLM("written_const").eval(), _idx(50), "blocks.0.q_proj", 16)
    assert "attention scale must be 1/sqrt(head size)" in msg


@pytest.mark.parametrize("preset", ["separate_qkv", "gqa_repeat_interleave"])
@pytest.mark.parametrize("factor_or_plus", ["x2", "+4"])
def test_zoo_head_dim_models(preset: str, factor_or_plus: str) -> None:
    torch.manual_seed(0)
    model = Llama(LLAMA_PRESETS[preset]).eval()
    new = 24 if factor_or_plus == "x2" else 16
    grown = _grow(model, _idx(48), ["layers.0.attn.q_proj", "layers.1.attn.q_proj"], new)
    assert grown.model.layers[0].attn.head_dim == new  # type: ignore[union-attr,index]
    replayed = net2net.replay(model, [grown.record])
    assert {k: v.shape for k, v in replayed.state_dict().items()} == {
        k: v.shape for k, v in grown.model.state_dict().items()
    }


def test_new_dims_get_gradients() -> None:
    torch.manual_seed(0)
    model = HeadDimLM("sdpa").eval()
    idx = _idx(50)
    grown = net2net.widen_head_size(model, idx, {"blocks.0.q_proj": 16})
    grown.model.train()
    grown.model(idx).square().mean().backward()
    block = grown.model.blocks[0]  # type: ignore[union-attr,index]
    q_grad = block.q_proj.weight.grad.view(4, 16, 32)[:, 8:]
    o_grad = block.o_proj.weight.grad.view(32, 4, 16)[:, :, 8:]
    assert float(q_grad.abs().sum()) > 0
    assert float(o_grad.abs().sum()) > 0
    assert float(block.k_proj.weight.detach().view(4, 16, 32)[:, 8:].abs().sum()) > 0
    assert float(block.v_proj.weight.detach().view(4, 16, 32)[:, 8:].abs().sum()) > 0


def _refusal(model: nn.Module, idx: torch.Tensor, group: str, new: int) -> str:
    with pytest.raises(net2net.GrowthError) as info:
        net2net.widen_head_size(model, idx, {group: new})
    return str(info.value)


def test_rope_refused() -> None:
    msg = _refusal(Llama(LLAMA_PRESETS["llama"]).eval(), _idx(48), "layers.0.attn.q_proj", 24)
    assert "rotary embeddings (buffer 'layers.0.attn.cos') are computed for head size 12" in msg
    assert "grow the number of heads instead" in msg


def test_multihead_attention_refused() -> None:
    model = TorchMHALM().eval()
    idx = _idx(40)
    heads = [g.name for g in net2net.width_groups(model, idx) if "attn" in g.name]
    msg = _refusal(model, idx, heads[0], 32)
    assert "nn.MultiheadAttention" in msg
    assert "head_dim as embed_dim // num_heads; grow the number of heads instead" in msg


def test_head_size_from_stream_refused() -> None:
    model = GPT(GPTConfig(attention="nanogpt")).eval()
    msg = _refusal(model, _idx(65), "transformer.h.0.attn.c_attn", 32)
    assert "computes the head size from the stream width (C // n_head)" in msg


def test_literal_head_size_refused() -> None:
    model = GPT(GPTConfig()).eval()  # hs = self.n_embd // self.n_head: no attribute holds it
    msg = _refusal(model, _idx(65), "transformer.h.0.attn.c_attn", 32)
    assert "cannot grow the head size" in msg


def test_literal_head_size_equal_to_attribute_refused() -> None:
    msg = _refusal(HeadDimLM("literal").eval(), _idx(50), "blocks.0.q_proj", 16)
    assert "hard-codes the head size 8 as a literal" in msg


def test_widen_keeps_head_size_and_no_shrinking() -> None:
    model = HeadDimLM("sdpa").eval()
    grown = net2net.widen(model, _idx(50), factor=2)
    assert grown.model.blocks[0].head_dim == 8  # type: ignore[union-attr,index]
    msg = _refusal(model, _idx(50), "blocks.0.q_proj", 4)
    assert "smaller than 8" in msg


def test_optimizer_state_follows_head_size() -> None:
    torch.manual_seed(0)
    model = HeadDimLM("sdpa").eval()
    idx = _idx(50)
    opt = torch.optim.AdamW(model.parameters())
    model(idx).square().mean().backward()
    opt.step()
    grown = net2net.widen_head_size(model, idx, {"blocks.0.q_proj": 16})
    new_opt = net2net.transfer_optimizer(opt, model, grown)
    old_q = opt.state[model.blocks[0].q_proj.weight]["exp_avg"].view(4, 8, 32)  # type: ignore[union-attr,index]
    new_q = new_opt.state[grown.model.blocks[0].q_proj.weight]["exp_avg"].view(4, 16, 32)  # type: ignore[union-attr,index]
    torch.testing.assert_close(new_q[:, :8], old_q)
    assert float(new_q[:, 8:].abs().max()) == 0.0
    old_o = opt.state[model.blocks[0].o_proj.weight]["exp_avg_sq"].view(32, 4, 8)  # type: ignore[union-attr,index]
    new_o = new_opt.state[grown.model.blocks[0].o_proj.weight]["exp_avg_sq"].view(32, 4, 16)  # type: ignore[union-attr,index]
    torch.testing.assert_close(new_o[:, :, :8], old_o)
    assert float(new_o[:, :, 8:].abs().max()) == 0.0
    grown.model(idx).square().mean().backward()
    new_opt.step()
