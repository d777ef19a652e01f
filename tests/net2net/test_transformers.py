"""A nanoGPT-style causal LM grows exactly: the residual stream, the attention heads (head size
fixed, n_head updated) and the MLPs, alone and together, with the tied LM head kept tied."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

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


@pytest.fixture(params=["sdpa", "manual", "masked"])
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
    grown = net2net.widen(model, idx, widths={HEADS[0]: 4}, init="net2net")
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


def test_residual_stream_is_one_group() -> None:
    model, idx = tiny_gpt()
    stream = {g.name: g for g in net2net.width_groups(model, idx)}[STREAM]
    assert stream.width == 32
    assert set(stream.producers) == {
        "transformer.wte",
        "transformer.wpe",
        *(f"transformer.h.{i}.{m}.c_proj" for i in (0, 1) for m in ("attn", "mlp")),
    }
    assert set(stream.consumers) == {
        "lm_head",
        *(f"transformer.h.{i}.{m}" for i in (0, 1) for m in ("attn.c_attn", "mlp.c_fc")),
    }
    assert set(stream.norms) == {
        "transformer.ln_f",
        *(f"transformer.h.{i}.ln_{j}" for i in (0, 1) for j in (1, 2)),
    }
    assert stream.integer_factor


def test_stream_alone_x2_keeps_the_tie(attention: str) -> None:
    model, idx = tiny_gpt(attention)
    snap = snapshot(model)
    grown = net2net.widen(model, idx, widths={STREAM: 64}, init="net2net")
    assert_unchanged(model, snap)
    assert_same_function(model, grown.model, idx)
    g = grown.model
    assert g.lm_head.weight is g.transformer.wte.weight  # still one parameter
    assert g.transformer.wte.weight.shape == (65, 64)
    assert len(list(g.parameters())) == len(list(model.parameters()))
    assert grown.record["ties"] == [
        {
            "params": ["transformer.wte.weight", "lm_head.weight"],
            "kept": True,
            "split_scaled_in": "transformer.ln_f",
        }
    ]
    # copies everywhere on the stream; the split moved into ln_f (×1/2 at factor 2)
    src = grown.mappings[STREAM]
    torch.testing.assert_close(g.transformer.wte.weight[:, 32:], model.lm_head.weight[:, src[32:]])
    torch.testing.assert_close(g.transformer.ln_f.weight, model.transformer.ln_f.weight[src] / 2)
    ln1 = g.transformer.h[0].ln_1.weight
    torch.testing.assert_close(ln1, model.transformer.h[0].ln_1.weight[src])
    assert g.transformer.h[0].attn.n_head == 2


def test_all_groups_x2_doubles_the_heads(attention: str) -> None:
    model, idx = tiny_gpt(attention)
    groups = net2net.width_groups(model, idx)
    grown = net2net.widen(model, idx, factor=2)
    err = assert_same_function(model, grown.model, idx)
    assert grown.exact and grown.max_abs_error == pytest.approx(err, abs=1e-7)
    assert grown.widths == {g.name: (g.width, 2 * g.width) for g in groups}
    for old, new in zip(model.transformer.h, grown.model.transformer.h, strict=True):
        assert new.attn.n_head == 2 * old.attn.n_head == 4
        assert new.attn.n_embd // new.attn.n_head == old.attn.n_embd // old.attn.n_head == 16
    assert grown.model.lm_head.weight is grown.model.transformer.wte.weight
    assert grown.model.transformer.wpe.weight.shape == (16, 64)


@pytest.mark.parametrize("init", ["copy_zero", "random_zero"])
def test_zero_outgoing_modes_are_exact(init: str) -> None:
    model, idx = tiny_gpt()
    grown = net2net.widen(model, idx, factor=2, init=init, seed=3)
    assert grown.exact
    assert_same_function(model, grown.model, idx)
    assert grown.model.lm_head.weight is grown.model.transformer.wte.weight


def test_random_split_is_exact() -> None:
    model, idx = tiny_gpt()
    grown = net2net.widen(model, idx, factor=3, split="random", seed=2, init="net2net")
    assert_same_function(model, grown.model, idx)
    assert grown.model.transformer.h[0].attn.n_head == 6


def test_stream_x1_5_is_refused_with_the_norms_named() -> None:
    model, idx = tiny_gpt()
    snap = snapshot(model)
    for call in (
        lambda: net2net.widen(model, idx, factor=1.5),
        lambda: net2net.widen(model, idx, widths={STREAM: 48}),
    ):
        with pytest.raises(net2net.GrowthError) as info:
            call()
        msg = str(info.value)
        assert "norm 'transformer.h.0.ln_1'" in msg and "norm 'transformer.ln_f'" in msg
        assert f"group '{STREAM}' (width 32)" in msg
        assert "integer factor" in msg or "a multiple of 32 (e.g. 64), not 48" in msg
    assert_unchanged(model, snap)
    grown = net2net.widen(model, idx, widths={STREAM: 96})  # ×3 is exact
    assert_same_function(model, grown.model, idx)


class NoNormHead(GPT):
    """The tied head reads the stream without a final norm: the tie cannot be kept exactly."""

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        _, t = idx.size()
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x)
        out: torch.Tensor = self.lm_head(x)
        return out


def test_a_tie_without_a_norm_before_the_head_is_named() -> None:
    torch.manual_seed(0)
    model, idx = NoNormHead(), torch.randint(0, 65, (2, 8))
    assert STREAM not in {g.name for g in net2net.width_groups(model, idx)}
    with pytest.raises(net2net.GrowthError) as info:
        net2net.widen(model, idx, widths={STREAM: 64})
    msg = str(info.value)
    assert "parameter 'lm_head.weight' is tied to 'transformer.wte.weight'" in msg
    assert "untie the weights or add such a norm" in msg
    net2net.widen(model, idx, factor=2)  # the other groups still grow


def test_untied_gpt_grows_too() -> None:
    model, idx = tiny_gpt()
    model.lm_head.weight = nn.Parameter(model.lm_head.weight.detach().clone())
    grown = net2net.widen(model, idx, factor=2)
    assert "ties" not in grown.record
    assert_same_function(model, grown.model, idx)
    assert grown.model.lm_head.weight is not grown.model.transformer.wte.weight


def test_replay_rebuilds_the_grown_gpt() -> None:
    model, idx = tiny_gpt()
    grown = net2net.widen(model, idx, factor=2, seed=4)
    rebuilt = net2net.replay(model, [grown.record])
    assert rebuilt.transformer.h[0].attn.n_head == 4
    assert rebuilt.lm_head.weight is rebuilt.transformer.wte.weight
    for name, value in rebuilt.state_dict().items():
        torch.testing.assert_close(value, grown.model.state_dict()[name], rtol=0, atol=0)


def test_grown_gpt_trains_with_the_carried_optimizer() -> None:
    model, idx = tiny_gpt()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = nn.functional.cross_entropy(model(idx).flatten(0, 1), idx.flatten())
    loss.backward()
    opt.step()
    grown = net2net.widen(model, idx, factor=2)
    new_opt = net2net.transfer_optimizer(opt, model, grown)
    student = grown.model
    losses = []
    for _ in range(5):
        new_opt.zero_grad()
        loss = nn.functional.cross_entropy(student(idx).flatten(0, 1), idx.flatten())
        loss.backward()
        new_opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_nanogpt_code_links_the_stream_and_the_heads() -> None:
    """nanoGPT's forward computes the head size as C // n_head from the stream's width C: the
    stream and every block's heads are listed as growing together, and grow exactly so."""
    model, idx = tiny_gpt("nanogpt")
    groups = {g.name: g for g in net2net.width_groups(model, idx)}
    assert set(groups[STREAM].grows_with) == set(HEADS)
    assert set(groups[HEADS[0]].grows_with) == {STREAM, HEADS[1]}
    assert groups[MLPS[0]].grows_with == ()
    assert "grows by the same factor as" in str(groups[STREAM])
    summary = net2net.summarize(model, idx)
    for call in (
        lambda: net2net.widen(model, idx, widths={STREAM: 64}),
        lambda: net2net.widen(model, idx, widths={HEADS[0]: 4}),
        lambda: net2net.predict_param_count(summary, widths={STREAM: 64}),
    ):
        with pytest.raises(net2net.GrowthError) as info:
            call()
        assert "must grow by the same factor as" in str(info.value)
        assert "C // self.n_head" in str(info.value)
    widths = {STREAM: 64, **dict.fromkeys(HEADS, 4)}
    grown = net2net.widen(model, idx, widths=widths)
    assert_same_function(model, grown.model, idx)
    assert net2net.predict_param_count(summary, widths=widths) == net2net.count_params(grown.model)
    grown = net2net.widen(model, idx, factor=2)
    assert_same_function(model, grown.model, idx)
    assert grown.model.transformer.h[0].attn.n_head == 4
    assert net2net.widen(model, idx, widths=dict.fromkeys(MLPS, 200)).exact


class CutInsideAHead(GPT):
    """Drops the first 8 channels of the attention output (head size 16): a cut inside a head."""

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.transformer.wte(idx)
        attn = self.transformer.h[0].attn
        b, t, _ = x.size()
        q, k, v = attn.c_attn(x).split(attn.n_embd, dim=2)
        q, k, v = (z.view(b, t, attn.n_head, 16).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, attn.n_embd)
        y = torch.cat([y[..., 8:], y[..., :8]], dim=-1)
        out: torch.Tensor = self.lm_head(self.transformer.ln_f(x + attn.c_proj(y)))
        return out


def test_a_cut_inside_a_head_is_named() -> None:
    torch.manual_seed(0)
    model, idx = CutInsideAHead(), torch.randint(0, 65, (2, 8))
    assert HEADS[0] not in {g.name for g in net2net.width_groups(model, idx)}
    with pytest.raises(net2net.GrowthError) as info:
        net2net.widen(model, idx, widths={HEADS[0]: 4})
    assert "cuts the channels of group 'transformer.h.0.attn.c_attn' inside a unit" in str(
        info.value
    )


class TwoHalves(nn.Module):
    """One projection chunked into two halves that feed different layers."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 16)
        self.a = nn.Linear(8, 3)
        self.b = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, q = self.fc(x).chunk(2, dim=-1)
        out: torch.Tensor = self.a(torch.relu(p)) + self.b(torch.tanh(q))
        return out


def test_equal_chunks_grow_together() -> None:
    torch.manual_seed(0)
    model, x = TwoHalves(), torch.randn(5, 4)
    groups = {g.name: g for g in net2net.width_groups(model, x)}
    assert groups["fc[0]"].grows_with == ("fc[1]",) and groups["fc[0]"].consumers == ("a",)
    assert groups["fc[1]"].grows_with == ("fc[0]",) and groups["fc[1]"].consumers == ("b",)
    with pytest.raises(net2net.GrowthError, match="must grow by the same factor as 'fc\\[1\\]'"):
        net2net.widen(model, x, widths={"fc[0]": 12})
    grown = net2net.widen(model, x, widths={"fc[0]": 12, "fc[1]": 12})
    assert grown.model.fc.out_features == 24
    assert_same_function(model, grown.model, x)
