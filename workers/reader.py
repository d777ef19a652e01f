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

Replay (``workers.spec.ReplaySpec``) and bounded memory (``workers.spec.DataSpec``). With a
``replay`` spec every batch holds a share of the newest samples (``workers.replay.NewestBuffer``)
and the rest from the history: uniform or recency-weighted as above, or a class-balanced reservoir
(``workers.replay.ClassBalancedReservoir``). With ``resident_bytes`` set, once the rank's share of
the history no longer fits the budget (less the newest window and the reservoir), the rank drops
the decoded history and streams its own block of rows of every shard from the storage root
(``workers.cache.StreamedHistory``); the switch happens at the same manifest version on every rank
(it depends only on the manifest), so the plans stay the same everywhere. The validation set is
thinned to every second sample whenever it exceeds four times ``val_max_samples`` (rank 0).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from workers.cache import StreamedHistory, block, window_bytes_for
from workers.replay import ClassBalancedReservoir, NewestBuffer, reader_replay
from workers.shards import Manifest, ShardInfo, ShardStore
from workers.spec import ReplaySpec, TaskSpec


class GrowingTensor:
    """Rows appended to a tensor with amortised O(1) copies (capacity doubles)."""

    def __init__(
        self, row_shape: tuple[int, ...], dtype: torch.dtype, limit: int | None = None
    ) -> None:
        self.row_shape = row_shape
        self.dtype = dtype
        self.limit = limit  # rows the capacity never exceeds when it need not (a memory budget)
        self._buf = torch.empty((0, *row_shape), dtype=dtype)
        self.size = 0

    def append(self, rows: np.ndarray) -> None:
        n = rows.shape[0]
        if tuple(rows.shape[1:]) != self.row_shape:
            raise ValueError(f"rows of shape {rows.shape[1:]} do not fit {self.row_shape}")
        if self.size + n > self._buf.shape[0]:
            capacity = max(self.size + n, 2 * self._buf.shape[0], 1024)
            if self.limit is not None:
                capacity = max(self.size + n, min(capacity, self.limit))
            grown = torch.empty((capacity, *self.row_shape), dtype=self.dtype)
            grown[: self.size] = self._buf[: self.size]
            self._buf = grown
        self._buf[self.size : self.size + n] = torch.from_numpy(rows).to(self.dtype)
        self.size += n

    @property
    def data(self) -> torch.Tensor:
        """The rows so far (a view; valid until the next :meth:`append`)."""
        return self._buf[: self.size]

    @property
    def nbytes(self) -> int:
        """Bytes allocated (the capacity, not only the rows so far)."""
        return self._buf.nelement() * self._buf.element_size()

    def keep_every_other(self) -> None:
        """Drop every second row (rows 1, 3, 5, …), in place."""
        kept = self._buf[: self.size : 2].clone()
        self._buf, self.size = kept, kept.shape[0]


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
        replay: ReplaySpec | None = None,
        resident_bytes: int | None = None,
    ) -> None:
        replay, max_steps_per_pass = reader_replay(
            task,
            rank=rank,
            world_size=world_size,
            recency_half_life=recency_half_life,
            max_steps_per_pass=max_steps_per_pass,
            replay=replay,
        )
        self.store = store
        self.task = task
        self.rank = rank
        self.world_size = world_size
        self.batch_size = batch_size
        self.seed = seed
        self.replay = replay
        self.recency_half_life = replay.half_life
        self.load_val = load_val
        self.val_max_samples = val_max_samples
        self.max_steps_per_pass = max_steps_per_pass
        self.verify = verify
        self.budget = resident_bytes
        label_bytes = 8 if task.kind == "classification" else 4 * task.output_dim
        self.sample_bytes = 4 * task.sample_elements + label_bytes
        self._reserved = 0  # budget bytes of the newest window and the reservoir
        if replay.newest_share > 0:
            self._reserved += replay.newest_window * self.sample_bytes
        if replay.history == "class_balanced":
            self._reserved += replay.reservoir_size * self.sample_bytes
        if resident_bytes is not None:  # fail at once if nothing is left to stream through
            window_bytes_for(resident_bytes, self._reserved, self.sample_bytes)
        self.manifest = Manifest(job_id="")
        self._stream: StreamedHistory | None = None
        self._reset()

    # -- the snapshot -----------------------------------------------------------------------------

    def _label_layout(self) -> tuple[tuple[int, ...], torch.dtype]:
        if self.task.kind == "regression":
            return (self.task.output_dim,), torch.float32
        return (), torch.int64

    def _reset(self) -> None:
        label_shape, label_dtype = self._label_layout()
        rows = None if self.budget is None else (self.budget - self._reserved) // self.sample_bytes
        self._features = GrowingTensor(tuple(self.task.input_shape), torch.float32, rows)
        self._labels = GrowingTensor(label_shape, label_dtype, rows)
        self._val_features = GrowingTensor(tuple(self.task.input_shape), torch.float32)
        self._val_labels = GrowingTensor(label_shape, label_dtype)
        self._val_versions = GrowingTensor((), torch.int64)  # each sample's data version (slices)
        self._val_seen = 0  # validation samples listed (kept or thinned out)
        self._val_stride = 1
        self._train_ids: list[str] = []  # shard ids in the cache, in manifest order
        self._train_infos: list[ShardInfo] = []
        self._val_ids: list[str] = []
        self._local_shard_ends: list[int] = []  # cumulative local row count after each shard
        self._global_shard_ends: list[int] = []  # cumulative global row count after each shard
        self._rank_rows = [0] * self.world_size  # streamed: every rank's rows (for ``ready``)
        self._train_size = 0
        if self._stream is not None:
            self._stream.close()
        self._stream = None
        self.newest = NewestBuffer(self.replay.newest_window, _seed(self.seed, self.rank, 1))
        self.reservoir: ClassBalancedReservoir | None = None
        if self.replay.history == "class_balanced":
            self.reservoir = ClassBalancedReservoir(
                self.replay.reservoir_size,
                tuple(self.task.input_shape),
                _seed(self.seed, self.rank, 2),
            )

    def update(self, manifest: Manifest) -> int:
        """Adopt a newer snapshot; decode only the shards not yet cached. Returns how many (streamed:
        how many shards were added to the stream's index, though none of them is decoded now)."""
        train = manifest.train_shards
        train_ids = [s.shard_id for s in train]
        val_ids = [s.shard_id for s in manifest.val_shards]
        # Manifests only append; anything else (a compaction, another job) starts the cache over.
        if (
            train_ids[: len(self._train_ids)] != self._train_ids
            or val_ids[: len(self._val_ids)] != self._val_ids
            or manifest.job_id != self.manifest.job_id
        ):
            self._reset()
        initial = not self._train_ids
        new = train[len(self._train_ids) :]
        total = self._train_size + sum(s.num_samples for s in new)
        if self._stream is None and not self._fits(total):
            self._start_streaming()
        if self._stream is None:
            before = self._features.size
            for info in new:
                self._add_train(info)
            self._feed(self._features.data[before:], self._labels.data[before:], initial)
        else:
            self._stream_shards(new, initial)
        loaded = len(new)
        if self.load_val:
            for info in manifest.val_shards[len(self._val_ids) :]:
                self._add_val(info)
                loaded += 1
        self.manifest = manifest
        return loaded

    def _fits(self, train_size: int) -> bool:
        """Whether this rank's share of ``train_size`` samples fits the memory budget."""
        if self.budget is None:
            return True
        share = math.ceil(train_size / self.world_size) * self.sample_bytes
        return share <= self.budget - self._reserved

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
        self._train_infos.append(info)
        self._train_size += features.shape[0]
        self._local_shard_ends.append(self._features.size)
        self._global_shard_ends.append(self._train_size)

    def _add_val(self, info: ShardInfo) -> None:
        features, labels = self._read(info)
        first = (-self._val_seen) % self._val_stride
        self._val_features.append(features[first :: self._val_stride])
        self._val_labels.append(labels[first :: self._val_stride])
        kept = len(range(first, features.shape[0], self._val_stride))
        self._val_versions.append(np.full(kept, info.version, dtype=np.int64))
        self._val_seen += features.shape[0]
        self._val_ids.append(info.shard_id)
        cap = self.val_max_samples
        while cap is not None and self._val_features.size > 4 * cap:
            self._val_features.keep_every_other()
            self._val_labels.keep_every_other()
            self._val_versions.keep_every_other()
            self._val_stride *= 2

    # -- streaming --------------------------------------------------------------------------------

    def _start_streaming(self) -> None:
        """Past the budget: drop the decoded history and index every shard for streaming."""
        assert self.budget is not None
        label_shape, label_dtype = self._label_layout()
        self._features = GrowingTensor(tuple(self.task.input_shape), torch.float32, 0)
        self._labels = GrowingTensor(label_shape, label_dtype, 0)
        self._local_shard_ends, self._global_shard_ends = [], []
        self._stream = StreamedHistory(
            self.store,
            sample_bytes=self.sample_bytes,
            window_bytes=window_bytes_for(self.budget, self._reserved, self.sample_bytes),
            seed=self.seed,
            rank=self.rank,
            half_life=self.replay.half_life if self.replay.history == "recency" else None,
            label_shape=label_shape,
            label_dtype=label_dtype,
        )
        known, self._train_ids, self._train_infos = self._train_infos, [], []
        self._train_size = 0
        self._index(known)

    def _index(self, shards: list[ShardInfo]) -> list[tuple[ShardInfo, int, int]]:
        """Add shards to the stream's index; returns this rank's ``(shard, start, stop)`` rows."""
        assert self._stream is not None
        mine = []
        for info in shards:
            number = len(self._train_ids)
            for r in range(self.world_size):
                lo, hi = block(info.num_samples, (r + number) % self.world_size, self.world_size)
                self._rank_rows[r] += hi - lo
                if r == self.rank:
                    mine.append((info, lo, hi))
            self._train_size += info.num_samples
            self._stream.add(info, mine[-1][1], mine[-1][2], self._train_size)
            self._train_ids.append(info.shard_id)
            self._train_infos.append(info)
        return mine

    def _stream_shards(self, shards: list[ShardInfo], initial: bool) -> None:
        """Index new shards; read only what the newest window and the reservoir keep of them."""
        mine = self._index(shards)
        if self.replay.newest_share > 0:
            want, parts = self.replay.newest_window, []
            for info, lo, hi in reversed(mine):
                if want <= 0:
                    break
                if hi > lo:
                    parts.append(self._rows(info, max(lo, hi - want), hi))
                    want -= parts[-1][0].shape[0]
            if parts:
                x = torch.cat([p[0] for p in reversed(parts)])
                y = torch.cat([p[1] for p in reversed(parts)])
                self.newest.add(x, y, trained=initial)
        if self.reservoir is not None:
            self._offer_streamed(mine)

    def _offer_streamed(self, mine: list[tuple[ShardInfo, int, int]]) -> None:
        """Offer new rows to the reservoir; of a large backlog, a random sample of about four
        reservoirs' worth (so a start-up or a resume never reads the whole history)."""
        assert self.reservoir is not None
        rows = sum(hi - lo for _, lo, hi in mine)
        limit = 4 * self.replay.reservoir_size
        order = list(range(len(mine)))
        if rows > limit:
            gen = torch.Generator().manual_seed(_seed(self.seed, self.rank, 3, self._train_size))
            order = torch.randperm(len(mine), generator=gen).tolist()
        budget = limit
        for i in order:
            info, lo, hi = mine[i]
            take = min(hi - lo, budget)
            if take <= 0:
                break
            x, y = self._rows(info, lo, lo + take)
            self.reservoir.offer(x, y)
            budget -= take

    def _rows(self, info: ShardInfo, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        features, labels = self.store.read_rows(info, start, stop)
        if tuple(features.shape[1:]) != tuple(self.task.input_shape):
            raise ValueError(
                f"shard {info.shard_id} has samples of shape {list(features.shape[1:])}, but the "
                f"task's input_shape is {list(self.task.input_shape)}"
            )
        label_shape, label_dtype = self._label_layout()
        x = torch.from_numpy(features.copy()).to(torch.float32)
        y = torch.from_numpy(labels.copy()).to(label_dtype).reshape(-1, *label_shape)
        return x, y

    def _feed(self, features: torch.Tensor, labels: torch.Tensor, initial: bool) -> None:
        """Resident: hand the new rows to the newest window and the reservoir."""
        if self.replay.newest_share > 0:
            keep = self.replay.newest_window
            self.newest.add(features[-keep:], labels[-keep:], trained=initial)
        if self.reservoir is not None:
            self.reservoir.offer(features, labels)

    # -- sizes ------------------------------------------------------------------------------------

    @property
    def streamed(self) -> bool:
        """Whether the history is streamed from the storage root (past the memory budget)."""
        return self._stream is not None

    @property
    def train_size(self) -> int:
        """Training samples in the snapshot, over all ranks."""
        return self._train_size

    @property
    def local_size(self) -> int:
        """Training samples held (or streamed) by this rank: resident, ``ceil((train_size - rank) /
        world_size)``; streamed, its block of every shard."""
        if self._stream is not None:
            return self._stream.rows
        return self._features.size

    @property
    def val_size(self) -> int:
        return self.manifest.val_size

    @property
    def ready(self) -> bool:
        """Whether every rank holds at least one training sample (so a pass can run)."""
        if self._stream is not None:
            return min(self._rank_rows) > 0
        return self._train_size >= self.world_size

    @property
    def resident_bytes(self) -> int:
        """Bytes of training samples this rank holds now: the decoded history (its allocated
        capacity) or the streamed windows, the newest window and the reservoir."""
        held = self._features.nbytes + self._labels.nbytes + self.newest.resident_bytes
        if self._stream is not None:
            held += self._stream.resident_bytes
        if self.reservoir is not None:
            held += self.reservoir.resident_bytes
        return held

    @property
    def val_resident_bytes(self) -> int:
        return self._val_features.nbytes + self._val_labels.nbytes

    def close(self) -> None:
        """Stop reading ahead (the streamed history's thread)."""
        if self._stream is not None:
            self._stream.close()

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

    def indices(self, plan: PassPlan, count: int | None = None) -> torch.Tensor:
        """This rank's resident sample order for the pass: ``count`` (by default
        ``plan.samples_per_rank``) local indices."""
        n, m = self.local_size, plan.samples_per_rank if count is None else count
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
        """``plan.steps`` batches of ``(features, labels)`` on the CPU: the newest share first,
        then the history's samples."""
        newest = round(self.replay.newest_share * plan.batch_size) if self.newest.size else 0
        history = plan.batch_size - newest
        order: torch.Tensor | None = None
        if history and self.reservoir is None and self._stream is None:
            count = plan.samples_per_rank if newest == 0 else plan.steps * history
            order = self.indices(plan, count)
        features, labels = self._features.data, self._labels.data
        for step in range(plan.steps):
            parts: list[tuple[torch.Tensor, torch.Tensor]] = []
            if newest:
                parts.append(self.newest.draw(newest))
            if not history:
                pass
            elif order is not None:
                idx = order[step * history : (step + 1) * history]
                parts.append((features.index_select(0, idx), labels.index_select(0, idx)))
            elif self.reservoir is not None:
                parts.append(self.reservoir.draw(history))
            else:
                assert self._stream is not None
                parts.append(self._stream.draw(history))
            if len(parts) == 1:
                yield parts[0]
            else:
                yield torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    # -- validation -------------------------------------------------------------------------------

    def validation(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The validation set (rank 0), at most ``val_max_samples`` spread evenly over it."""
        if not self.load_val:
            raise RuntimeError("this reader does not load the validation set (load_val=False)")
        features, labels = self._val_features.data, self._val_labels.data
        idx = self._val_index()
        if idx is not None:
            return features.index_select(0, idx), labels.index_select(0, idx)
        return features, labels

    def validation_versions(self) -> torch.Tensor:
        """The data version of each sample of :meth:`validation`, in the same order (the
        per-slice metrics of ``workers.slices``)."""
        versions = self._val_versions.data
        idx = self._val_index()
        return versions.index_select(0, idx) if idx is not None else versions

    def _val_index(self) -> torch.Tensor | None:
        """The validation rows used, ``val_max_samples`` spread evenly (None: all of them)."""
        n = self._val_features.size
        if self.val_max_samples is not None and n > self.val_max_samples:
            return torch.linspace(0, n - 1, self.val_max_samples).round().long()
        return None

    def example_batch(self, size: int = 256) -> torch.Tensor:
        """Real inputs for tracing and measuring a growth: validation samples, else training."""
        if self.load_val and self._val_features.size:
            return self._val_features.data[:size].clone()
        if self._features.size:
            return self._features.data[:size].clone()
        if self.newest.features is not None:
            return self.newest.features[:size].clone()
        if self.reservoir is not None and self.reservoir.size:
            return self.reservoir.features[:size].clone()
        assert self._stream is not None
        return self._stream.draw(min(size, self._stream.rows))[0].clone()


def _seed(*parts: int) -> int:
    digest = hashlib.sha256(",".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
