"""Text in and out of a language model: the byte tokenizer, generation, scoring, token shards."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional

from workers.models import build_model
from workers.shards import ShardStore
from workers.spec import ModelSpec, TaskSpec
from workers.text import decode_tokens, encode_text, generate, score

TASK = TaskSpec(kind="language_modeling", context_length=8)
IDS = TaskSpec(kind="language_modeling", tokenizer="ids", vocab_size=50, context_length=8)


def tiny(task: TaskSpec = TASK, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    spec = ModelSpec.model_validate({"family": "gpt", "n_layer": 1, "n_head": 2, "d_model": 16})
    return build_model(spec, task)


def test_bytes_round_trip_and_invalid_utf8_is_replaced() -> None:
    ids = encode_text("héllo ✓", TASK)
    assert ids.dtype == np.int32
    assert ids.tolist() == list("héllo ✓".encode())
    assert decode_tokens(ids.tolist(), TASK) == "héllo ✓"
    assert decode_tokens([104, 0xC3], TASK) == "h\ufffd"
    assert decode_tokens([3, 14, 15], IDS) == "3 14 15"
    assert encode_text("", TASK).shape == (0,)


def test_tokenizer_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="tokenizer is 'ids': push token ids"):
        encode_text("hello", IDS)
    with pytest.raises(ValueError, match="not language_modeling"):
        encode_text("hello", TaskSpec(input_shape=(3,), num_classes=2))
    with pytest.raises(ValueError, match="cannot be encoded as UTF-8 at character 1"):
        encode_text("a\ud800", TASK)
    with pytest.raises(ValueError, match="token id 256 is outside the vocabulary"):
        decode_tokens([1, 256], TASK)
    with pytest.raises(ValueError, match="token id -1"):
        decode_tokens([-1], IDS)


def greedy_reference(model: nn.Module, prompt: list[int], n: int, context: int) -> list[int]:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            out = model(torch.tensor([ids[-context:]]))
            ids.append(int(out[0, -1].argmax()))
    return ids[len(prompt) :]


def test_generate_greedy_matches_a_reference_and_crops_the_context() -> None:
    model = tiny()
    model.train()
    prompt = encode_text("a prompt longer than the context", TASK).tolist()
    stream = generate(model, prompt, max_new_tokens=12, temperature=0.0, context_length=8)
    first = next(stream)
    assert not model.training  # eval mode while generating
    got = [first, *stream]
    assert model.training  # restored at the end
    model.eval()
    assert got == greedy_reference(model, prompt, 12, 8)
    assert all(0 <= i < 256 for i in got)


def test_generate_seeded_draws_are_deterministic_and_top_k_limits_them() -> None:
    model = tiny()
    kw = {"max_new_tokens": 20, "temperature": 1.0, "context_length": 8}
    a = list(generate(model, [1, 2, 3], seed=7, **kw))  # type: ignore[arg-type]
    b = list(generate(model, [1, 2, 3], seed=7, **kw))  # type: ignore[arg-type]
    c = list(generate(model, [1, 2, 3], seed=8, **kw))  # type: ignore[arg-type]
    assert a == b and a != c and len(a) == 20
    # top_k=1 is greedy whatever the temperature
    one = list(generate(model, [1, 2, 3], top_k=1, seed=1, **kw))  # type: ignore[arg-type]
    model.eval()
    assert one == greedy_reference(model, [1, 2, 3], 20, 8)
    assert list(generate(model, [1], max_new_tokens=0, context_length=8)) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompt_ids": []}, "at least 1 token"),
        ({"prompt_ids": [300]}, "token id 300 is outside the vocabulary"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": math.nan}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"max_new_tokens": -1}, "max_new_tokens"),
    ],
)
def test_generate_refuses_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"prompt_ids": [1], "max_new_tokens": 2, "context_length": 8}
    with pytest.raises(ValueError, match=message):
        list(generate(tiny(), **{**args, **kwargs}))  # type: ignore[arg-type]


def test_score_is_the_mean_next_token_loss_in_windows() -> None:
    model = tiny().eval()
    ids = list(range(3, 23))  # 20 ids: 19 predictions = windows of 8, 8 and 3
    loss, ppl = score(model, ids, context_length=8)
    seq = torch.tensor(ids)
    total = 0.0
    with torch.no_grad():
        for start in (0, 8, 16):
            window = seq[start : start + 9]
            out = model(window[None, :-1])[0]
            total += float(functional.cross_entropy(out, window[1:], reduction="sum"))
    assert loss == pytest.approx(total / 19, abs=1e-6)
    assert ppl == pytest.approx(math.exp(loss), rel=1e-9)
    short_loss, _ = score(model, ids[:5], context_length=8)  # one window shorter than the context
    with torch.no_grad():
        out = model(seq[None, :4])[0]
    expected = float(functional.cross_entropy(out, seq[1:5]))
    assert short_loss == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="at least 2 token"):
        score(model, [5], context_length=8)


def test_token_shards_round_trip(tmp_path: Path) -> None:
    store = ShardStore(str(tmp_path))
    tokens = np.arange(10, dtype=np.int32)
    offsets = np.array([0, 4, 10], dtype=np.int64)
    info = store.write_tokens("job", tokens, offsets, "train")
    assert info.num_samples == 10 and info.split == "train"
    got, got_offsets = store.read_tokens(info)
    np.testing.assert_array_equal(got, tokens)
    np.testing.assert_array_equal(got_offsets, offsets)
    assert got.dtype == np.int32 and got_offsets.dtype == np.int64
    with pytest.raises(ValueError, match="holds samples, not tokens"):
        sample = store.write("job", np.zeros((2, 3), np.float32), np.zeros(2, np.int64), "train")
        store.read_tokens(sample)
    (tmp_path / info.path).write_bytes(b"corrupt")
    with pytest.raises(OSError, match="corrupt"):
        store.read_tokens(info)


@pytest.mark.parametrize("offsets", [[0, 4], [1, 10], [0, 4, 4, 10], [0], [0, 11]], ids=str)
def test_token_shards_refuse_bad_offsets(tmp_path: Path, offsets: list[int]) -> None:
    store = ShardStore(str(tmp_path))
    with pytest.raises(ValueError, match="doc_offsets must rise strictly from 0"):
        store.write_tokens("job", np.arange(10, dtype=np.int32), np.array(offsets), "val")
    with pytest.raises(ValueError, match="at least one token"):
        store.write_tokens("job", np.zeros(0, dtype=np.int32), np.array([0]), "val")
    assert not (tmp_path / "job").exists() or not any((tmp_path / "job").rglob("*.safetensors"))
