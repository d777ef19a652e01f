"""The ``gpt`` model family: a decoder-only, pre-norm transformer language model.

Built from standard modules with readable names so that ``net2net`` grows it:

- ``tok`` (token embedding), ``pos`` (learned positions, absent with ``positions="rope"``),
  ``drop``, ``blocks`` (an ``nn.ModuleList``), ``norm`` (the final norm) and ``head`` (the LM head,
  tied to ``tok.weight`` by default);
- each block is ``x + attn(norm1(x))`` then ``x + ffn(norm2(x))``; the attention has separate
  ``q_proj``, ``k_proj``, ``v_proj`` and ``o_proj`` projections viewed into ``n_head`` heads of
  ``head_dim`` channels (both read from attributes at forward time, so growth rewrites them) and
  calls ``F.scaled_dot_product_attention(..., is_causal=True)``; the FFN is ``fc → GELU → proj``.

``net2net.width_groups`` then finds one residual-stream group (``tok``), one group of heads per
block (``blocks.i.attn.q_proj``) and one FFN group per block (``blocks.i.ffn.fc``), and
``net2net.deepen(model, x, after="blocks.N")`` inserts an identity block (its ``o_proj`` and
``ffn.proj`` zeroed). The stream grows by integer factors only (the norms normalise over it).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.nn import functional

from workers.spec import TaskSpec

MAX_GPT_WIDTH = 16_384
MAX_GPT_LAYERS = 128
NORM_EPS = 1e-5
INIT_STD = 0.02


class GPTOptions(BaseModel):
    """Options of the ``gpt`` family (a ``language_modeling`` task only)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_layer: int = Field(default=4, ge=1, le=MAX_GPT_LAYERS, description="Transformer blocks.")
    n_head: int = Field(default=4, ge=1, le=1024, description="Attention heads per block.")
    d_model: int = Field(
        default=128, ge=2, le=MAX_GPT_WIDTH, description="Residual stream width (n_head divides)."
    )
    ffn_multiple: int = Field(default=4, ge=1, le=16, description="FFN width over d_model.")
    norm: Literal["layer", "rms"] = "layer"
    positions: Literal["learned", "rope"] = "learned"
    tie_embeddings: bool = True
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    bias: bool = False


def _norm(kind: str, width: int, bias: bool) -> nn.Module:
    if kind == "rms":
        return nn.RMSNorm(width, eps=NORM_EPS)
    return nn.LayerNorm(width, eps=NORM_EPS, bias=bias)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """RoPE's rotate-half within each head: (x1, x2) → (−x2, x1) over the head dim."""
    half = x.size(-1) // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with separate q, k, v and output projections.

    ``n_head`` and ``head_dim`` are read at forward time: widening the heads rewrites ``n_head``
    (the head size stays), ``net2net.widen_head_size`` rewrites ``head_dim`` (learned positions
    only: rotary tables are computed for one head size).
    """

    cos: torch.Tensor  # the rotary tables (context_length, head_dim), with positions="rope"
    sin: torch.Tensor

    def __init__(
        self,
        d_model: int,
        n_head: int,
        *,
        context_length: int,
        bias: bool,
        dropout: float,
        rope: bool,
    ) -> None:
        super().__init__()
        self.n_head = n_head
        self.head_dim = d_model // n_head
        self.dropout = dropout
        self.rope = rope
        inner = n_head * self.head_dim
        self.q_proj = nn.Linear(d_model, inner, bias=bias)
        self.k_proj = nn.Linear(d_model, inner, bias=bias)
        self.v_proj = nn.Linear(d_model, inner, bias=bias)
        self.o_proj = nn.Linear(inner, d_model, bias=bias)
        self.resid_drop = nn.Dropout(dropout)
        if rope:
            pos = torch.arange(context_length, dtype=torch.float32)
            steps = torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim
            freqs = torch.outer(pos, 1.0 / (10000.0**steps))
            table = torch.cat((freqs, freqs), dim=-1)  # (context_length, head_dim)
            self.register_buffer("cos", table.cos(), persistent=False)
            self.register_buffer("sin", table.sin(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.size()  # (B, T, d)
        q = self.q_proj(x).view(b, t, self.n_head, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.n_head, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_head, self.head_dim).transpose(1, 2)
        if self.rope:
            cos = torch.narrow(self.cos, 0, 0, t)  # (T, hs), broadcast over (B, heads)
            sin = torch.narrow(self.sin, 0, 0, t)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
        y = functional.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )
        y = y.transpose(1, 2).reshape(b, t, -1)  # (B, T, n_head · head_dim)
        out: torch.Tensor = self.resid_drop(self.o_proj(y))
        return out


class FeedForward(nn.Module):
    """``proj(GELU(fc(x)))`` with ``fc`` ``ffn_multiple`` times wider than the stream."""

    def __init__(self, d_model: int, hidden: int, *, bias: bool, dropout: float) -> None:
        super().__init__()
        self.fc = nn.Linear(d_model, hidden, bias=bias)
        self.act = nn.GELU()
        self.proj = nn.Linear(hidden, d_model, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.drop(self.proj(self.act(self.fc(x))))
        return out


class Block(nn.Module):
    """A pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + ffn(norm2(x))``."""

    def __init__(self, options: GPTOptions, context_length: int) -> None:
        super().__init__()
        d = options.d_model
        self.norm1 = _norm(options.norm, d, options.bias)
        self.attn = CausalSelfAttention(
            d,
            options.n_head,
            context_length=context_length,
            bias=options.bias,
            dropout=options.dropout,
            rope=options.positions == "rope",
        )
        self.norm2 = _norm(options.norm, d, options.bias)
        self.ffn = FeedForward(
            d, options.ffn_multiple * d, bias=options.bias, dropout=options.dropout
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        out: torch.Tensor = x + self.ffn(self.norm2(x))
        return out


class GPT(nn.Module):
    """Decoder-only language model: (B, T) int64 token ids → (B, T, vocab) logits, T at most
    ``context_length``."""

    def __init__(self, options: GPTOptions, vocab_size: int, context_length: int) -> None:
        super().__init__()
        d = options.d_model
        self.context_length = context_length
        self.n_layer = options.n_layer  # kept up to date by net2net.deepen
        self.learned_positions = options.positions == "learned"
        self.tok = nn.Embedding(vocab_size, d)
        if self.learned_positions:
            self.pos = nn.Embedding(context_length, d)
        self.drop = nn.Dropout(options.dropout)
        self.blocks = nn.ModuleList(
            [Block(options, context_length) for _ in range(options.n_layer)]
        )
        self.norm = _norm(options.norm, d, options.bias)
        self.head = nn.Linear(d, vocab_size, bias=False)
        self._init_weights(options.n_layer)
        if options.tie_embeddings:
            self.head.weight = self.tok.weight

    def _init_weights(self, n_layer: int) -> None:
        """GPT-2's initialisation: N(0, 0.02) weights, zero biases, and the projections that end
        a residual branch scaled by 1/sqrt(2 · n_layer)."""
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                std = INIT_STD
                if name.endswith(("attn.o_proj", "ffn.proj")):
                    std = INIT_STD / math.sqrt(2 * n_layer)
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if isinstance(module, nn.Linear) and module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx)
        if self.learned_positions:
            x = x + self.pos(torch.arange(idx.size(1), device=idx.device))
        x = self.drop(x)
        for block in self.blocks:
            x = block(x)
        logits: torch.Tensor = self.head(self.norm(x))
        return logits


def accepts(task: TaskSpec) -> list[str]:
    if task.kind != "language_modeling":
        return [
            f"family 'gpt' is a language model: it needs task kind 'language_modeling', not "
            f"'{task.kind}'; use 'mlp', 'cnn' or 'resnet' for {task.kind}"
        ]
    return []


def check(options: GPTOptions, task: TaskSpec) -> list[str]:
    errors = []
    if options.d_model % options.n_head:
        fits = [h for h in range(1, min(options.d_model, 64) + 1) if options.d_model % h == 0]
        errors.append(
            f"n_head {options.n_head} must divide d_model {options.d_model} (the head size is "
            f"d_model / n_head); n_head could be one of {fits[-6:]}"
        )
    elif options.positions == "rope" and (options.d_model // options.n_head) % 2:
        errors.append(
            f"positions 'rope' needs an even head size, but d_model {options.d_model} / n_head "
            f"{options.n_head} = {options.d_model // options.n_head}; change n_head or d_model"
        )
    return errors


def build(options: GPTOptions, task: TaskSpec) -> nn.Module:
    return GPT(options, task.output_dim, task.context_length)
