"""The token reader within its memory budget (``data.resident_bytes``): past it, the token history
is streamed from the storage root by byte ranges, the reader's own count of resident bytes stays
within the budget, windows come from every part of the history, the newest share still takes new
tokens first, validation windows stay fixed, and a language-modelling job trains so."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.service.test_s3_storage import endpoint, root  # noqa: F401 (fixtures)
from tests.workers.test_lm_loop import MODEL, Recorder, write_text_job
from tests.workers.test_lm_loop import TASK as TEXT_TASK
from workers.loop import TrainLoop, WorkerConfig
from workers.runtime import LocalRuntime
from workers.shards import FileManifest, Manifest, ShardInfo, ShardStore
from workers.sources import Directive
from workers.spec import (
    ComputeSpec,
    DataSpec,
    OptimizerSpec,
    ReplaySpec,
    TaskSpec,
    replay_problems,
    token_itemsize,
)
from workers.windows import TokenReader

# int32 tokens (4 bytes each), so that every token's id is its position in the history
TASK = TaskSpec(kind="language_modeling", tokenizer="ids", vocab_size=200_000, context_length=16)
BUDGET = 40 * 1024  # bytes: 10,240 tokens
SHARD = 5_120  # tokens a training shard
HISTORY = 20 * SHARD  # 102,400 tokens: ten times the budget


def write(
    folder: Path, shards: int, *, start: int = 0, val: int = 0, store_root: str | None = None
) -> tuple[ShardStore, Manifest]:
    """``shards`` training shards of consecutive ids from ``start``, and a validation shard."""
    store = ShardStore(store_root or str(folder / "data"))
    manifest = FileManifest(folder / "m", "job")
    infos: list[ShardInfo] = []
    for k in range(shards):
        ids = np.arange(start + k * SHARD, start + (k + 1) * SHARD, dtype=np.int32)
        infos.append(store.write_tokens("job", ids, np.array([0, SHARD]), "train"))
    if val:
        ids = 150_000 + np.arange(val, dtype=np.int32)
        infos.append(store.write_tokens("job", ids, np.array([0, val]), "val"))
    return store, manifest.append(infos)


def streamed(store: ShardStore, manifest: Manifest, **kwargs: Any) -> TokenReader:
    kwargs.setdefault("replay", ReplaySpec(newest_share=0.0, max_steps_per_pass=10_000))
    r = TokenReader(store, TASK, batch_size=64, resident_bytes=BUDGET, **kwargs)
    r.update(manifest)
    return r


def test_a_history_ten_times_the_budget_streams_within_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, manifest = write(tmp_path, HISTORY // SHARD)
    monkeypatch.setattr(ShardStore, "read_tokens", _refuse)  # no shard is decoded whole
    r = streamed(store, manifest)
    assert r.streamed and r.local_size == HISTORY and r.resident_bytes == 0
    assert r._stream is not None and r._stream.reads == 0  # start-up only indexed the shards
    plan = r.plan(0)
    assert plan.steps == 100  # 6,400 windows: about one visit of every token
    starts, peak = [], 0
    for x, y in r.batches(plan):
        torch.testing.assert_close(y, x + 1, rtol=0, atol=0)  # consecutive ids: real windows
        assert r._stream._ahead is not None
        r._stream._ahead.result()  # the next buffer is read: both buffers are held now
        peak = max(peak, r.resident_bytes)
        starts.append(x[:, 0])
    assert BUDGET // 2 < peak <= BUDGET  # the reader's own count, both buffers held
    drawn = torch.cat(starts)
    assert int(drawn.min()) >= 0 and int(drawn.max()) <= HISTORY - 17
    # every tenth of the history gets its tenth of the windows (uniform replay)
    counts = torch.bincount(drawn * 10 // HISTORY, minlength=10).double()
    assert counts.shape == (10,)
    expected = drawn.shape[0] / 10
    assert float((counts / expected - 1).abs().max()) < 0.25, counts.tolist()
    r.close()


def _refuse(*args: object, **kwargs: object) -> None:
    raise AssertionError("a streamed token history decodes no whole shard")


def test_streamed_ranks_draw_their_own_blocks_and_the_newest_tokens_first(tmp_path: Path) -> None:
    store, manifest = write(tmp_path, HISTORY // SHARD)
    replay = ReplaySpec(newest_share=0.25, newest_window=256, max_steps_per_pass=20)
    readers = [streamed(store, manifest, rank=k, world_size=2, replay=replay) for k in (0, 1)]
    for k, r in enumerate(readers):
        assert r.streamed and r.plan(0) == readers[0].plan(0)
        # rank k holds half k (or 1 - k) of every shard, alternating with the shard's number
        mine = torch.tensor(
            [(i // SHARD + k) % 2 == (i % SHARD) * 2 // SHARD for i in range(HISTORY)]
        )
        for x, _ in r.batches(r.plan(0)):
            assert bool(mine[x[16:, 0]].all())  # the history's windows start in its own blocks
            assert r.resident_bytes <= BUDGET
    r = readers[0]
    tail = r._tail.clone()
    new = store.write_tokens(
        "job", np.arange(HISTORY, HISTORY + 100, dtype=np.int32), np.array([0, 100]), "train"
    )
    r.update(FileManifest(tmp_path / "m", "job").append([new]))
    assert r._tail.shape[0] == 256 and torch.equal(r._tail[:-50], tail[50:])  # 50 new tokens
    x, y = next(iter(r.batches(r.plan(1))))
    first_new = HISTORY  # rank 0's block of the 21st shard is its first half
    assert int(y[0, 0]) == first_new and int(y[1, 0]) == first_new + 16
    for w in readers:
        w.close()


def test_streamed_recency_favours_the_newest_shards(tmp_path: Path) -> None:
    store, manifest = write(tmp_path, HISTORY // SHARD)
    replay = ReplaySpec(
        history="recency", half_life=SHARD, newest_share=0.0, max_steps_per_pass=100
    )
    r = streamed(store, manifest, replay=replay)
    assert r.streamed
    drawn = torch.cat([x[:, 0] for x, _ in r.batches(r.plan(0))])
    newest = float((drawn >= HISTORY - 2 * SHARD).double().mean())
    # the last two shards weigh 1 and 1/2 of 2 - 2^-19 in all: three quarters of the pieces drawn
    # (uniform replay: a tenth)
    assert 0.55 < newest < 0.95, newest
    r.close()


@pytest.mark.integration
def test_a_token_history_streams_from_an_s3_root(root: str, tmp_path: Path) -> None:  # noqa: F811
    store, manifest = write(tmp_path, HISTORY // SHARD, store_root=root)
    r = streamed(store, manifest, replay=ReplaySpec(newest_share=0.0, max_steps_per_pass=20))
    assert r.streamed
    for x, y in r.batches(r.plan(0)):
        torch.testing.assert_close(y, x + 1, rtol=0, atol=0)
        assert r.resident_bytes <= BUDGET
    r.close()


def test_streamed_validation_windows_are_fixed_and_bounded(tmp_path: Path) -> None:
    store, manifest = write(tmp_path, 2, val=8_001)
    resident = TokenReader(store, TASK, val_max_samples=100)
    resident.update(manifest)
    bounded = streamed(store, manifest, val_max_samples=100)
    assert not bounded.streamed  # 10,240 training tokens fit the budget exactly
    x, y = bounded.validation()
    torch.testing.assert_close(x, resident.validation()[0], rtol=0, atol=0)
    torch.testing.assert_close(y, x + 1, rtol=0, atol=0)
    assert x.shape == (100, 16) and bounded.val_resident_bytes == 100 * 17 * 8
    assert bounded.validation_versions().tolist() == resident.validation_versions().tolist()
    with pytest.raises(ValueError, match=r"raise data\.resident_bytes"):
        TokenReader(store, TASK, resident_bytes=100)


@pytest.mark.slow
def test_a_language_model_job_past_its_budget_trains(tmp_path: Path) -> None:
    """About 260 KB of text against a 64 KiB budget: the job streams its history and learns."""
    write_text_job(tmp_path, train_docs=12_000, val_docs=60)
    manifest = FileManifest(tmp_path / "manifest", "job")
    budget = 1 << 16
    assert manifest.load().train_size > 3 * budget  # one byte a token
    source = Recorder({40: Directive(stop=True)})
    config = WorkerConfig(
        job_id="job",
        task=TEXT_TASK,
        model=MODEL,
        store_root=str(tmp_path / "data"),
        manifest=manifest,
        source=source,
        optimizer=OptimizerSpec.model_validate({"schedule": {"warmup_steps": 10}}),
        batch_size=16,
        observe_every=10,
        checkpoint_every=0,
        checkpoint_root=str(tmp_path / "durable"),
        poll_interval=0.01,
        data=DataSpec(resident_bytes=budget),
        compute=ComputeSpec(idle_when_converged=False),
    )
    loop = TrainLoop(config, runtime=LocalRuntime(tmp_path / "run"))
    try:
        loop.setup()
        loop.restore()
        loop.run()
        assert loop.reader.streamed and 0 < loop.reader.resident_bytes <= budget
    finally:
        loop.cleanup()
    obs = source.observations
    assert [o.step for o in obs] == [10, 20, 30, 40]
    assert obs[0].val_loss is not None and obs[-1].val_loss is not None
    assert obs[-1].val_loss < obs[0].val_loss - 0.5, [o.val_loss for o in obs]


@pytest.mark.parametrize(
    ("tokenizer", "newest_share", "context_length"),
    [("bytes", 0.5, 64), ("ids", 0.5, 64), ("ids", 0.0, 8192)],
)
def test_the_spec_accepts_exactly_the_budgets_the_token_reader_streams_within(
    tmp_path: Path, tokenizer: str, newest_share: float, context_length: int
) -> None:
    """The job spec's budget check and the token reader agree at the edge, in tokens of the
    reader's own size (one byte for the byte tokenizer, four here for 200,000 ids)."""
    task = TaskSpec(
        kind="language_modeling",
        tokenizer=tokenizer,
        vocab_size=None if tokenizer == "bytes" else 200_000,
        context_length=context_length,
    )
    replay = ReplaySpec(newest_share=newest_share, newest_window=70_000)
    store = ShardStore(str(tmp_path))
    itemsize = token_itemsize(task.vocab)
    edge = (70_000 * itemsize if newest_share else 0) + 2 * (context_length + 2) * itemsize
    assert edge > 1 << 16  # the smallest budget a spec takes
    for budget in (edge - 1, edge, edge + 1, 4 * edge):
        spec_fits = not replay_problems(task, replay, DataSpec(resident_bytes=budget))
        try:
            TokenReader(store, task, replay=replay, resident_bytes=budget)
            reader_fits = True
        except ValueError:
            reader_fits = False
        assert spec_fits == reader_fits == (budget >= edge), budget
