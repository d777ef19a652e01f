"""Deepening a transformer by a whole block: a copy of a pre-norm block with its output
projections at zero is the identity, learns, replays and carries AdamW state; stacking a plain
copy is labelled inexact; a post-norm block is refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import net2net

from .test_transformers import assert_same_function, logits, tiny_gpt
from .transformer_zoo import GPT, EncoderClassifier, Llama, TorchConfig, TorchMHALM
from .zoo import PreLNMLP, assert_unchanged, snapshot

LAST = "transformer.h.1"


def _adamw(model: nn.Module) -> torch.optim.AdamW:
    """nanoGPT's two param groups: weight decay on matrices, none on biases and gains."""
    params = list(model.parameters())
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-3,
    )


def _train(model: nn.Module, opt: torch.optim.Optimizer, idx: torch.Tensor, steps: int) -> None:
    model.train()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        out = model(idx[:, :-1])
        nn.functional.cross_entropy(out.flatten(0, 1), idx[:, 1:].flatten()).backward()
        opt.step()


@pytest.mark.parametrize(("after", "inserted"), [("transformer.h.0", 1), (LAST, 2)])
def test_block_is_the_identity_and_learns(after: str, inserted: int) -> None:
    model, idx = tiny_gpt()
    snap = snapshot(model)
    grown = net2net.deepen(model, idx, after=after, style="block")
    assert_unchanged(model, snap)
    err = assert_same_function(model, grown.model, idx)
    assert grown.max_abs_error == pytest.approx(err, abs=1e-7)
    assert grown.exact and grown.record["exact"] is True
    gpt = grown.model
    assert isinstance(gpt, GPT)
    assert len(gpt.transformer.h) == 3 and gpt.config.n_layer == 3
    assert model.config.n_layer == 2  # the teacher's config is its own
    assert grown.record["attributes"] == {"config.n_layer": [2, 3]}
    assert gpt.lm_head.weight is gpt.transformer.wte.weight  # the tie survives
    new = gpt.transformer.h[inserted]
    zeroed = [new.attn.c_proj, new.mlp.c_proj]
    assert grown.record["zeroed"] == [
        f"transformer.h.{inserted}.attn.c_proj",
        f"transformer.h.{inserted}.mlp.c_proj",
    ]
    for layer in zeroed:
        assert float(layer.weight.detach().abs().max()) == 0.0
        assert float(layer.bias.detach().abs().max()) == 0.0
    old = model.transformer.h[inserted - 1]
    torch.testing.assert_close(new.attn.c_attn.weight, old.attn.c_attn.weight)  # copied
    gpt.train()
    gpt(idx).square().mean().backward()
    for layer in zeroed:  # the zero projections get a gradient at once: the block learns
        assert layer.weight.grad is not None and float(layer.weight.grad.abs().max()) > 0


def test_names_after_the_insertion_are_renumbered() -> None:
    model, idx = tiny_gpt()
    grown = net2net.deepen(model, idx, after="transformer.h.0", style="block")
    assert grown.record["inserted"] == "transformer.h.1"
    assert grown.record["renamed"] == {"transformer.h.1": "transformer.h.2"}
    sources = grown.param_sources
    assert sources["transformer.h.2.attn.c_attn.weight"] == "transformer.h.1.attn.c_attn.weight"
    assert sources["transformer.h.0.ln_1.weight"] == "transformer.h.0.ln_1.weight"
    assert sources["transformer.h.1.mlp.c_fc.weight"] is None
    assert "transformer.h.1.mlp.c_fc.weight" in grown.new_param_names


@pytest.mark.parametrize("style", ["block", "stack"])
def test_replay_reproduces_the_deeper_model(style: str) -> None:
    model, idx = tiny_gpt()
    grown = net2net.deepen(model, idx, after="transformer.h.0", style=style)
    rebuilt = net2net.replay(model, [grown.record])
    want, got = grown.model.state_dict(), rebuilt.state_dict()
    assert list(got) == list(want)
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=0)
    assert isinstance(rebuilt, GPT) and rebuilt.config.n_layer == 3


def test_deepen_then_widen_composes_and_replays() -> None:
    model, idx = tiny_gpt()
    deeper = net2net.deepen(model, idx, after=LAST, style="block")
    wider = net2net.widen(deeper.model, idx, factor=2, seed=1)
    assert_same_function(model, wider.model, idx)
    rebuilt = net2net.replay(model, [deeper.record, wider.record])
    for name, value in wider.model.state_dict().items():
        torch.testing.assert_close(rebuilt.state_dict()[name], value, rtol=0, atol=0)


def test_adamw_state_carries_over_and_new_block_starts_empty() -> None:
    model, idx = tiny_gpt()
    opt = _adamw(model)
    _train(model, opt, idx, 3)
    grown = net2net.deepen(model, idx, after="transformer.h.0", style="block")
    new_opt = net2net.transfer_optimizer(opt, model, grown)
    assert isinstance(new_opt, torch.optim.AdamW)
    old_params = dict(model.named_parameters())
    new_params = dict(grown.model.named_parameters())
    for name, p in new_params.items():
        src = grown.param_sources[name]
        if src is None:
            assert p not in new_opt.state  # the new block starts with no state
            continue
        old_state, new_state = opt.state[old_params[src]], new_opt.state[p]
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(new_state[key], old_state[key], rtol=0, atol=0)
        assert float(new_state["step"]) == 3.0
    group_of = {id(p): gi for gi, g in enumerate(new_opt.param_groups) for p in g["params"]}
    for name in grown.new_param_names:  # each new parameter joins its counterpart's group
        counterpart = new_params[name.replace("transformer.h.1.", "transformer.h.0.", 1)]
        assert group_of[id(new_params[name])] == group_of[id(counterpart)]
    # round trip: the state dict loads into a fresh AdamW over the grown model and steps alike
    fresh = _adamw(grown.model)
    fresh.load_state_dict(new_opt.state_dict())
    assert len(fresh.state) == len(new_opt.state)
    _train(grown.model, new_opt, idx, 2)
    assert all(p in new_opt.state for p in grown.model.parameters())


def test_stacking_is_labelled_not_exact() -> None:
    model, idx = tiny_gpt()
    grown = net2net.deepen(model, idx, after="transformer.h.0", style="stack")
    assert grown.record["exact"] is False and not grown.exact
    assert grown.record["zeroed"] == []
    err = float((logits(grown.model, idx) - logits(model, idx)).abs().max())
    assert grown.max_abs_error == pytest.approx(err, rel=1e-6)
    assert err > 1e-3  # reported, not hidden
    for name, p in grown.model.transformer.h[1].named_parameters():
        torch.testing.assert_close(p, model.transformer.h[0].get_parameter(name), rtol=0, atol=0)


class PostNormBlock(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.fc = nn.Linear(d, d)
        self.ln = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(x + self.fc(x))


class PostNormNet(nn.Module):
    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.embed = nn.Linear(4, d)
        self.blocks = nn.ModuleList([PostNormBlock(d), PostNormBlock(d)])
        self.head = nn.Linear(d, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def test_post_norm_block_is_refused() -> None:
    model, x = PostNormNet(), torch.randn(3, 4)
    snap = snapshot(model)
    with pytest.raises(net2net.GrowthError) as info:
        net2net.deepen(model, x, after="blocks.0", style="block")
    msg = str(info.value)
    for fragment in ("post-norm", "'blocks.0.ln' (LayerNorm)", "use pre-norm blocks", "'stack'"):
        assert fragment in msg
    assert_unchanged(model, snap)
    stacked = net2net.deepen(model, x, after="blocks.0", style="stack")  # allowed, inexact
    assert not stacked.exact and len(stacked.model.blocks) == 3


def test_block_style_needs_a_block_of_a_list() -> None:
    model, idx = tiny_gpt()
    with pytest.raises(net2net.GrowthError, match=r"nn\.ModuleList or nn\.Sequential"):
        net2net.deepen(model, idx, after="transformer.h.0.attn", style="block")
    x = torch.randn(3, 4)
    plain = nn.Sequential(
        nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 4), nn.ReLU()), nn.Linear(4, 2)
    )
    with pytest.raises(net2net.GrowthError, match="not in a residual add"):
        net2net.deepen(plain, x, after="1", style="block")
    with pytest.raises(net2net.GrowthError, match="a single layer, not a block"):
        net2net.deepen(plain, x, after="2", style="stack")


def test_summary_predicts_the_block_styles() -> None:
    model, idx = tiny_gpt()
    summary = net2net.summarize(model, idx)
    for style in ("block", "stack"):
        grown = net2net.deepen(model, idx, after=LAST, style=style)
        assert net2net.predict_param_count(
            summary, deepen_after=LAST, style=style
        ) == net2net.count_params(grown.model)
    with pytest.raises(net2net.GrowthError, match="not a block of an"):
        net2net.predict_param_count(summary, deepen_after="transformer.h.0.mlp.gelu", style="block")
    post = net2net.summarize(PostNormNet(), torch.randn(3, 4))
    with pytest.raises(net2net.GrowthError, match="style='block' is not exact"):
        net2net.predict_param_count(post, deepen_after="blocks.1", style="block")


@pytest.mark.parametrize(
    ("build", "after", "zeroed"),
    [
        (Llama, "layers.0", ["layers.1.attn.o_proj", "layers.1.ffn.w2"]),
        (TorchMHALM, "blocks.1", ["blocks.2.attn.out_proj", "blocks.2.proj"]),
        (
            EncoderClassifier,
            "encoder.layers.0",
            ["encoder.layers.1.self_attn.out_proj", "encoder.layers.1.linear2"],
        ),
    ],
)
def test_other_pre_norm_blocks_are_deepened_exactly(
    build: type[nn.Module], after: str, zeroed: list[str]
) -> None:
    """Llama (RMSNorm, SwiGLU, rotary), nn.MultiheadAttention (its out_proj is zeroed) and
    nn.TransformerEncoderLayer(norm_first=True)."""
    torch.manual_seed(0)
    model = build()
    idx = torch.randint(1, 16, (2, 8), generator=torch.Generator().manual_seed(1))
    grown = net2net.deepen(model, idx, after=after, style="block")
    assert grown.record["zeroed"] == zeroed
    assert_same_function(model, grown.model, idx)
    rebuilt = net2net.replay(model, [grown.record])
    assert [n for n, _ in rebuilt.named_parameters()] == [
        n for n, _ in grown.model.named_parameters()
    ]


def test_post_norm_encoder_layer_is_refused() -> None:
    model = EncoderClassifier(TorchConfig(norm_first=False))
    idx = torch.randint(1, 16, (2, 8))
    with pytest.raises(
        net2net.GrowthError,
        match=r"'encoder\.layers\.0\.norm2' \(LayerNorm\) after its residual add \(post-norm",
    ):
        net2net.deepen(model, idx, after="encoder.layers.0", style="block")


def test_a_block_of_a_sequential_gets_a_sibling_and_no_rename() -> None:
    torch.manual_seed(0)
    model, x = PreLNMLP(), torch.randn(4, 6)
    grown = net2net.deepen(model, x, after="blocks.0", style="block")
    assert grown.record["inserted"] == "blocks.0_deep" and grown.record["renamed"] == {}
    assert grown.record["zeroed"] == ["blocks.0_deep.fc2"]
    assert grown.max_abs_error == 0.0
    assert [name for name, _ in grown.model.blocks.named_children()] == ["0", "0_deep", "1"]


@pytest.mark.parametrize("after", ["transformer.h.0", LAST])
def test_the_default_style_inserts_a_block_after_a_pre_norm_block(after: str) -> None:
    model, idx = tiny_gpt()
    summary = net2net.summarize(model, idx)
    grown = net2net.deepen(model, idx, after=after)  # no style: "auto"
    assert grown.record["style"] == "block"  # the resolved style, so replay needs no guess
    assert grown.exact and grown.record["exact"] is True
    assert_same_function(model, grown.model, idx)
    gpt = grown.model
    assert isinstance(gpt, GPT)
    assert len(gpt.transformer.h) == 3 and gpt.config.n_layer == 3
    assert net2net.predict_param_count(summary, deepen_after=after) == net2net.count_params(gpt)
    rebuilt = net2net.replay(model, [grown.record])
    for name, value in gpt.state_dict().items():
        torch.testing.assert_close(rebuilt.state_dict()[name], value, rtol=0, atol=0)


def test_the_default_style_keeps_one_identity_layer_elsewhere() -> None:
    """After a layer (an MLP's ReLU), a layer inside a block, or a post-norm block (which
    style="block" refuses), the default is one identity layer, as it always was."""
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(3, 4)
    grown = net2net.deepen(mlp, x, after="1")
    assert grown.record["style"] == "identity" and grown.record["inserted"] == "1_deep"
    assert isinstance(grown.model.get_submodule("1_deep.0"), nn.Linear)
    assert grown.max_abs_error == 0.0
    assert net2net.predict_param_count(
        net2net.summarize(mlp, x), deepen_after="1"
    ) == net2net.count_params(grown.model)
    model, idx = tiny_gpt()
    inside = net2net.deepen(model, idx, after="transformer.h.0.mlp.c_fc")
    assert inside.record["style"] == "identity" and inside.model.config.n_layer == 2
    post = PostNormNet()
    wrapped = net2net.deepen(post, x, after="blocks.0")
    assert wrapped.record["style"] == "identity" and len(wrapped.model.blocks) == 2
    assert wrapped.record["inserted"] == "blocks.0.1"
