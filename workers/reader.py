"""The workers' view of a job's dataset: a manifest snapshot, a shard cache, and per-pass batches.

Every rank holds the same manifest snapshot for a pass (rank 0 loads it and broadcasts it; see
``workers.loop``) and computes the same number of steps from it, which DDP needs. Training samples
are partitioned across ranks by their position in the whole dataset: sample ``i`` (counted over the
training shards in manifest order) belongs to rank ``i % world_size``. Each rank therefore decodes
every training shard once but keeps only its share in memory, and shards of any size spread evenly.

A pass draws ``ceil(train_size / world_size)`` samples per rank:

* uniformly over the rank's whole history, without replacement (old data is replayed, so nothing is
  forgotten; a rank with one sample fewer than the others repeats one), or
* with ``recency_half_life`` set, with replacement and weights that halve for every
  ``recency_half_life`` training samples that arrived after the sample's shard.

Shards are immutable, so the cache is keyed by shard id and a manifest update decodes only the new
shards. The validation set (the ``val`` shards) is loaded only where evaluation happens (rank 0).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from workers.shards import Manifest, ShardInfo, ShardStore
from workers.spec import TaskSpec


class GrowingTensor:
    """Rows appended to a tensor with amortised O(1) copies (capacity doubles)."""

    def __init__(self, row_shape: tuple[int, ...], dtype: torch.dtype) -> None:
        self.row_shape = row_shape
        self.dtype = dtype
        self._buf = torch.empty((0, *row_shape), dtype=dtype)
        self.size = 0

    def append(self, rows: np.ndarray) -> None:
        n = rows.shape[0]
        if tuple(rows.shape[1:]) != self.row_shape:
            raise ValueError(f"rows of shape {rows.shape[1:]} do not fit {self.row_shape}")
        if self.size + n > self._buf.shape[0]:
            capacity = max(self.size + n, 2 * self._buf.shape[0], 1024)
            grown = torch.empty((capacity, *self.row_shape), dtype=self.dtype)
            grown[: self.size] = self._buf[: self.size]
            self._buf = grown
        self._buf[self.size : self.size + n] = torch.from_numpy(rows).to(self.dtype)
        self.size += n

    @property
    def data(self) -> torch.Tensor:
        """The rows so far (a view; valid until the next :meth:`append`)."""
        return self._buf[: self.size]


@dataclass(frozen=True)
class PassPlan:
    """What one pass does on every rank: the same ``steps`` everywhere."""

    index: int
    steps: int
    samples_per_rank: int
    batch_size: int
    dataset_version: int
    train_size: int


class DataReader:
    """A rank's share of a job's dataset, read through a shard cache."""

    def __init__(
        self,
        store: ShardStore,
        task: TaskSpec,
        *,
        rank: int = 0,
        world_size: int = 1,
        batch_size: int = 64,
        seed: int = 0,
        recency_half_life: float | None = None,
        load_val: bool = True,
        val_max_samples: int | None = None,
        max_steps_per_pass: int | None = None,
        verify: bool = True,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        if recency_half_life is not None and recency_half_life <= 0:
            raise ValueError("recency_half_life must be positive (or None for uniform replay)")
        self.store = store
        self.task = task
        self.rank = rank
        self.world_size = world_size
        self.batch_size = batch_size
        self.seed = seed
        self.recency_half_life = recency_half_life
        self.load_val = load_val
        self.val_max_samples = val_max_samples
        self.max_steps_per_pass = max_steps_per_pass
        self.verify = verify
        self.manifest = Manifest(job_id="")
        self._reset()

    # -- the snapshot -----------------------------------------------------------------------------

    def _reset(self) -> None:
        label_shape: tuple[int, ...] = ()
        label_dtype = torch.int64
        if self.task.kind == "regression":
            label_shape, label_dtype = (self.task.output_dim,), torch.float32
        self._features = GrowingTensor(tuple(self.task.input_shape), torch.float32)
        self._labels = GrowingTensor(label_shape, label_dtype)
        self._val_features = GrowingTensor(tuple(self.task.input_shape), torch.float32)
        self._val_labels = GrowingTensor(label_shape, label_dtype)
        self._train_ids: list[str] = []  # shard ids in the cache, in manifest order
        self._val_ids: list[str] = []
        self._local_shard_ends: list[int] = []  # cumulative local row count after each shard
        self._global_shard_ends: list[int] = []  # cumulative global row count after each shard
        self._train_size = 0

    def update(self, manifest: Manifest) -> int:
        """Adopt a newer snapshot; decode only the shards not yet cached. Returns how many."""
        train_ids = [s.shard_id for s in manifest.train_shards]
        val_ids = [s.shard_id for s in manifest.val_shards]
        # Manifests only append; anything else (a compaction, another job) starts the cache over.
        if (
            train_ids[: len(self._train_ids)] != self._train_ids
            or val_ids[: len(self._val_ids)] != self._val_ids
            or manifest.job_id != self.manifest.job_id
        ):
            self._reset()
        loaded = 0
        for info in manifest.train_shards[len(self._train_ids) :]:
            self._add_train(info)
            loaded += 1
        if self.load_val:
            for info in manifest.val_shards[len(self._val_ids) :]:
                features, labels = self._read(info)
                self._val_features.append(features)
                self._val_labels.append(labels)
                self._val_ids.append(info.shard_id)
                loaded += 1
        self.manifest = manifest
        return loaded

    def _read(self, info: ShardInfo) -> tuple[np.ndarray, np.ndarray]:
        features, labels = self.store.read(info, verify=self.verify)
        if tuple(features.shape[1:]) != tuple(self.task.input_shape):
            raise ValueError(
                f"shard {info.shard_id} has samples of shape {list(features.shape[1:])}, but the "
                f"task's input_shape is {list(self.task.input_shape)}"
            )
        if self.task.kind == "regression":
            labels = labels.reshape(labels.shape[0], -1)
        return features, labels

    def _add_train(self, info: ShardInfo) -> None:
        features, labels = self._read(info)
        # This rank's rows: global index (shard start + row) ≡ rank (mod world_size).
        first = (self.rank - self._train_size) % self.world_size
        self._features.append(features[first :: self.world_size])
        self._labels.append(labels[first :: self.world_size])
        self._train_ids.append(info.shard_id)
        self._train_size += features.shape[0]
        self._local_shard_ends.append(self._features.size)
        self._global_shard_ends.append(self._train_size)

    # -- sizes ------------------------------------------------------------------------------------

    @property
    def train_size(self) -> int:
        """Training samples in the snapshot, over all ranks."""
        return self._train_size

    @property
    def local_size(self) -> int:
        """Training samples held by this rank: ``ceil((train_size - rank) / world_size)``."""
        return self._features.size

    @property
    def val_size(self) -> int:
        return self.manifest.val_size

    @property
    def ready(self) -> bool:
        """Whether every rank holds at least one training sample (so a pass can run)."""
        return self._train_size >= self.world_size

    # -- passes -----------------------------------------------------------------------------------

    def plan(self, pass_index: int) -> PassPlan:
        """The pass's step count, the same on every rank for the same snapshot."""
        per_rank = math.ceil(self._train_size / self.world_size)
        steps = math.ceil(per_rank / self.batch_size) if per_rank else 0
        if self.max_steps_per_pass is not None:
            steps = min(steps, self.max_steps_per_pass)
        return PassPlan(
            index=pass_index,
            steps=steps,
            samples_per_rank=min(per_rank, steps * self.batch_size),
            batch_size=self.batch_size,
            dataset_version=self.manifest.version,
            train_size=self._train_size,
        )

    def sample_weights(self) -> torch.Tensor | None:
        """Per local sample, the recency weight (``None`` for uniform replay)."""
        if self.recency_half_life is None:
            return None
        weights = torch.empty(self.local_size, dtype=torch.float64)
        start = 0
        for local_end, global_end in zip(
            self._local_shard_ends, self._global_shard_ends, strict=True
        ):
            newer = self._train_size - global_end  # samples that arrived after this shard
            weights[start:local_end] = 0.5 ** (newer / self.recency_half_life)
            start = local_end
        return weights

    def indices(self, plan: PassPlan) -> torch.Tensor:
        """This rank's sample order for the pass: ``plan.samples_per_rank`` local indices."""
        n, m = self.local_size, plan.samples_per_rank
        if n == 0:
            raise RuntimeError(
                f"rank {self.rank} holds no training sample (train_size={self._train_size}, "
                f"world_size={self.world_size}); wait until ready"
            )
        gen = torch.Generator().manual_seed(_seed(self.seed, plan.index, self.rank))
        weights = self.sample_weights()
        if weights is not None:
            return torch.multinomial(weights, m, replacement=True, generator=gen)
        order = torch.randperm(n, generator=gen)
        if m > n:  # one sample fewer than the other ranks (or a tiny dataset): repeat the first
            order = order.repeat(math.ceil(m / n))
        return order[:m]

    def batches(self, plan: PassPlan) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``plan.steps`` batches of ``(features, labels)`` on the CPU."""
        order = self.indices(plan)
        features, labels = self._features.data, self._labels.data
        for step in range(plan.steps):
            idx = order[step * plan.batch_size : (step + 1) * plan.batch_size]
            yield features.index_select(0, idx), labels.index_select(0, idx)

    # -- validation -------------------------------------------------------------------------------

    def validation(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The validation set (rank 0), at most ``val_max_samples`` spread evenly over it."""
        if not self.load_val:
            raise RuntimeError("this reader does not load the validation set (load_val=False)")
        features, labels = self._val_features.data, self._val_labels.data
        n = features.shape[0]
        if self.val_max_samples is not None and n > self.val_max_samples:
            idx = torch.linspace(0, n - 1, self.val_max_samples).round().long()
            return features.index_select(0, idx), labels.index_select(0, idx)
        return features, labels

    def example_batch(self, size: int = 256) -> torch.Tensor:
        """Real inputs for tracing and measuring a growth: validation samples, else training."""
        if self.load_val and self._val_features.size:
            return self._val_features.data[:size].clone()
        return self._features.data[:size].clone()


def _seed(*parts: int) -> int:
    digest = hashlib.sha256(",".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
