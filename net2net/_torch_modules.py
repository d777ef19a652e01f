"""torch's own attention and transformer modules.

``nn.MultiheadAttention`` is a leaf of the trace with a handler: its fused ``in_proj_weight`` rows
are the q, k and v thirds of one group of heads (the head size stays fixed), ``out_proj`` consumes
those heads and produces the output channels, and ``embed_dim``, ``num_heads``, ``kdim`` and
``vdim`` are rewritten. Its forward requires the input width to equal ``embed_dim``, so the input's
group and the heads grow by one factor (``grows_with``).

``nn.TransformerEncoderLayer`` and ``nn.TransformerEncoder`` check for their fused eval-mode fast
path in Python, which torch.fx cannot trace; the trace follows their slow path instead, which
computes the same function (``_sa_block``, ``_ff_block``, the norms and the residual adds).
``nn.TransformerDecoder`` is followed without its causal-mask detection, and
``nn.TransformerDecoderLayer`` is traced as it is. ``nn.Transformer`` checks its inputs' width
against ``d_model``, which growth does not rewrite: it is refused by name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

import torch
from torch import nn

from ._handlers import Handler, ParamAxes, register_handler
from ._layout import Layout
from ._trace import TraceContext


class MultiheadAttention(Handler):
    """nn.MultiheadAttention (batch_first or not) with one embed_dim for q, k and v."""

    follows_inputs = True  # key and value: their channels meet the query's in ``in_proj_weight``

    def trace(self, module: nn.Module, ctx: TraceContext) -> Layout:
        m = cast(nn.MultiheadAttention, module)
        if not m._qkv_same_embed_dim or m.bias_k is not None or m.add_zero_attn:
            return ctx.block(
                f"module '{ctx.name}' (MultiheadAttention) with kdim/vdim other than embed_dim, "
                "add_bias_kv or add_zero_attn cannot grow group '{group}'; use the default "
                "arguments, or write the attention with nn.Linear projections and "
                "F.scaled_dot_product_attention"
            )
        ctx.meet_inputs(-1, 2)  # key, value
        heads = ctx.dense_heads(-1, m.num_heads, m.head_dim, copies=3)
        out = ctx.submodule("out_proj", -1, heads).dense(-1, m.out_proj.out_features)
        ctx.link(ctx.channels(-1), heads)
        ctx.tuple_output([out, {}])  # (attn_output, attn_weights)
        return {}

    def param_axes(self, module: nn.Module) -> Mapping[str, ParamAxes]:
        return {
            "in_proj_weight": ParamAxes(out=0, in_=1),
            "in_proj_bias": ParamAxes(out=0, fresh="zero"),
        }

    def resize(self, module: nn.Module, out_width: int | None, in_width: int | None) -> None:
        m = cast(nn.MultiheadAttention, module)
        if out_width is not None:
            m.embed_dim = m.kdim = m.vdim = out_width // 3
            m.num_heads = m.embed_dim // m.head_dim


def _encoder_layer_forward(
    self: nn.TransformerEncoderLayer,
    src: torch.Tensor,
    src_mask: torch.Tensor | None = None,
    src_key_padding_mask: torch.Tensor | None = None,
    is_causal: bool = False,
) -> torch.Tensor:
    """TransformerEncoderLayer.forward without the fast-path checks (the same function)."""
    x = src
    if self.norm_first:
        x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal=is_causal)
        return x + self._ff_block(self.norm2(x))
    x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal=is_causal))
    return cast(torch.Tensor, self.norm2(x + self._ff_block(x)))


def _encoder_forward(
    self: nn.TransformerEncoder,
    src: torch.Tensor,
    mask: torch.Tensor | None = None,
    src_key_padding_mask: torch.Tensor | None = None,
    is_causal: bool | None = None,
) -> torch.Tensor:
    """TransformerEncoder.forward without the fast path and nested tensors. The fast path returns
    zeros at padded positions where this one computes values; every other position agrees."""
    out = src
    for layer in self.layers:
        out = layer(out, src_mask=mask, src_key_padding_mask=src_key_padding_mask)
    return out if self.norm is None else cast(torch.Tensor, self.norm(out))


def _decoder_forward(
    self: nn.TransformerDecoder,
    tgt: torch.Tensor,
    memory: torch.Tensor,
    tgt_mask: torch.Tensor | None = None,
    memory_mask: torch.Tensor | None = None,
    *,
    tgt_key_padding_mask: torch.Tensor | None = None,
    memory_key_padding_mask: torch.Tensor | None = None,
    tgt_is_causal: bool | None = None,
    memory_is_causal: bool = False,
) -> torch.Tensor:
    """TransformerDecoder.forward without its causal-mask detection (the same function)."""
    out = tgt
    for layer in self.layers:
        out = layer(
            out,
            memory,
            tgt_mask=tgt_mask,
            memory_mask=memory_mask,
            tgt_key_padding_mask=tgt_key_padding_mask,
            memory_key_padding_mask=memory_key_padding_mask,
        )
    return out if self.norm is None else cast(torch.Tensor, self.norm(out))


TRACEABLE_FORWARDS: dict[type[nn.Module], Callable[..., Any]] = {
    nn.TransformerEncoderLayer: _encoder_layer_forward,
    nn.TransformerEncoder: _encoder_forward,
    nn.TransformerDecoderLayer: nn.TransformerDecoderLayer.forward,  # traceable as it is
    nn.TransformerDecoder: _decoder_forward,
}


def traceable_forward(module: nn.Module) -> Callable[..., Any] | None:
    """The forward the trace follows for ``module`` when its own cannot be traced."""
    cls = type(module)
    for base, fwd in TRACEABLE_FORWARDS.items():
        if cls is base or (issubclass(cls, base) and cls.forward is base.forward):
            return fwd
    return None


class Refused(Handler):
    """A module that net2net knows and cannot grow through; the refusal says what to use."""

    def __init__(self, why: str) -> None:
        self.why = why

    def trace(self, module: nn.Module, ctx: TraceContext) -> Layout:
        return ctx.block(
            f"module '{ctx.name}' ({type(module).__name__}) in group '{{group}}' {self.why}"
        )


register_handler(nn.MultiheadAttention, MultiheadAttention())
register_handler(
    nn.Transformer,
    Refused(
        "checks its inputs' width against d_model, which net2net does not rewrite; build the "
        "model from nn.TransformerEncoder and nn.TransformerDecoder, which grow"
    ),
)
