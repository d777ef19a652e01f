"""Replay in the spec: the newest share, the class-balanced reservoir, the bounded pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from workers.reader import DataReader
from workers.replay import ClassBalancedReservoir, NewestBuffer
from workers.shards import FileManifest, Manifest, ShardStore
from workers.spec import DataSpec, ReplaySpec, TaskSpec, replay_problems

TASK = TaskSpec(kind="classification", input_shape=(2,), num_classes=1_000_000)


def _push(
    store: ShardStore, manifest: FileManifest, n: int, start: int, label: int | None = None
) -> Manifest:
    ids = np.arange(start, start + n)
    features = np.stack([ids, -ids], axis=1).astype(np.float32)
    labels = ids if label is None else np.full(n, label)
    return manifest.append([store.write("job", features, labels, "train")])


@pytest.fixture
def data(tmp_path: Path) -> tuple[ShardStore, FileManifest]:
    return ShardStore(str(tmp_path / "data")), FileManifest(tmp_path / "m", "job")


@pytest.mark.parametrize("budget", [None, 3000 * 16])
def test_a_push_is_in_the_first_batch_of_the_next_pass(
    data: tuple[ShardStore, FileManifest], budget: int | None
) -> None:
    store, manifest = data
    reader = DataReader(
        store, TASK, batch_size=32, replay=ReplaySpec(newest_window=64), resident_bytes=budget
    )
    reader.update(_push(store, manifest, 20_000, start=0))
    assert reader.streamed == (budget is not None)
    assert reader.newest.untrained == 0  # what was there at the start counts as trained
    reader.update(_push(store, manifest, 10, start=1_000_000))
    plan = reader.plan(1)
    assert plan.steps == 100  # max_steps_per_pass, whatever the history's size
    batches = reader.batches(plan)
    _, labels = next(batches)
    assert labels.shape == (32,)
    head = labels[:16].tolist()
    assert head[:10] == list(range(1_000_000, 1_000_010))  # untrained first, in arrival order
    assert all(x < 1_000_010 for x in head[10:])  # the rest of the share: the newest window
    assert (labels[16:] < 1_000_000).sum() >= 15  # the other half replays the history
    assert reader.newest.untrained == 0 and reader.newest.drawn == 10


def test_newest_share_zero_is_plain_replay_and_one_is_the_newest_only(
    data: tuple[ShardStore, FileManifest],
) -> None:
    store, manifest = data
    _push(store, manifest, 500, start=0)
    snapshot = _push(store, manifest, 40, start=1000)
    only_new = DataReader(
        store, TASK, batch_size=20, replay=ReplaySpec(newest_share=1.0, newest_window=40)
    )
    only_new.update(snapshot)
    for _, labels in only_new.batches(only_new.plan(0)):
        assert bool((labels >= 1000).all())
    plain = DataReader(store, TASK, batch_size=20, replay=ReplaySpec(newest_share=0.0))
    plain.update(snapshot)
    drawn = torch.cat([b[1] for b in plain.batches(plain.plan(0))])
    assert sorted(drawn.tolist()) == list(range(500)) + list(range(1000, 1040))


def test_newest_buffer_keeps_the_last_window() -> None:
    buf = NewestBuffer(5, seed=0)
    buf.add(torch.arange(4.0).reshape(4, 1), torch.arange(4))
    buf.add(torch.arange(4.0, 7.0).reshape(3, 1), torch.arange(4, 7))
    assert buf.labels is not None and buf.labels.tolist() == [2, 3, 4, 5, 6]
    assert buf.untrained == 5
    assert buf.draw(3)[1].tolist() == [2, 3, 4]
    assert buf.draw(2)[1].tolist() == [5, 6] and buf.untrained == 0
    assert set(buf.draw(50)[1].tolist()) <= {2, 3, 4, 5, 6}


def test_class_balanced_reservoir_balances_an_imbalanced_stream() -> None:
    res = ClassBalancedReservoir(300, (1,), seed=1)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):  # class 0 is 90 % of the stream, classes 1 and 2 5 % each
        labels = torch.multinomial(torch.tensor([0.9, 0.05, 0.05]), 500, True, generator=gen)
        res.offer(labels.float().reshape(-1, 1), labels)
    counts = res.counts()
    assert res.size == 300 and sum(counts.values()) == 300
    assert max(counts.values()) - min(counts.values()) <= 1
    torch.testing.assert_close(res.features[:, 0], res.labels.float())  # rows travel together


def test_class_balanced_history_in_the_reader(data: tuple[ShardStore, FileManifest]) -> None:
    store, manifest = data
    _push(store, manifest, 900, start=0, label=0)
    snapshot = _push(store, manifest, 100, start=900, label=1)
    spec = ReplaySpec(history="class_balanced", reservoir_size=200, newest_share=0.0)
    reader = DataReader(store, TASK, batch_size=100, replay=spec)
    reader.update(snapshot)
    labels = torch.cat([b[1] for b in reader.batches(reader.plan(0))])
    assert abs(labels.float().mean().item() - 0.5) < 0.05  # 10 % of the data, half the replay


def test_replay_spec_validation() -> None:
    with pytest.raises(ValidationError, match="'recency' needs 'half_life'"):
        ReplaySpec(history="recency")
    with pytest.raises(ValidationError, match="'half_life' is for replay 'recency'"):
        ReplaySpec(half_life=10.0)
    with pytest.raises(ValidationError, match="newest_share"):
        ReplaySpec(newest_share=1.5)
    regression = TaskSpec(kind="regression", input_shape=(4,), num_outputs=1)
    problems = replay_problems(
        regression, ReplaySpec(history="class_balanced"), DataSpec(resident_bytes=1 << 16)
    )
    assert problems[0] == "replay 'class_balanced' is for classification, not regression"
    assert "data.resident_bytes (65,536) leaves no room to stream" in problems[1]
    assert replay_problems(TASK, ReplaySpec(), DataSpec()) == []
