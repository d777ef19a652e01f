"""Transformer styles beyond nanoGPT's fused projection grow exactly: separate q, k and v
projections, and grouped-query attention (k and v repeated with repeat_interleave, with an expand
and a reshape, or by SDPA's enable_gqa), where the key/value heads grow in proportion to the query
heads so that every query head keeps its key/value head."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import net2net

from .transformer_zoo import (
    LLAMA_PRESETS,
    TORCH_PRESETS,
    EncoderClassifier,
    Llama,
    LlamaConfig,
    Seq2Seq,
    TorchConfig,
)
from .zoo import ZOO, Case, build, randomize_norms

TOL = 1e-5  # float32, relative to the logits' scale


def tiny(preset: str, seed: int = 0) -> tuple[Llama, torch.Tensor]:
    torch.manual_seed(seed)
    model = Llama(LLAMA_PRESETS[preset])
    randomize_norms(model, seed)
    idx = torch.randint(0, 48, (2, 12), generator=torch.Generator().manual_seed(seed + 1))
    return model, idx


def assert_same_function(teacher: nn.Module, student: nn.Module, idx: torch.Tensor) -> float:
    """Logits equal within TOL · max|logits| (float32, eval mode); returns the max abs error."""
    teacher.eval()
    student.eval()
    with torch.no_grad():
        want, got = teacher(idx), student(idx)
    scale = float(want.abs().max())
    torch.testing.assert_close(got, want, rtol=0.0, atol=TOL * scale)
    return float((got - want).abs().max())


def test_separate_projections_are_one_group_of_heads() -> None:
    model, idx = tiny("separate_qkv")
    groups = {g.name: g for g in net2net.width_groups(model, idx)}
    heads = groups["layers.0.attn.q_proj"]
    assert heads.width == 4
    assert set(heads.producers) == {f"layers.0.attn.{p}_proj" for p in "qkv"}
    assert heads.consumers == ("layers.0.attn.o_proj",)
    grown = net2net.widen(model, idx, factor=2.0)
    assert grown.model.layers[0].attn.n_head == 8
    assert grown.model.layers[0].attn.k_proj.out_features == 96
    assert_same_function(model, grown.model, idx)


@pytest.mark.parametrize("preset", ["gqa_repeat_interleave", "gqa_expand", "gqa_sdpa"])
def test_grouped_query_attention_keeps_its_grouping(preset: str) -> None:
    model, idx = tiny(preset)
    groups = {g.name: g for g in net2net.width_groups(model, idx)}
    heads = groups["layers.0.attn.q_proj"]
    assert heads.width == 2  # a unit is one key/value head with its 2 query heads
    assert set(heads.producers) == {f"layers.0.attn.{p}_proj" for p in "qkv"}
    grown = net2net.widen(model, idx, factor=2.0, seed=5, init="net2net")
    attn = grown.model.layers[0].attn
    assert (attn.n_head, attn.n_kv_head) == (8, 4)
    assert grown.record["attributes"]["layers.0.attn.n_kv_head"] == [2, 4]
    g, hs = grown.mappings["layers.0.attn.q_proj"], 12
    q, k = attn.q_proj.weight, attn.k_proj.weight
    for j, src in enumerate(g.tolist()):  # kv head j copies kv head src with its 2 query heads
        torch.testing.assert_close(
            q[2 * hs * j : 2 * hs * (j + 1)], q[2 * hs * src : 2 * hs * (src + 1)]
        )
        torch.testing.assert_close(k[hs * j : hs * (j + 1)], k[hs * src : hs * (src + 1)])
    assert_same_function(model, grown.model, idx)


@pytest.mark.parametrize("preset", ["gqa_repeat_interleave", "gqa_sdpa"])
def test_grouped_query_heads_grow_alone_by_any_whole_number(preset: str) -> None:
    model, idx = tiny(preset)
    grown = net2net.widen(
        model, idx, widths={"layers.1.attn.q_proj": 3}, split="random", init="net2net"
    )
    attn = grown.model.layers[1].attn
    assert (attn.n_head, attn.n_kv_head) == (6, 3)
    assert_same_function(model, grown.model, idx)


def test_equal_attributes_are_told_apart_by_which_one_the_view_reads() -> None:
    """n_head == n_kv_head, and n_head == head_dim: a second trace with one attribute changed
    shows which one each view reads; both head counts are rewritten, the head size is not."""
    torch.manual_seed(0)
    idx = torch.randint(0, 48, (2, 8))
    model = Llama(LlamaConfig(n_kv_head=4, norm="layer", ffn="gelu", rope=False))
    grown = net2net.widen(model, idx, factor=2.0)
    assert grown.record["attributes"]["layers.0.attn.n_kv_head"] == [4, 8]
    assert grown.record["attributes"]["layers.0.attn.n_head"] == [4, 8]
    assert (model.layers[0].attn.n_head, model.layers[0].attn.n_kv_head) == (4, 4)  # untouched
    assert_same_function(model, grown.model, idx)
    model = Llama(LlamaConfig(n_embd=16, norm="layer", ffn="gelu", rope=False))  # hs = 4 heads
    grown = net2net.widen(model, idx, factor=2.0)
    attn = grown.model.layers[0].attn
    assert (attn.n_head, attn.head_dim) == (8, 4)
    assert_same_function(model, grown.model, idx)


class TwoCounts(nn.Module):
    """Two attributes that hold the head count, and the forward picks one by comparing the
    other: changing either changes the view, so net2net cannot tell and refuses by name."""

    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(8, 8)
        self.out = nn.Linear(8, 3)
        self.heads, self.groups = 2, 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.size()
        n = self.heads if self.groups == 2 else self.groups
        h = torch.relu(self.q(x)).view(b, t, n, 4).transpose(1, 2)
        out: torch.Tensor = self.out(h.transpose(1, 2).reshape(b, t, 8))
        return out


def test_attributes_a_second_trace_cannot_tell_apart_are_named() -> None:
    torch.manual_seed(0)
    model, x = TwoCounts(), torch.randn(2, 3, 8)
    with pytest.raises(net2net.GrowthError, match="attributes heads, groups all hold 2"):
        net2net.widen(model, x, widths={"q": 4})


@pytest.mark.parametrize("preset", ["llama", "llama_nn_rmsnorm"])
def test_llama_block_grows_x2_with_rmsnorm_rope_and_swiglu(preset: str) -> None:
    model, idx = tiny(preset)
    groups = {g.name: g for g in net2net.width_groups(model, idx)}
    stream = groups["tok"]
    assert stream.integer_factor
    assert set(stream.integer_factor_norms) == {
        "layers.0.attn_norm",
        "layers.0.ffn_norm",
        "layers.1.attn_norm",
        "layers.1.ffn_norm",
        "norm",
    }
    assert "layers.0.attn_norm" in stream.norms  # its weight is tiled with the stream
    assert set(groups["layers.0.ffn.w1"].producers) == {"layers.0.ffn.w1", "layers.0.ffn.w3"}
    grown = net2net.widen(model, idx, factor=2.0)
    assert grown.model.layers[0].attn_norm.weight.shape == (96,)
    torch.testing.assert_close(
        grown.model.layers[0].attn_norm.weight[grown.mappings["tok"]],
        grown.model.layers[0].attn_norm.weight,
    )
    assert_same_function(model, grown.model, idx)
    assert grown.max_abs_error < TOL


def test_rmsnorm_refuses_a_non_integer_factor_by_name() -> None:
    model, idx = tiny("llama")
    with pytest.raises(net2net.GrowthError) as info:
        net2net.widen(model, idx, factor=1.5)
    msg = str(info.value)
    assert "norm 'layers.0.attn_norm'" in msg and "normalises over group 'tok'" in msg
    assert "use an integer factor" in msg
    with pytest.raises(net2net.GrowthError, match=r"a multiple of 48 \(e.g. 96\), not 72"):
        net2net.widen(model, idx, widths={"tok": 72})
    grown = net2net.widen(model, idx, widths={"tok": 144})  # ×3
    assert_same_function(model, grown.model, idx)


def test_heads_and_ffn_grow_x1_5_under_rmsnorm() -> None:
    """Groups that no norm normalises take any width: heads 2 → 3 key/value heads (4 → 6 query
    heads), SwiGLU 48 → 72."""
    model, idx = tiny("llama")
    widths = {"layers.0.attn.q_proj": 3, "layers.0.ffn.w1": 72, "layers.1.ffn.w1": 72}
    grown = net2net.widen(model, idx, widths=widths, split="random", seed=2, init="net2net")
    assert (grown.model.layers[0].attn.n_head, grown.model.layers[0].attn.n_kv_head) == (6, 3)
    assert_same_function(model, grown.model, idx)


NEW_CASES = [
    c
    for c in ZOO
    if c.name in LLAMA_PRESETS or c.name in TORCH_PRESETS  # the styles this file covers
]


@pytest.mark.parametrize("case", NEW_CASES, ids=[c.name for c in NEW_CASES])
def test_x2_exact_and_x1_5_refused_by_the_norms_or_exact(case: Case) -> None:
    """Every style grows ×2 exactly (stream, heads, FFN). ×1.5 is refused by the norms over the
    stream, naming them; the groups no norm constrains grow ×1.5 exactly."""
    model, x = build(case)
    groups = net2net.width_groups(model, x)
    grown = net2net.widen(model, x, factor=2.0)
    assert set(grown.widths) == {g.name for g in groups}
    assert_same_function(model, grown.model, x)
    with pytest.raises(net2net.GrowthError, match=r"norm '.*' normalises over group"):
        net2net.widen(model, x, factor=1.5)
    constrained = {g.name for g in groups if g.integer_factor}
    free = [g for g in groups if not g.integer_factor and not set(g.grows_with) & constrained]
    assert free, "heads or FFN grow at any width"
    widths = {g.name: -(-(3 * g.width // 2) // g.multiple_of) * g.multiple_of for g in free}
    grown = net2net.widen(model, x, widths=widths)
    assert_same_function(model, grown.model, x)


@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention_grows_its_heads_with_the_stream(batch_first: bool) -> None:
    model, idx = build(next(c for c in ZOO if c.name == "torch_mha"))
    if not batch_first:
        model, idx = build(next(c for c in ZOO if c.name == "torch_mha_seq_first"))
    groups = {g.name: g for g in net2net.width_groups(model, idx)}
    heads = groups["blocks.0.attn"]
    assert heads.width == 2 and heads.producers == ("blocks.0.attn",)
    assert heads.consumers == ("blocks.0.attn.out_proj",)
    assert "tok" in heads.grows_with  # embed_dim is both the input width and the heads' width
    with pytest.raises(net2net.GrowthError, match="must grow by the same factor as"):
        net2net.widen(model, idx, widths={"blocks.0.attn": 4})
    grown = net2net.widen(model, idx, factor=2.0)
    attn = grown.model.blocks[0].attn
    assert (attn.embed_dim, attn.num_heads, attn.head_dim) == (64, 4, 16)
    assert attn.in_proj_weight.shape == (192, 64) and attn.out_proj.weight.shape == (64, 64)
    assert_same_function(model, grown.model, idx)


def test_multihead_attention_with_kdim_is_refused_by_name() -> None:
    class Cross(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(6, 8)
            self.attn = nn.MultiheadAttention(8, 2, kdim=5, vdim=5, batch_first=True)
            self.head = nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.fc(x)
            out: torch.Tensor = self.head(self.attn(h, x[..., :5], x[..., :5])[0])
            return out

    torch.manual_seed(0)
    model, x = Cross(), torch.randn(2, 4, 6)
    with pytest.raises(net2net.GrowthError) as info:
        net2net.widen(model, x, widths={"fc": 16})
    assert "module 'attn' (MultiheadAttention) with kdim/vdim" in str(info.value)
    assert "F.scaled_dot_product_attention" in str(info.value)


@pytest.mark.parametrize("name", ["encoder_classifier", "encoder_classifier_post_norm_seq_first"])
def test_cls_token_and_learned_positions_grow_with_the_stream(name: str) -> None:
    model, idx = build(next(c for c in ZOO if c.name == name))
    assert (idx == 0).any()  # the padding mask is in use
    stream = {g.name: g for g in net2net.width_groups(model, idx)}["tok"]
    assert "" in stream.norms  # the model's own parameters: the CLS token and the positions
    grown = net2net.widen(model, idx, factor=2.0)
    cls, pos = grown.model.cls, grown.model.pos
    assert cls.shape == (1, 1, 64) and pos.shape == (1, 13, 64)
    g = grown.mappings["tok"]
    torch.testing.assert_close(cls[..., g], cls)  # new channels copy their sources
    assert grown.model.encoder.layers[0].self_attn.num_heads == 4
    assert_same_function(model, grown.model, idx)


def test_a_parameter_used_elsewhere_too_keeps_the_group() -> None:
    """A scale that meets the stream elementwise and is also read by a matmul cannot grow: the
    stream keeps its width, with the reason."""

    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 6)
            self.scale = nn.Parameter(torch.rand(6))
            self.head = nn.Linear(6, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.fc(x) * self.scale
            out: torch.Tensor = self.head(h) + (self.scale @ self.scale)
            return out

    torch.manual_seed(0)
    model, x = Scaled(), torch.randn(3, 4)
    assert "fc" not in {g.name for g in net2net.width_groups(model, x)}
    with pytest.raises(net2net.GrowthError, match="parameter 'scale' grows with group 'fc', but"):
        net2net.widen(model, x, widths={"fc": 12})


def test_a_parameter_used_only_on_the_group_grows_with_it() -> None:
    class Gain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 6)
            self.gain = nn.Parameter(torch.rand(1, 6) + 0.5)
            self.head = nn.Linear(6, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.head(torch.tanh(self.fc(x) * self.gain))
            return out

    torch.manual_seed(0)
    model, x = Gain(), torch.randn(3, 4)
    grown = net2net.widen(model, x, widths={"fc": 9}, split="random", init="net2net")
    assert grown.model.gain.shape == (1, 9)
    assert_same_function(model, grown.model, x)


def test_multihead_attention_on_a_fixed_input_keeps_its_heads() -> None:
    """embed_dim is the input's width too: on the model input the heads cannot grow, and the
    refusal names the module."""

    class OnInput(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.head = nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.head(self.attn(x, x, x, need_weights=False)[0])
            return out

    torch.manual_seed(0)
    model, x = OnInput(), torch.randn(2, 5, 8)
    with pytest.raises(
        net2net.GrowthError,
        match="module 'attn' needs group 'attn' to grow by the same factor as a fixed",
    ):
        net2net.widen(model, x, widths={"attn": 4})
    grown = net2net.widen(model, x, widths={"attn.out_proj": 16})  # its output still grows
    assert_same_function(model, grown.model, x)


class TorchTransformer(nn.Module):
    """Source then target tokens in one input; ``stack`` builds the model from
    nn.TransformerEncoder and nn.TransformerDecoder, otherwise from nn.Transformer."""

    def __init__(self, stack: bool) -> None:
        super().__init__()
        self.tok = nn.Embedding(30, 16)
        kw = {"dropout": 0.0, "batch_first": True}
        self.tr: nn.Module
        if stack:
            enc = nn.TransformerEncoderLayer(16, 2, 24, **kw)  # type: ignore[arg-type]
            dec = nn.TransformerDecoderLayer(16, 2, 24, **kw)  # type: ignore[arg-type]
            self.tr = nn.ModuleDict(
                {
                    "encoder": nn.TransformerEncoder(enc, 2, enable_nested_tensor=False),
                    "decoder": nn.TransformerDecoder(dec, 2, norm=nn.LayerNorm(16)),
                }
            )
        else:
            self.tr = nn.Transformer(16, 2, 1, 1, 24, **kw)  # type: ignore[arg-type]
        self.head = nn.Linear(16, 30)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        src, tgt = idx.chunk(2, dim=1)
        s, t = self.tok(src), self.tok(tgt)
        mask = nn.Transformer.generate_square_subsequent_mask(tgt.size(1))
        if isinstance(self.tr, nn.Transformer):
            y = self.tr(s, t, tgt_mask=mask)
        else:
            y = self.tr["decoder"](t, self.tr["encoder"](s), tgt_mask=mask)
        out: torch.Tensor = self.head(y)
        return out


def test_encoder_and_decoder_stacks_grow_x2() -> None:
    torch.manual_seed(0)
    model, idx = TorchTransformer(stack=True), torch.randint(0, 30, (2, 10))
    grown = net2net.widen(model, idx, factor=2.0)
    assert grown.model.tr["decoder"].layers[1].multihead_attn.num_heads == 4
    assert_same_function(model, grown.model, idx)


def test_nn_transformer_is_refused_by_name() -> None:
    torch.manual_seed(0)
    model, idx = TorchTransformer(stack=False), torch.randint(0, 30, (2, 10))
    with pytest.raises(net2net.GrowthError) as info:
        net2net.widen(model, idx, widths={"tok": 32})
    assert "module 'tr' (Transformer)" in str(info.value)
    assert "nn.TransformerEncoder and nn.TransformerDecoder" in str(info.value)


@pytest.mark.parametrize("preset", ["nanogpt_layernorm", "llama_f_rms_norm"])
def test_functional_norms_with_their_own_weights_are_norms_of_the_stream(preset: str) -> None:
    """nanoGPT's LayerNorm class (F.layer_norm(x, self.weight.shape, self.weight, self.bias)) and
    F.rms_norm with the module's weight: integer factors, weight and bias tiled."""
    model, idx = tiny(preset)
    stream = {g.name: g for g in net2net.width_groups(model, idx)}["tok"]
    assert "layers.0.attn_norm" in stream.integer_factor_norms
    assert "layers.0.attn_norm" in stream.norms
    grown = net2net.widen(model, idx, factor=3.0)
    norm = grown.model.layers[0].attn_norm
    assert norm.weight.shape == (144,)
    if getattr(norm, "bias", None) is not None:
        torch.testing.assert_close(norm.bias[grown.mappings["tok"]], norm.bias)
    assert_same_function(model, grown.model, idx)


def test_encoder_classifier_with_an_additive_padding_mask_grows_x2() -> None:
    torch.manual_seed(0)
    model = randomize_norms(EncoderClassifier(TorchConfig(additive_mask=True)))
    idx = torch.randint(1, 40, (3, 12))
    idx[1, 5:] = 0
    grown = net2net.widen(model, idx, factor=2.0)
    assert grown.model.cls.shape == (1, 1, 64)
    assert_same_function(model, grown.model, idx)


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("batch_first", [True, False])
def test_torch_encoder_and_decoder_layers_grow_x2(norm_first: bool, batch_first: bool) -> None:
    torch.manual_seed(0)
    model = randomize_norms(Seq2Seq(TorchConfig(norm_first=norm_first, batch_first=batch_first)))
    idx = torch.randint(0, 40, (2, 12))
    groups = {g.name: g for g in net2net.width_groups(model, idx)}
    assert {"enc.self_attn", "dec.self_attn", "dec.multihead_attn"} <= set(groups["tok"].grows_with)
    grown = net2net.widen(model, idx, factor=2.0)
    assert grown.model.dec.multihead_attn.num_heads == 4
    assert grown.model.dec.norm3.normalized_shape == (64,)
    assert_same_function(model, grown.model, idx)


class Tagger(nn.Module):
    """A token tagger on nn.TransformerEncoder with nested tensors (the default): in eval mode
    its fast path returns zeros at padded positions, which the traced slow path does not."""

    def __init__(self) -> None:
        super().__init__()
        self.tok = nn.Embedding(30, 16)
        layer = nn.TransformerEncoderLayer(16, 2, 24, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2)
        self.head = nn.Linear(16, 5)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.enc(self.tok(idx), src_key_padding_mask=idx == 0))
        return out


def test_verification_compares_with_torchs_own_forward_at_padded_positions() -> None:
    torch.manual_seed(0)
    model, idx = Tagger(), torch.randint(1, 30, (3, 10))
    idx[0, 6:] = 0
    grown = net2net.widen(model, idx, factor=2.0)
    err = assert_same_function(model, grown.model, idx)
    assert grown.max_abs_error == pytest.approx(err, abs=1e-7)
