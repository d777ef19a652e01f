"""The reader past its memory budget: streamed windows, each rank's own rows, flat resident bytes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from workers.reader import DataReader
from workers.shards import FileManifest, Manifest, ShardInfo, ShardStore
from workers.spec import ReplaySpec, TaskSpec

TASK = TaskSpec(kind="classification", input_shape=(2,), num_classes=1_000_000)
SAMPLE = 2 * 4 + 8  # float32 features and an int64 label


class CountingStore(ShardStore):
    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.reads: list[str] = []
        self.ranges: list[tuple[str, int, int]] = []

    def read(self, info: ShardInfo, *, verify: bool = True) -> tuple[np.ndarray, np.ndarray]:
        self.reads.append(info.shard_id)
        return super().read(info, verify=verify)

    def read_rows(self, info: ShardInfo, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        self.ranges.append((info.shard_id, start, stop))
        return super().read_rows(info, start, stop)


def _push(store: ShardStore, manifest: FileManifest, sizes: list[int], start: int) -> Manifest:
    """Shards whose sample ``i`` has features ``(i, -i)`` and label ``i``."""
    infos = []
    for n in sizes:
        ids = np.arange(start, start + n)
        features = np.stack([ids, -ids], axis=1).astype(np.float32)
        infos.append(store.write("job", features, ids, "train"))
        start += n
    return manifest.append(infos)


@pytest.fixture
def data(tmp_path: Path) -> tuple[CountingStore, FileManifest]:
    return CountingStore(str(tmp_path / "data")), FileManifest(tmp_path / "m", "job")


def _reader(store: ShardStore, rank: int, world: int, budget: int, **replay: object) -> DataReader:
    spec = ReplaySpec.model_validate({"newest_share": 0.0, **replay})
    return DataReader(
        store, TASK, rank=rank, world_size=world, batch_size=50, seed=3, replay=spec,
        resident_bytes=budget, load_val=False,
    )  # fmt: skip


def test_read_rows_matches_the_whole_shard(data: tuple[CountingStore, FileManifest]) -> None:
    store, manifest = data
    info = _push(store, manifest, [37], start=5).shards[0]
    features, labels = store.read(info)
    x, y = store.read_rows(info, 10, 21)
    np.testing.assert_array_equal(x, features[10:21])
    np.testing.assert_array_equal(y, labels[10:21])
    with pytest.raises(ValueError, match=r"rows \[30, 40\) are not in shard"):
        store.read_rows(info, 30, 40)
    assert store.list_shards("job") == [info.shard_id]


def test_past_the_budget_each_rank_streams_its_own_rows_within_budget(
    data: tuple[CountingStore, FileManifest],
) -> None:
    store, manifest = data
    budget = 4000 * SAMPLE  # per rank; the history grows to 3 × 12,000 samples over 2 ranks
    readers = [_reader(store, r, 2, budget) for r in range(2)]
    first = _push(store, manifest, [1000] * 4, start=0)
    for r in readers:
        r.update(first)
        assert not r.streamed and r.resident_bytes <= budget
    seen: list[list[int]] = [[], []]
    start = 4000
    for _ in range(8):
        snapshot = _push(store, manifest, [1000, 1000, 1000, 997], start=start)
        start += 3997
        for r in readers:
            r.update(snapshot)
            plan = r.plan(0)
            assert plan.steps == min(100, -(-r.train_size // 2 // 50))
            for _, labels in r.batches(plan):
                if r.streamed:  # the partition of the resident reader is another one
                    seen[r.rank] += labels.tolist()
                assert r.resident_bytes <= budget
    assert all(r.streamed for r in readers)
    assert not set(seen[0]) & set(seen[1])  # each rank draws from its own rows only
    # Only byte ranges of blocks after the switch; never a whole shard again.
    # The 8 first shards (7,997 samples, 3,999 a rank) fitted: each read whole once per rank.
    assert len(store.reads) == 8 * 2
    assert store.ranges and all(stop - start <= 1000 for _, start, stop in store.ranges)
    r0 = readers[0]
    assert r0.local_size + readers[1].local_size == r0.train_size == start
    assert r0._stream is not None and r0._stream.resident_bytes <= budget


def test_a_streamed_epoch_draws_every_local_row_once(
    data: tuple[CountingStore, FileManifest],
) -> None:
    store, manifest = data
    snapshot = _push(store, manifest, [300, 301, 299], start=0)
    reader = _reader(store, 1, 3, 100 * SAMPLE)
    reader.update(snapshot)
    assert reader.streamed and reader.local_size == 300
    assert store.ranges == []  # indexing reads nothing
    assert reader._stream is not None
    labels = reader._stream.draw(300)[1].tolist()
    assert len(set(labels)) == 300  # without repeats over one epoch
    again = reader._stream.draw(300)[1].tolist()
    assert sorted(again) == sorted(labels) and again != labels  # the next epoch, reshuffled


def test_start_up_decodes_no_history_only_the_newest_tail(
    data: tuple[CountingStore, FileManifest],
) -> None:
    store, manifest = data
    snapshot = _push(store, manifest, [5000] * 6, start=0)
    reader = _reader(store, 0, 1, 2000 * SAMPLE, newest_share=0.5, newest_window=100)
    reader.update(snapshot)
    assert store.reads == []
    assert [(stop - start) for _, start, stop in store.ranges] == [100]
    assert reader.newest.size == 100 and reader.newest.untrained == 0  # trained before the start
    assert reader.newest.labels is not None
    assert reader.newest.labels.tolist() == list(range(29_900, 30_000))


def test_recency_streamed_favours_the_newest_shards(
    data: tuple[CountingStore, FileManifest],
) -> None:
    store, manifest = data
    _push(store, manifest, [1000], start=0)
    snapshot = _push(store, manifest, [1000], start=1000)
    reader = _reader(store, 0, 1, 400 * SAMPLE, history="recency", half_life=1000.0)
    reader.update(snapshot)
    assert reader._stream is not None
    labels = torch.cat([reader._stream.draw(1000)[1] for _ in range(20)])
    newer = (labels >= 1000).float().mean().item()
    assert abs(newer - 2 / 3) < 0.06  # weights 1 and 0.5: a share of 1 / 1.5 for the newer
