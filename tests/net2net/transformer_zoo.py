"""A nanoGPT-style causal language model: fused qkv projection, scaled-dot-product attention,
pre-LayerNorm blocks with residual adds, learned position embeddings, and an LM head tied to the
token embedding."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 65
    block_size: int = 16
    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 32
    dropout: float = 0.0
    bias: bool = True
    attention: str = "sdpa"  # a key of ATTENTION


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention. ``n_head`` and ``n_embd`` (the attention width) are read
    at forward time, so growth updates them; the head size ``n_embd // n_head`` stays fixed."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.n_head = cfg.n_head
        self.n_embd = cfg.n_embd
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.size()  # (B, T, C)
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        hs = self.n_embd // self.n_head
        q = q.view(b, t, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(b, t, self.n_head, hs).transpose(1, 2)
        v = v.view(b, t, self.n_head, hs).transpose(1, 2)
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )
        y = y.transpose(1, 2).contiguous().view(b, t, self.n_embd)
        out: torch.Tensor = self.resid_dropout(self.c_proj(y))
        return out


class ChunkAttention(CausalSelfAttention):
    """The same attention with ``chunk``, slicing of the last dim and ``reshape``/``permute``, and
    the attention written out (matmul, masked_fill, softmax) with a boolean causal mask."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.size()
        qk, v = self.c_attn(x)[..., : 2 * self.n_embd], self.c_attn(x)[..., 2 * self.n_embd :]
        q, k = qk.chunk(2, dim=-1)
        hs = self.n_embd // self.n_head
        q = q.reshape(b, t, self.n_head, hs).permute(0, 2, 1, 3)  # (B, nh, T, hs)
        k = k.reshape(b, t, self.n_head, hs).permute(0, 2, 3, 1)  # (B, nh, hs, T)
        v = v.reshape(b, t, self.n_head, hs).permute(0, 2, 1, 3)
        att = (q @ k) * (1.0 / math.sqrt(hs))
        pos = torch.arange(t, device=x.device)
        causal = pos[:, None] >= pos[None, :]  # (T, T)
        att = att.masked_fill(~causal, float("-inf"))
        y = F.softmax(att, dim=-1) @ v  # (B, nh, T, hs)
        y = y.permute(0, 2, 1, 3).reshape(b, t, self.n_embd)
        out: torch.Tensor = self.resid_dropout(self.c_proj(y))
        return out


class NanoGPTAttention(CausalSelfAttention):
    """nanoGPT's own forward: the head size is C // n_head and the output view is (B, T, C), with C
    the residual stream's width, so the stream and the heads grow only by the same factor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)
        q = q.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)
        v = v.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(b, t, c)
        out: torch.Tensor = self.resid_dropout(self.c_proj(y))
        return out


class BiasedAttention(CausalSelfAttention):
    """SDPA with an additive float mask (a causal mask plus a distance penalty), broadcast over
    the heads, and an explicit scale."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=-1)
        hs = self.n_embd // self.n_head
        q, k, v = (z.view(b, t, self.n_head, hs).transpose(1, 2) for z in (q, k, v))
        pos = torch.arange(t, device=x.device)
        dist = (pos[:, None] - pos[None, :]).to(x.dtype)  # (T, T)
        mask = torch.where(dist >= 0, -0.1 * dist, float("-inf"))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.5 / math.sqrt(hs))
        y = y.transpose(1, 2).reshape(b, t, self.n_embd)
        out: torch.Tensor = self.resid_dropout(self.c_proj(y))
        return out


ATTENTION: dict[str, type[CausalSelfAttention]] = {
    "masked": BiasedAttention,
    "sdpa": CausalSelfAttention,
    "manual": ChunkAttention,
    "nanogpt": NanoGPTAttention,
}


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.dropout(self.c_proj(self.gelu(self.c_fc(x))))
        return out


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = ATTENTION[cfg.attention](cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or GPTConfig()
        self.config = cfg
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(cfg.vocab_size, cfg.n_embd),
                "wpe": nn.Embedding(cfg.block_size, cfg.n_embd),
                "drop": nn.Dropout(cfg.dropout),
                "h": nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)]),
                "ln_f": nn.LayerNorm(cfg.n_embd, bias=cfg.bias),
            }
        )
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        _, t = idx.size()
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        logits: torch.Tensor = self.lm_head(self.transformer.ln_f(x))
        return logits
