"""The reader: the same plan on every rank, a disjoint partition, replay, recency, the cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from workers.reader import DataReader, GrowingTensor
from workers.shards import FileManifest, Manifest, ShardInfo, ShardStore
from workers.spec import TaskSpec

TASK = TaskSpec(kind="classification", input_shape=(2,), num_classes=1000)


class CountingStore(ShardStore):
    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.reads: list[str] = []

    def read(self, info: ShardInfo, *, verify: bool = True) -> tuple[np.ndarray, np.ndarray]:
        self.reads.append(info.shard_id)
        return super().read(info, verify=verify)


def _push(
    store: ShardStore, manifest: FileManifest, sizes: list[int], start: int, split: str = "train"
) -> Manifest:
    """Shards whose sample ``i`` has features ``(i, -i)`` and label ``i``: ids are traceable."""
    infos = []
    for n in sizes:
        ids = np.arange(start, start + n)
        features = np.stack([ids, -ids], axis=1).astype(np.float32)
        infos.append(store.write("job", features, ids, split))  # type: ignore[arg-type]
        start += n
    return manifest.append(infos)


@pytest.fixture
def data(tmp_path: Path) -> tuple[CountingStore, FileManifest]:
    return CountingStore(str(tmp_path / "data")), FileManifest(tmp_path / "m", "job")


def _readers(store: ShardStore, world: int, **kwargs: object) -> list[DataReader]:
    return [
        DataReader(store, TASK, rank=r, world_size=world, load_val=r == 0, **kwargs)  # type: ignore[arg-type]
        for r in range(world)
    ]


def test_ranks_partition_the_samples_and_plan_the_same_steps(
    data: tuple[CountingStore, FileManifest],
) -> None:
    store, manifest = data
    snapshot = _push(store, manifest, [1, 1, 1, 5, 3], start=0)  # 11 samples in odd shards
    readers = _readers(store, 3, batch_size=2)
    for r in readers:
        r.update(snapshot)
    held = [set(r._labels.data.tolist()) for r in readers]
    assert [len(h) for h in held] == [4, 4, 3]
    assert set().union(*held) == set(range(11))
    assert held[1] == {1, 4, 7, 10}  # rank r holds the samples i ≡ r (mod 3)
    plans = [r.plan(0) for r in readers]
    assert {(p.steps, p.samples_per_rank) for p in plans} == {(2, 4)}
    for r, plan in zip(readers, plans, strict=True):
        batches = list(r.batches(plan))
        assert [b[0].shape for b in batches] == [(2, 2), (2, 2)]
        seen = torch.cat([b[1] for b in batches]).tolist()
        assert len(seen) == 4 and set(seen) <= held[r.rank] and set(seen) == held[r.rank]
        for features, labels in batches:  # features travel with their labels
            torch.testing.assert_close(features[:, 0], labels.float())


def test_uniform_replay_is_a_seeded_permutation(data: tuple[CountingStore, FileManifest]) -> None:
    store, manifest = data
    (reader,) = _readers(store, 1, batch_size=4, seed=7)
    reader.update(_push(store, manifest, [6, 4], start=0))
    plan = reader.plan(3)
    first = reader.indices(plan)
    assert sorted(first.tolist()) == list(range(10))
    assert torch.equal(first, reader.indices(plan))  # deterministic for (seed, pass, rank)
    assert not torch.equal(first, reader.indices(reader.plan(4)))
    assert plan.steps == 3
    assert [len(b[1]) for b in reader.batches(plan)] == [4, 4, 2]


def test_max_steps_per_pass(data: tuple[CountingStore, FileManifest]) -> None:
    store, manifest = data
    (reader,) = _readers(store, 1, batch_size=4, max_steps_per_pass=2)
    reader.update(_push(store, manifest, [100], start=0))
    plan = reader.plan(0)
    assert (plan.steps, plan.samples_per_rank) == (2, 8)
    assert len(set(reader.indices(plan).tolist())) == 8


def test_new_shards_are_decoded_once(data: tuple[CountingStore, FileManifest]) -> None:
    store, manifest = data
    (reader,) = _readers(store, 1)
    assert not reader.ready and reader.plan(0).steps == 0
    first = _push(store, manifest, [3, 2], start=0)
    _push(store, manifest, [4], start=100, split="val")
    assert reader.update(manifest.load()) == 3
    second = _push(store, manifest, [5], start=5)
    assert reader.update(second) == 1
    assert reader.update(second) == 0
    assert len(store.reads) == 4 and len(set(store.reads)) == 4
    assert (reader.train_size, reader.val_size, reader.local_size) == (10, 4, 10)
    assert sorted(reader._labels.data.tolist()) == list(range(10))
    assert first.version == 1 and reader.plan(0).dataset_version == 3


def test_a_rewritten_manifest_starts_the_cache_over(
    data: tuple[CountingStore, FileManifest],
) -> None:
    store, manifest = data
    (reader,) = _readers(store, 1)
    snapshot = _push(store, manifest, [3, 2], start=0)
    reader.update(snapshot)
    compacted = snapshot.model_copy(update={"shards": snapshot.shards[1:], "version": 9})
    reader.update(compacted)
    assert sorted(reader._labels.data.tolist()) == [3, 4]


def test_validation_on_rank_zero_only_and_capped_evenly(
    data: tuple[CountingStore, FileManifest],
) -> None:
    store, manifest = data
    _push(store, manifest, [4], start=0)
    snapshot = _push(store, manifest, [5, 6], start=100, split="val")
    rank0, rank1 = _readers(store, 2, val_max_samples=3)
    rank0.update(snapshot)
    rank1.update(snapshot)
    features, labels = rank0.validation()
    assert labels.tolist() == [100, 105, 110]  # first, middle, last of 11
    torch.testing.assert_close(features[:, 1], -labels.float())
    with pytest.raises(RuntimeError, match="load_val=False"):
        rank1.validation()
    assert rank0.example_batch(2)[:, 0].tolist() == [100.0, 101.0]
    assert rank1.example_batch(2)[:, 0].tolist() == [1.0, 3.0]  # training rows of rank 1


def test_recency_weights_halve_per_half_life(data: tuple[CountingStore, FileManifest]) -> None:
    store, manifest = data
    _push(store, manifest, [100], start=0)
    snapshot = _push(store, manifest, [50, 50], start=100)
    (reader,) = _readers(store, 1, recency_half_life=50.0, batch_size=200)
    reader.update(snapshot)
    weights = reader.sample_weights()
    assert weights is not None
    assert weights[:100].unique().tolist() == [0.25]
    assert weights[100:150].unique().tolist() == [0.5]
    assert weights[150:].unique().tolist() == [1.0]
    drawn = reader.indices(reader.plan(0))
    assert drawn.shape == (200,)
    plain = _readers(store, 1)[0]
    assert plain.sample_weights() is None
    # Expected share of the newest 50 samples: 50·1 / (100·0.25 + 50·0.5 + 50·1) = 0.5.
    shares = []
    for p in range(20):
        shares.append((reader.indices(reader.plan(p)) >= 150).float().mean().item())
    assert abs(float(np.mean(shares)) - 0.5) < 0.05


def test_regression_labels_and_shape_checks(tmp_path: Path) -> None:
    store = ShardStore(str(tmp_path))
    manifest = FileManifest(tmp_path / "m", "job")
    task = TaskSpec(kind="regression", input_shape=(3,), num_outputs=1)
    reader = DataReader(store, task)
    info = store.write("job", np.ones((4, 3), np.float32), np.arange(4, dtype=np.float32), "train")
    reader.update(manifest.append([info]))
    _, labels = next(reader.batches(reader.plan(0)))
    assert labels.dtype == torch.float32 and labels.shape == (4, 1)
    bad = store.write("job", np.ones((2, 5), np.float32), np.zeros(2, np.float32), "train")
    with pytest.raises(ValueError, match=r"shape \[5\], but the task's input_shape is \[3\]"):
        reader.update(manifest.append([bad]))


def test_growing_tensor() -> None:
    t = GrowingTensor((2,), torch.float32)
    for i in range(5):
        t.append(np.full((700, 2), i, np.float32))
    assert t.size == 3500 and t.data.shape == (3500, 2)
    assert t.data[::700, 0].tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="do not fit"):
        t.append(np.zeros((1, 3), np.float32))
