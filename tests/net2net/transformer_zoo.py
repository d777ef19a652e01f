"""A nanoGPT-style causal language model: fused qkv projection, scaled-dot-product attention,
pre-LayerNorm blocks with residual adds, learned position embeddings, and an LM head tied to the
token embedding."""

from __future__ import annotations

import math
from collections.abc import Callable
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


# -- Llama-style models: separate q, k and v projections, grouped-query attention, RMSNorm, SwiGLU
# and rotary position embeddings, no biases.


@dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int = 48
    block_size: int = 16
    n_layer: int = 2
    n_head: int = 4
    n_kv_head: int | None = None  # fewer than n_head: grouped-query attention
    n_embd: int = 48  # head size 12: no head count reaches it in the zoo's growth steps
    ffn_hidden: int = 48
    norm: str = "rms"  # a key of NORMS
    ffn: str = "swiglu"  # "swiglu" or "gelu"
    rope: bool = True
    kv_repeat: str = "repeat_interleave"  # a key of KV_REPEAT: how k, v reach n_head heads
    eps: float = 1e-5


class RMSNorm(nn.Module):
    """RMSNorm as users write it: x / rms(x) · weight over the last dim."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class FunctionalRMSNorm(RMSNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.size(-1),), self.weight, self.eps)


class LayerNorm(nn.Module):
    """nanoGPT's LayerNorm: F.layer_norm with the module's own weight and optional bias."""

    def __init__(self, ndim: int, eps: float = 1e-5, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


NORMS: dict[str, type[nn.Module]] = {
    "rms": RMSNorm,
    "nn_rms": nn.RMSNorm,
    "layer": nn.LayerNorm,
    "f_rms": FunctionalRMSNorm,
    "f_layer": LayerNorm,
}


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """The rotate-half of RoPE, within each head: (x1, x2) → (−x2, x1) on the head dim."""
    hs = x.size(-1)
    x1, x2 = x[..., : hs // 2], x[..., hs // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def repeat_kv_interleave(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    return x.repeat_interleave(n_rep, dim=1)  # (B, n_kv, T, hs) → (B, n_kv·n_rep, T, hs)


def repeat_kv_expand(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Llama's repeat_kv: expand a new dim, then merge it into the heads."""
    b, n_kv, t, hs = x.shape
    x = x[:, :, None, :, :].expand(b, n_kv, n_rep, t, hs)
    return x.reshape(b, n_kv * n_rep, t, hs)


class LlamaAttention(nn.Module):
    """q, k, v and o projections (Linear each); k and v have ``n_kv_head`` heads, repeated to
    ``n_head`` for the attention. ``n_head``, ``n_kv_head`` and ``head_dim`` are read at forward
    time; growth rewrites the head counts."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head = cfg.n_head, cfg.n_kv_head  # None: n_head
        self.head_dim = cfg.n_embd // cfg.n_head
        self.kv_repeat = cfg.kv_repeat
        self.rope = cfg.rope
        self.q_proj = nn.Linear(cfg.n_embd, cfg.n_head * self.head_dim, bias=False)
        n_kv = cfg.n_kv_head or cfg.n_head
        self.k_proj = nn.Linear(cfg.n_embd, n_kv * self.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.n_embd, n_kv * self.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_head * self.head_dim, cfg.n_embd, bias=False)
        pos = torch.arange(cfg.block_size, dtype=torch.float32)
        inv = 1.0 / (10000 ** (torch.arange(0, self.head_dim, 2).float() / self.head_dim))
        freqs = torch.outer(pos, inv)
        emb = torch.cat((freqs, freqs), dim=-1)  # (T, hs)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.size()  # (B, T, C)
        n_kv = self.n_head if self.n_kv_head is None else self.n_kv_head
        q = self.q_proj(x).view(b, t, self.n_head, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, n_kv, self.head_dim).transpose(1, 2)  # (B, n_kv, T, hs)
        v = self.v_proj(x).view(b, t, n_kv, self.head_dim).transpose(1, 2)
        if self.rope:
            cos = torch.narrow(self.cos, 0, 0, t)  # (T, hs), broadcast over (B, nh)
            sin = torch.narrow(self.sin, 0, 0, t)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
        n_rep = self.n_head // n_kv
        if self.kv_repeat == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=n_rep > 1)
        else:
            if n_rep > 1:
                k, v = KV_REPEAT[self.kv_repeat](k, n_rep), KV_REPEAT[self.kv_repeat](v, n_rep)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).reshape(b, t, -1)  # (B, T, n_head · hs)
        out: torch.Tensor = self.o_proj(y)
        return out


KV_REPEAT = {"repeat_interleave": repeat_kv_interleave, "expand": repeat_kv_expand}


class SwiGLU(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.w1 = nn.Linear(cfg.n_embd, cfg.ffn_hidden, bias=False)
        self.w2 = nn.Linear(cfg.ffn_hidden, cfg.n_embd, bias=False)
        self.w3 = nn.Linear(cfg.n_embd, cfg.ffn_hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.w2(F.silu(self.w1(x)) * self.w3(x))
        return out


class GeluFFN(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, cfg.ffn_hidden, bias=False)
        self.act = nn.GELU()
        self.proj = nn.Linear(cfg.ffn_hidden, cfg.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.proj(self.act(self.fc(x)))
        return out


class LlamaBlock(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.attn_norm = NORMS[cfg.norm](cfg.n_embd, eps=cfg.eps)
        self.attn = LlamaAttention(cfg)
        self.ffn_norm = NORMS[cfg.norm](cfg.n_embd, eps=cfg.eps)
        self.ffn = SwiGLU(cfg) if cfg.ffn == "swiglu" else GeluFFN(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.ffn(self.ffn_norm(x))


class Llama(nn.Module):
    """A Llama-style decoder: token embedding, pre-norm blocks, a final norm and an untied head."""

    def __init__(self, cfg: LlamaConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or LlamaConfig()
        self.config = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.layers = nn.ModuleList([LlamaBlock(cfg) for _ in range(cfg.n_layer)])
        self.norm = NORMS[cfg.norm](cfg.n_embd, eps=cfg.eps)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx)
        for layer in self.layers:
            x = layer(x)
        logits: torch.Tensor = self.head(self.norm(x))
        return logits


LLAMA_PRESETS: dict[str, LlamaConfig] = {
    # separate q, k, v projections with LayerNorm, a GELU MLP and no RoPE
    "separate_qkv": LlamaConfig(norm="layer", ffn="gelu", rope=False),
    "gqa_repeat_interleave": LlamaConfig(n_kv_head=2, norm="layer", ffn="gelu", rope=False),
    "gqa_expand": LlamaConfig(n_kv_head=2, kv_repeat="expand", norm="layer", ffn="gelu"),
    "gqa_sdpa": LlamaConfig(n_kv_head=2, kv_repeat="sdpa", norm="layer", ffn="gelu"),
}
LLAMA_PRESETS["llama"] = LlamaConfig(n_kv_head=2)
LLAMA_PRESETS["llama_nn_rmsnorm"] = LlamaConfig(norm="nn_rms")
LLAMA_PRESETS["llama_f_rms_norm"] = LlamaConfig(n_kv_head=2, norm="f_rms", kv_repeat="sdpa")
LLAMA_PRESETS["nanogpt_layernorm"] = LlamaConfig(norm="f_layer", ffn="gelu", rope=False)


# -- torch's own modules: nn.MultiheadAttention, nn.TransformerEncoder(Layer) and
# nn.TransformerDecoderLayer, and an encoder classifier with a CLS token.


@dataclass(frozen=True)
class TorchConfig:
    vocab_size: int = 40
    block_size: int = 12
    n_layer: int = 2
    n_head: int = 2
    d_model: int = 32
    d_ff: int = 48
    batch_first: bool = True
    norm_first: bool = True
    pad: int = 0  # token id of padding (masked out of attention)
    additive_mask: bool = False  # the padding mask as -inf added to the scores, not booleans


class MHABlock(nn.Module):
    """A pre-LayerNorm block around nn.MultiheadAttention, with a causal mask."""

    def __init__(self, cfg: TorchConfig) -> None:
        super().__init__()
        self.batch_first = cfg.batch_first
        self.ln_1 = nn.LayerNorm(cfg.d_model)
        self.attn = nn.MultiheadAttention(cfg.d_model, cfg.n_head, batch_first=cfg.batch_first)
        self.ln_2 = nn.LayerNorm(cfg.d_model)
        self.fc = nn.Linear(cfg.d_model, cfg.d_ff)
        self.proj = nn.Linear(cfg.d_ff, cfg.d_model)

    def forward(self, x: torch.Tensor, causal: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, attn_mask=causal, need_weights=False)[0]
        return x + self.proj(F.gelu(self.fc(self.ln_2(x))))


class TorchMHALM(nn.Module):
    """A causal LM of nn.MultiheadAttention blocks (batch_first or sequence-first)."""

    def __init__(self, cfg: TorchConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or TorchConfig()
        self.batch_first = cfg.batch_first
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = nn.Embedding(cfg.block_size, cfg.d_model)
        self.blocks = nn.ModuleList([MHABlock(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.size(1)
        pos = torch.arange(t, device=idx.device)
        causal = torch.triu(torch.full((t, t), float("-inf"), device=idx.device), diagonal=1)
        x = self.tok(idx) + self.pos(pos)  # (B, T, d)
        if not self.batch_first:
            x = x.transpose(0, 1)  # (T, B, d)
        for block in self.blocks:
            x = block(x, causal)
        if not self.batch_first:
            x = x.transpose(0, 1)
        logits: torch.Tensor = self.head(self.ln_f(x))
        return logits


class EncoderClassifier(nn.Module):
    """Token embedding + learned positions (a parameter) + a CLS token (a parameter, put in
    front) + nn.TransformerEncoder with a key padding mask + a Linear head on the CLS output."""

    def __init__(self, cfg: TorchConfig | None = None, classes: int = 3) -> None:
        super().__init__()
        cfg = cfg or TorchConfig()
        self.pad, self.batch_first, self.additive = cfg.pad, cfg.batch_first, cfg.additive_mask
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = nn.Parameter(0.1 * torch.randn(1, cfg.block_size + 1, cfg.d_model))
        self.cls = nn.Parameter(0.1 * torch.randn(1, 1, cfg.d_model))
        layer = nn.TransformerEncoderLayer(
            cfg.d_model,
            cfg.n_head,
            cfg.d_ff,
            dropout=0.1,
            batch_first=cfg.batch_first,
            norm_first=cfg.norm_first,
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.n_layer, enable_nested_tensor=False)
        self.head = nn.Linear(cfg.d_model, classes)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        b, t = idx.size()
        x = torch.cat([self.cls.expand(b, -1, -1), self.tok(idx)], dim=1)  # (B, 1 + T, d)
        x = x + self.pos[:, : t + 1]
        pad = torch.cat([torch.zeros_like(idx[:, :1]), idx], dim=1) == self.pad  # (B, 1 + T)
        if self.additive:
            pad = torch.zeros(pad.shape, device=idx.device).masked_fill(pad, float("-inf"))
        if not self.batch_first:
            x = x.transpose(0, 1)
        x = self.encoder(x, src_key_padding_mask=pad)
        cls = x[:, 0] if self.batch_first else x[0]
        out: torch.Tensor = self.head(cls)
        return out


class Seq2Seq(nn.Module):
    """nn.TransformerEncoderLayer over a source and nn.TransformerDecoderLayer over a target that
    attends to it; the input holds the source tokens, then the target tokens."""

    def __init__(self, cfg: TorchConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or TorchConfig()
        self.batch_first = cfg.batch_first
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
        kw = {"dropout": 0.0, "batch_first": cfg.batch_first, "norm_first": cfg.norm_first}
        self.enc = nn.TransformerEncoderLayer(cfg.d_model, cfg.n_head, cfg.d_ff, **kw)
        self.dec = nn.TransformerDecoderLayer(cfg.d_model, cfg.n_head, cfg.d_ff, **kw)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        src, tgt = idx.chunk(2, dim=1)
        s, t = self.tok(src), self.tok(tgt)
        if not self.batch_first:
            s, t = s.transpose(0, 1), t.transpose(0, 1)
        n = tgt.size(1)
        causal = torch.triu(torch.full((n, n), float("-inf"), device=idx.device), diagonal=1)
        y = self.dec(t, self.enc(s), tgt_mask=causal)
        if not self.batch_first:
            y = y.transpose(0, 1)
        out: torch.Tensor = self.head(y)
        return out


TORCH_PRESETS: dict[str, tuple[Callable[[TorchConfig], nn.Module], TorchConfig]] = {
    "torch_mha": (TorchMHALM, TorchConfig()),
    "torch_mha_seq_first": (TorchMHALM, TorchConfig(batch_first=False)),
    "encoder_classifier": (EncoderClassifier, TorchConfig()),
    "encoder_classifier_post_norm_seq_first": (
        EncoderClassifier,
        TorchConfig(norm_first=False, batch_first=False),
    ),
    "seq2seq_post_norm": (Seq2Seq, TorchConfig(norm_first=False)),
    "seq2seq_pre_norm_seq_first": (Seq2Seq, TorchConfig(batch_first=False)),
}
