"""The token reader (``workers.windows``), the language-modelling loss and evaluation
(``workers.tasks``) and a gpt's FLOPs (``workers.compute``)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional

from workers.compute import attention_flops_per_token, eval_flops, train_flops
from workers.models import build_model, count_parameters
from workers.shards import FileManifest, Manifest, ShardInfo, ShardStore
from workers.spec import ModelSpec, ReplaySpec, TaskSpec
from workers.tasks import evaluate, loss_fn, targets
from workers.windows import TokenReader, token_dtype

TASK = TaskSpec(kind="language_modeling", tokenizer="ids", vocab_size=10_000, context_length=8)


def write(root: Path, lengths: list[int], val: int = 0) -> tuple[ShardStore, Manifest]:
    """Training shards of the given token counts (ids 0, 1, 2, … across them), and a validation
    shard of ``val`` tokens (ids from 5000 on)."""
    store = ShardStore(str(root))
    shards: list[ShardInfo] = []
    start = 0
    for n in lengths:
        tokens = np.arange(start, start + n, dtype=np.int32)
        shards.append(store.write_tokens("job", tokens, np.array([0, n]), "train"))
        start += n
    if val:
        tokens = 5000 + np.arange(val, dtype=np.int32)
        shards.append(store.write_tokens("job", tokens, np.array([0, val]), "val"))
    return store, FileManifest(root / "m", "job").append(shards)


def reader(store: ShardStore, manifest: Manifest, **kwargs: object) -> TokenReader:
    kwargs.setdefault("replay", ReplaySpec(newest_share=0.0, max_steps_per_pass=1000))
    r = TokenReader(store, TASK, batch_size=4, **kwargs)  # type: ignore[arg-type]
    r.update(manifest)
    return r


def test_windows_are_contiguous_and_shifted_by_one(tmp_path: Path) -> None:
    store, manifest = write(tmp_path, [100, 60], val=50)
    r = reader(store, manifest)
    assert (r.train_size, r.local_size, r.val_size, r.ready) == (160, 160, 50, True)
    assert r.resident_bytes == r._tokens.nbytes and r._tokens.dtype == torch.int16  # 10,000 ids
    assert token_dtype(256) == torch.uint8 and token_dtype(100_000) == torch.int32
    plan = r.plan(0)
    assert plan.steps == math.ceil(math.ceil(160 / 8) / 4) == 5
    assert plan.train_size == 160
    batches = list(r.batches(plan))
    assert len(batches) == 5
    for x, y in batches:
        assert x.shape == y.shape == (4, 8) and x.dtype == y.dtype == torch.int64
        torch.testing.assert_close(y[:, :-1], x[:, 1:], rtol=0, atol=0)
        # the history is 0..159 in order: every window is a run of consecutive ids
        torch.testing.assert_close(y, x + 1, rtol=0, atol=0)
        assert int(x.min()) >= 0 and int(y.max()) <= 159
    again = list(reader(store, manifest).batches(plan))
    for (x, _), (x2, _) in zip(batches, again, strict=True):
        torch.testing.assert_close(x, x2, rtol=0, atol=0)  # seeded by pass and rank


def test_ranks_hold_disjoint_blocks_of_every_shard(tmp_path: Path) -> None:
    store, manifest = write(tmp_path, [101, 60, 7])
    readers = [reader(store, manifest, rank=k, world_size=2, load_val=False) for k in (0, 1)]
    held = [set(r._tokens.data.tolist()) for r in readers]
    assert held[0].isdisjoint(held[1]) and held[0] | held[1] == set(range(168))
    assert sorted(r.local_size for r in readers) == [83, 85]
    assert readers[0].plan(3) == readers[1].plan(3)  # the same steps on every rank
    assert all(r.train_size == 168 and r.ready for r in readers)


def test_max_steps_per_pass_and_readiness(tmp_path: Path) -> None:
    store, manifest = write(tmp_path, [1000])
    r = reader(store, manifest, replay=ReplaySpec(newest_share=0.0, max_steps_per_pass=3))
    assert r.plan(0).steps == 3 and r.plan(0).samples_per_rank == 3 * 4 * 8
    store2, one = write(tmp_path / "one", [1])
    tiny = reader(store2, one)
    assert not tiny.ready
    store3, short = write(tmp_path / "short", [5])
    r3 = reader(store3, short)  # fewer tokens than a window: windows of what there is
    assert r3.ready and r3.window == 5
    x, _ = next(iter(r3.batches(r3.plan(0))))
    assert x.shape == (4, 4)
    torch.testing.assert_close(x[0], torch.arange(4), rtol=0, atol=0)


def test_recency_draws_mostly_the_newest_shard(tmp_path: Path) -> None:
    store, manifest = write(tmp_path, [2000, 2000])
    replay = ReplaySpec(history="recency", half_life=200, newest_share=0.0, max_steps_per_pass=50)
    r = reader(store, manifest, replay=replay)
    starts = torch.cat([x[:, 0] for x, _ in r.batches(r.plan(0))])
    newest = float((starts >= 2000).double().mean())
    assert newest > 0.99  # the old shard weighs 0.5 ** 10 per token
    uniform = reader(store, manifest)
    starts = torch.cat([x[:, 0] for x, _ in uniform.batches(uniform.plan(0))])
    assert 0.35 < float((starts >= 2000).double().mean()) < 0.65


def test_newest_share_takes_the_untrained_tokens_first(tmp_path: Path) -> None:
    store = ShardStore(str(tmp_path))
    m = FileManifest(tmp_path / "m", "job")
    first = store.write_tokens("job", np.arange(400, dtype=np.int32), np.array([0, 400]), "train")
    replay = ReplaySpec(newest_share=0.5, newest_window=64, max_steps_per_pass=10)
    r = reader(store, m.append([first]), replay=replay)
    new = store.write_tokens("job", np.arange(400, 440, dtype=np.int32), np.array([0, 40]), "train")
    r.update(m.append([new]))
    x, _ = next(iter(r.batches(r.plan(1))))
    # the first two windows of the batch predict the new tokens 400, 401, … in order (after the
    # history counted as trained at the first update), the other two come from anywhere
    assert x[0, 0] == 399 and x[1, 0] == 407
    x, _ = next(iter(r.batches(r.plan(2))))
    assert x[0, 0] == 415
    with pytest.raises(ValueError, match="class_balanced"):
        TokenReader(store, TASK, replay=ReplaySpec(history="class_balanced"))
    with pytest.raises(ValueError, match="reads language_modeling jobs"):
        TokenReader(store, TaskSpec(input_shape=(2,), num_classes=2))


def test_validation_windows_are_fixed_consecutive_and_bounded(tmp_path: Path) -> None:
    store, manifest = write(tmp_path, [100], val=81)
    r = reader(store, manifest)
    x, y = r.validation()
    assert x.shape == (10, 8)  # (81 - 1) // 8 windows: every token after the first predicted
    torch.testing.assert_close(x[:, 0], 5000 + torch.arange(10) * 8, rtol=0, atol=0)
    torch.testing.assert_close(y, x + 1, rtol=0, atol=0)
    assert r.validation_versions().tolist() == [1] * 10
    capped = reader(store, manifest, val_max_samples=3)
    xc, _ = capped.validation()
    torch.testing.assert_close(xc[:, 0], torch.tensor([5000, 5032, 5072]), rtol=0, atol=0)
    torch.testing.assert_close(capped.validation()[0], xc, rtol=0, atol=0)  # deterministic
    assert r.example_batch(4).shape == (4, 8)
    store2, short = write(tmp_path / "s", [100], val=5)
    xs, ys = reader(store2, short).validation()
    assert xs.shape == ys.shape == (1, 4)
    no_val = reader(*write(tmp_path / "n", [100]))
    assert no_val.example_batch(256).shape == (16, 8)


def test_lm_loss_and_evaluation_are_per_token() -> None:
    task = TaskSpec(kind="language_modeling", context_length=6)
    torch.manual_seed(0)
    model = build_model(
        ModelSpec.model_validate({"family": "gpt", "n_layer": 1, "d_model": 16}), task
    )
    x = torch.randint(0, 256, (5, 6))
    y = torch.randint(0, 256, (5, 6))
    logits = model(x)
    expected = functional.cross_entropy(logits.reshape(-1, 256), y.reshape(-1))
    torch.testing.assert_close(loss_fn(task)(logits, targets(y, task)), expected)
    loss, ppl = evaluate(model, x, y, task, batch_size=2)
    assert loss == pytest.approx(float(expected.detach()), abs=1e-5)
    assert ppl == pytest.approx(math.exp(loss), rel=1e-9)
    assert model.training  # restored


def test_gpt_flops_count_attention() -> None:
    task = TaskSpec(kind="language_modeling", context_length=64)
    spec = ModelSpec.model_validate({"family": "gpt", "n_layer": 3, "n_head": 4, "d_model": 32})
    model = build_model(spec, task)
    attention = attention_flops_per_token(model, 64)
    assert attention == 3 * 4 * 64 * 32  # 4 · T · n_head · head_dim per layer
    params = count_parameters(model)
    assert train_flops(params, 10, attention) == 10 * (6 * params + 3 * attention)
    assert eval_flops(params, 10, attention) == 10 * (2 * params + attention)
    mlp = build_model(ModelSpec(family="mlp"), TaskSpec(input_shape=(4,), num_classes=2))
    assert attention_flops_per_token(mlp, 64) == 0.0
