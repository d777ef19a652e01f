"""The ``gpt`` family: the language-modelling task spec, the model's shape and options, and
net2net growth of a built model (every width group and a block deepened, outputs preserved)."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

import net2net
from tests.net2net.zoo import randomize_norms
from workers.gpt import GPT
from workers.models import (
    ModelSpecError,
    build_model,
    count_parameters,
    estimate_param_count,
    families,
)
from workers.spec import ModelSpec, TaskSpec

TASK = TaskSpec(kind="language_modeling", context_length=16)
TOL = 1e-5  # max abs error of the logits, float32


def small(**options: object) -> ModelSpec:
    return ModelSpec.model_validate(
        {"family": "gpt", "n_layer": 2, "n_head": 2, "d_model": 32, **options}
    )


def built(spec: ModelSpec, task: TaskSpec = TASK, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    model = randomize_norms(build_model(spec, task), seed).eval()
    idx = torch.randint(0, task.output_dim, (3, task.context_length))
    return model, idx


def logits(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out: torch.Tensor = model.eval()(idx)
    return out


# -- the task ---------------------------------------------------------------------------------


def test_language_modeling_task_defaults_and_properties() -> None:
    task = TaskSpec(kind="language_modeling")
    assert task.tokenizer == "bytes" and task.context_length == 256
    assert task.input_shape == (256,) and task.output_dim == 256
    assert task.metric_name == "perplexity" and task.higher_is_better is False
    ids = TaskSpec(kind="language_modeling", tokenizer="ids", vocab_size=50_000, context_length=8)
    assert ids.output_dim == 50_000 and ids.input_shape == (8,)
    assert TaskSpec.model_validate(ids.model_dump()) == ids  # a dump validates again
    assert TaskSpec.model_validate_json(ids.model_dump_json()) == ids
    flat = TaskSpec(kind="classification", input_shape=(4,), num_classes=3)
    assert flat.higher_is_better and TaskSpec.model_validate(flat.model_dump()) == flat
    assert TaskSpec(kind="regression", input_shape=(4,), num_outputs=1).higher_is_better is False


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"num_classes": 3}, "'num_classes' is not used by language_modeling"),
        ({"num_outputs": 3}, "'num_outputs' is not used by language_modeling"),
        ({"tokenizer": "ids"}, "tokenizer 'ids' needs 'vocab_size'"),
        ({"vocab_size": 300}, "vocab_size must be absent or 256, not 300"),
        ({"input_shape": [8]}, "language_modeling takes no input_shape"),
        ({"context_length": 1}, "context_length"),
        ({"context_length": 8193}, "context_length"),
        ({"tokenizer": "ids", "vocab_size": 1_000_001}, "vocab_size"),
        ({"tokenizer": "words"}, "tokenizer"),
    ],
)
def test_bad_language_modeling_tasks_are_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        TaskSpec.model_validate({"kind": "language_modeling", **fields})


def test_language_modeling_fields_are_refused_elsewhere() -> None:
    with pytest.raises(ValidationError, match="'context_length' is for language_modeling"):
        TaskSpec(kind="classification", input_shape=(4,), num_classes=3, context_length=8)
    with pytest.raises(ValidationError, match="'vocab_size' is for language_modeling"):
        TaskSpec(kind="regression", input_shape=(4,), num_outputs=1, vocab_size=8)


# -- the family --------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["layer", "rms"])
@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_forward_shape_causality_and_param_count(norm: str, positions: str) -> None:
    spec = small(norm=norm, positions=positions)
    model, idx = built(spec)
    out = logits(model, idx)
    assert out.shape == (3, 16, 256) and out.dtype == torch.float32
    # causal: changing the last token changes no earlier position's logits
    changed = idx.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 256
    torch.testing.assert_close(logits(model, changed)[:, :-1], out[:, :-1], rtol=0, atol=0)
    assert (logits(model, changed)[:, -1] - out[:, -1]).abs().max() > 1e-4
    assert estimate_param_count(spec, TASK) == count_parameters(model)
    assert model.head.weight is model.tok.weight  # tied by default
    assert hasattr(model, "pos") == (positions == "learned")


def test_options_change_the_model() -> None:
    model = build_model(small(tie_embeddings=False, bias=True, ffn_multiple=2), TASK)
    assert isinstance(model, GPT)
    assert model.head.weight is not model.tok.weight
    assert model.blocks[0].ffn.fc.out_features == 64
    assert model.blocks[0].attn.q_proj.bias is not None
    assert model.blocks[0].norm1.bias is not None
    assert model.blocks[0].attn.head_dim == 16 and model.blocks[0].attn.n_head == 2
    rms = build_model(small(norm="rms"), TASK)
    assert isinstance(rms.norm, nn.RMSNorm)
    no_bias = build_model(small(), TASK)
    assert no_bias.blocks[0].attn.q_proj.bias is None and no_bias.norm.bias is None
    ids = TaskSpec(kind="language_modeling", tokenizer="ids", vocab_size=1000, context_length=12)
    model = build_model(small(), ids)
    assert model.tok.num_embeddings == 1000 and model.pos.num_embeddings == 12
    assert "gpt" in families()


def test_dropout_is_active_in_train_mode_only() -> None:
    model, idx = built(small(dropout=0.5))
    model.train()
    a, b = model(idx), model(idx)
    assert (a - b).abs().max() > 1e-3
    torch.testing.assert_close(logits(model, idx), logits(model, idx), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("spec", "task", "message"),
    [
        (small(), TaskSpec(kind="classification", input_shape=(4,), num_classes=3), "needs task"),
        (small(n_head=3), TASK, "n_head 3 must divide d_model 32"),
        (ModelSpec(family="gpt", n_head=2, d_model=6, positions="rope"), TASK, "even head size"),
        (small(norm="batch"), TASK, "norm"),
        (small(heads=2), TASK, "unknown option 'heads'"),
        (small(dropout=1.0), TASK, "dropout"),
    ],
)
def test_bad_options_are_refused(spec: ModelSpec, task: TaskSpec, message: str) -> None:
    with pytest.raises(ModelSpecError, match=message):
        build_model(spec, task)


def test_learned_positions_are_bounded_by_the_context() -> None:
    model, _ = built(small())
    with pytest.raises(IndexError):
        model(torch.zeros(1, 17, dtype=torch.long))


# -- growth ------------------------------------------------------------------------------------


SLOW = pytest.mark.slow  # each variant traces and grows the model eight times


@pytest.mark.parametrize(
    ("norm", "positions"),
    [
        ("layer", "learned"),
        pytest.param("rms", "learned", marks=SLOW),
        pytest.param("layer", "rope", marks=SLOW),
        pytest.param("rms", "rope", marks=SLOW),
    ],
)
def test_each_group_widens_and_a_block_deepens_exactly(norm: str, positions: str) -> None:
    model, idx = built(small(norm=norm, positions=positions))
    before = logits(model, idx)
    groups = {g.name: g.width for g in net2net.width_groups(model, idx)}
    assert groups == {
        "tok": 32,
        "blocks.0.attn.q_proj": 2,
        "blocks.0.ffn.fc": 128,
        "blocks.1.attn.q_proj": 2,
        "blocks.1.ffn.fc": 128,
    }
    for name, width in groups.items():
        grown = net2net.widen(model, idx, widths={name: 2 * width})
        assert grown.exact, name
        torch.testing.assert_close(logits(grown.model, idx), before, rtol=0, atol=TOL)
        assert grown.model.head.weight is grown.model.tok.weight
    heads = net2net.widen(model, idx, widths={"blocks.1.attn.q_proj": 4}).model
    assert heads.blocks[1].attn.n_head == 4 and heads.blocks[1].attn.head_dim == 16
    deep = net2net.deepen(model, idx, after="blocks.0")
    assert deep.exact and deep.model.n_layer == 3 and len(deep.model.blocks) == 3
    assert deep.record["zeroed"] == ["blocks.1.attn.o_proj", "blocks.1.ffn.proj"]
    torch.testing.assert_close(logits(deep.model, idx), before, rtol=0, atol=TOL)
    both = net2net.widen(deep.model, idx, factor=2)
    torch.testing.assert_close(logits(both.model, idx), before, rtol=0, atol=TOL)


def test_untied_model_with_biases_grows_exactly() -> None:
    model, idx = built(small(tie_embeddings=False, bias=True))
    before = logits(model, idx)
    grown = net2net.widen(model, idx, factor=3)
    torch.testing.assert_close(logits(grown.model, idx), before, rtol=0, atol=TOL)
    deep = net2net.deepen(grown.model, idx, after="blocks.1")
    torch.testing.assert_close(logits(deep.model, idx), before, rtol=0, atol=TOL)
