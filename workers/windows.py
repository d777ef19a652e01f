"""The workers' view of a language-modelling job's data: windows of tokens from the token history.

A language-modelling job's shards hold tokens (``ShardStore.write_tokens``). The reader keeps, per
rank, a contiguous block of every training shard (rank ``r`` of ``W`` holds tokens
``[T·k/W, T·(k+1)/W)`` of a shard of T tokens, with ``k = (r + shard number) mod W`` so that the
remainders spread), concatenated in manifest order into one token history. A training batch is
``batch_size`` windows of ``context_length + 1`` tokens at random offsets in that history (a
window may cross a document or shard boundary, as nanoGPT's do): ``x = window[:-1]`` predicts
``y = window[1:]``. Everything is counted in tokens: ``train_size`` and ``val_size`` are tokens, a
pass covers about every token of the rank's share once (``ceil(tokens / context_length)`` windows),
at most ``max_steps_per_pass`` steps.

Replay (``workers.spec.ReplaySpec``), in tokens: with ``history="recency"`` a window's start is
drawn with a weight that halves for every ``half_life`` training tokens that arrived after its
shard; ``newest_share`` of every batch comes from the rank's last ``newest_window`` tokens (at
least one window's worth), the tokens not yet trained on first (consecutive windows from the
oldest of them), then uniformly from that tail. ``class_balanced`` is for classification and is
refused. The token history stays resident, in the smallest integer type that holds the vocabulary
(one byte a token for the byte tokenizer; ``resident_bytes`` is not used).

Validation (rank 0): the validation shards' tokens, one after another, cut into consecutive
windows of ``context_length + 1`` tokens that overlap by one (every token after the first is
predicted once); at most ``val_max_samples`` windows, spread evenly over them. Deterministic: the
same snapshot gives the same windows.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator

import numpy as np
import torch

from workers.reader import GrowingTensor, PassPlan
from workers.shards import Manifest, ShardInfo, ShardStore
from workers.spec import ReplaySpec, TaskSpec

EXAMPLE_WINDOWS = 16  # windows used to trace and verify a growth, at most


def _seed(*parts: int) -> int:
    digest = hashlib.sha256(",".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def token_dtype(vocab: int) -> torch.dtype:
    """The smallest dtype that holds every id below ``vocab``: one byte a token for the byte
    tokenizer, two below 32,768 ids, four otherwise."""
    if vocab <= 256:
        return torch.uint8
    if vocab <= 1 << 15:
        return torch.int16
    return torch.int32


def token_block(tokens: int, number: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous tokens of the ``number``-th training shard (``tokens`` long)."""
    k = (rank + number) % world_size
    return tokens * k // world_size, tokens * (k + 1) // world_size


class TokenReader:
    """A rank's share of a language-modelling job's token history, drawn as windows.

    The same interface as :class:`workers.reader.DataReader`, which the train loop uses for every
    other task.
    """

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
        if task.kind != "language_modeling":
            raise ValueError(f"TokenReader reads language_modeling jobs, not {task.kind}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        if recency_half_life is not None and recency_half_life <= 0:
            raise ValueError("recency_half_life must be positive (or None for uniform replay)")
        if replay is None:
            replay = ReplaySpec(
                history="uniform" if recency_half_life is None else "recency",
                half_life=recency_half_life,
                newest_share=0.0,
            )
        else:
            max_steps_per_pass = replay.max_steps_per_pass
        if replay.history == "class_balanced":
            raise ValueError("replay 'class_balanced' is for classification tasks")
        self.store = store
        self.task = task
        self.context_length = task.context_length
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
        self.resident_bytes_budget = resident_bytes  # not used: the token history stays resident
        self.manifest = Manifest(job_id="")
        self._reset()

    def _reset(self) -> None:
        dtype = token_dtype(self.task.vocab)
        self._tokens = GrowingTensor((), dtype)
        self._val_tokens = GrowingTensor((), dtype)
        self._train_ids: list[str] = []
        self._val_ids: list[str] = []
        self._local_ends: list[int] = []  # local token count after each shard
        self._global_ends: list[int] = []  # training tokens over all ranks after each shard
        self._rank_tokens = [0] * self.world_size
        self._train_size = 0
        self._fresh = 0  # the first local token not yet trained on (newest share)
        self._val_windows: torch.Tensor | None = None
        self._val_starts: torch.Tensor | None = None  # each validation window's first token
        self._val_shard_ends: list[int] = []  # validation tokens after each validation shard
        self._val_shard_versions: list[int] = []

    # -- the snapshot ------------------------------------------------------------------------------

    def update(self, manifest: Manifest) -> int:
        """Adopt a newer snapshot; read only the shards not yet held. Returns how many."""
        train_ids = [s.shard_id for s in manifest.train_shards]
        val_ids = [s.shard_id for s in manifest.val_shards]
        if (
            train_ids[: len(self._train_ids)] != self._train_ids
            or val_ids[: len(self._val_ids)] != self._val_ids
            or manifest.job_id != self.manifest.job_id
        ):
            self._reset()
        initial = not self._train_ids
        new = manifest.train_shards[len(self._train_ids) :]
        for info in new:
            self._add_train(info)
        if initial:
            self._fresh = self._tokens.size  # a start or a resume: the history counts as trained
        loaded = len(new)
        if self.load_val:
            for info in manifest.val_shards[len(self._val_ids) :]:
                self._add_val(info)
                loaded += 1
        self.manifest = manifest
        return loaded

    def _read(self, info: ShardInfo) -> np.ndarray:
        tokens, _ = self.store.read_tokens(info, verify=self.verify)
        if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) >= self.task.vocab):
            raise ValueError(
                f"shard {info.shard_id} holds token ids outside the vocabulary "
                f"[0, {self.task.vocab})"
            )
        return tokens

    def _add_train(self, info: ShardInfo) -> None:
        number = len(self._train_ids)
        for r in range(self.world_size):
            lo, hi = token_block(info.num_samples, number, r, self.world_size)
            self._rank_tokens[r] += hi - lo
        lo, hi = token_block(info.num_samples, number, self.rank, self.world_size)
        if hi > lo:
            self._tokens.append(self._read(info)[lo:hi])
        self._train_ids.append(info.shard_id)
        self._train_size += info.num_samples
        self._local_ends.append(self._tokens.size)
        self._global_ends.append(self._train_size)

    def _add_val(self, info: ShardInfo) -> None:
        self._val_tokens.append(self._read(info))
        self._val_ids.append(info.shard_id)
        self._val_shard_ends.append(self._val_tokens.size)
        self._val_shard_versions.append(info.version)
        self._val_windows = None

    # -- sizes -------------------------------------------------------------------------------------

    @property
    def train_size(self) -> int:
        """Training tokens in the snapshot, over all ranks."""
        return self._train_size

    @property
    def local_size(self) -> int:
        """Training tokens this rank holds."""
        return self._tokens.size

    @property
    def val_size(self) -> int:
        """Validation tokens in the snapshot."""
        return self.manifest.val_size

    @property
    def ready(self) -> bool:
        """Whether every rank holds at least two tokens (one prediction)."""
        return min(self._rank_tokens) >= 2

    @property
    def streamed(self) -> bool:
        return False

    @property
    def resident_bytes(self) -> int:
        return self._tokens.nbytes

    @property
    def val_resident_bytes(self) -> int:
        return self._val_tokens.nbytes

    @property
    def window(self) -> int:
        """Tokens per training window: ``context_length + 1``, fewer while the shortest rank's
        history is shorter (the same on every rank)."""
        return min(self.context_length + 1, *self._rank_tokens)

    def close(self) -> None:
        """Nothing runs in the background."""

    # -- passes ------------------------------------------------------------------------------------

    def plan(self, pass_index: int) -> PassPlan:
        """About one visit of every token of the rank's share: the same on every rank."""
        per_rank = math.ceil(self._train_size / self.world_size)
        windows = math.ceil(per_rank / self.context_length) if per_rank else 0
        steps = math.ceil(windows / self.batch_size) if windows else 0
        if self.max_steps_per_pass is not None:
            steps = min(steps, self.max_steps_per_pass)
        return PassPlan(
            index=pass_index,
            steps=steps,
            samples_per_rank=steps * self.batch_size * max(self.window - 1, 0),
            batch_size=self.batch_size,
            dataset_version=self.manifest.version,
            train_size=self._train_size,
        )

    def _history_starts(self, count: int, gen: torch.Generator) -> torch.Tensor:
        """``count`` window starts over the whole history: uniform, or recency-weighted."""
        last = self.local_size - self.window  # the last valid start
        if self.recency_half_life is None:
            return torch.randint(0, last + 1, (count,), generator=gen)
        los, his, weights = [], [], []
        start = 0
        for local_end, global_end in zip(self._local_ends, self._global_ends, strict=True):
            lo, hi = start, min(local_end, last + 1)
            start = local_end
            if hi <= lo:
                continue
            newer = self._train_size - global_end  # tokens that arrived after this shard
            los.append(lo)
            his.append(hi)
            weights.append((hi - lo) * 0.5 ** (newer / self.recency_half_life))
        if not los:  # every shard's block starts past the last valid start
            return torch.zeros(count, dtype=torch.long)
        segment = torch.multinomial(
            torch.tensor(weights, dtype=torch.float64), count, replacement=True, generator=gen
        )
        lo_t, span = torch.tensor(los), torch.tensor(his) - torch.tensor(los)
        offset = (torch.rand(count, generator=gen, dtype=torch.float64) * span[segment]).long()
        return lo_t[segment] + offset

    def _newest_starts(self, count: int, gen: torch.Generator) -> torch.Tensor:
        """``count`` window starts in the newest tokens: untrained ones first, then uniform."""
        w, n = self.window, self.local_size
        tail = max(n - max(self.replay.newest_window, w), 0)  # the newest tail's first start
        starts: list[int] = []
        while len(starts) < count and self._fresh < n:
            start = min(max(self._fresh - 1, 0), n - w)  # its targets begin at the first untrained
            starts.append(start)
            self._fresh = start + w  # the first token that no window has predicted yet
        rest = count - len(starts)
        drawn = torch.randint(tail, n - w + 1, (rest,), generator=gen)
        return torch.cat([torch.tensor(starts, dtype=torch.long), drawn])

    def batches(self, plan: PassPlan) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``plan.steps`` batches of ``(x, y)``: int64 (batch, window − 1) ids and the ids that
        follow each, on the CPU; the newest share first in every batch."""
        if self.local_size < 2:
            raise RuntimeError(
                f"rank {self.rank} holds {self.local_size} training tokens "
                f"(train_size={self._train_size}); wait until ready"
            )
        gen = torch.Generator().manual_seed(_seed(self.seed, plan.index, self.rank))
        newest = round(self.replay.newest_share * plan.batch_size)
        offsets = torch.arange(self.window)
        tokens = self._tokens.data
        for _ in range(plan.steps):
            parts = []
            if newest:
                parts.append(self._newest_starts(newest, gen))
            if plan.batch_size - newest:
                parts.append(self._history_starts(plan.batch_size - newest, gen))
            starts = torch.cat(parts)
            seq = tokens[starts[:, None] + offsets].long()
            yield seq[:, :-1], seq[:, 1:]

    # -- validation --------------------------------------------------------------------------------

    def _windows(self) -> torch.Tensor:
        """The validation windows (N, L + 1) (or one shorter window for a short validation set)."""
        if self._val_windows is None:
            tokens = self._val_tokens.data.long()
            n, length = tokens.shape[0], self.context_length
            full = max((n - 1) // length, 0)
            starts = torch.zeros(1 if n >= 2 else 0, dtype=torch.long)
            if full:
                starts = torch.arange(full) * length
                if self.val_max_samples is not None and full > self.val_max_samples:
                    pick = torch.linspace(0, full - 1, self.val_max_samples).round().long()
                    starts = starts[pick]
                windows = tokens[starts[:, None] + torch.arange(length + 1)]
            else:
                windows = tokens[None, :] if n >= 2 else tokens.new_zeros((0, 2))
            self._val_windows, self._val_starts = windows, starts
        return self._val_windows

    def validation(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` of the fixed validation windows (rank 0), at most ``val_max_samples``."""
        if not self.load_val:
            raise RuntimeError("this reader does not load the validation set (load_val=False)")
        windows = self._windows()
        return windows[:, :-1], windows[:, 1:]

    def validation_versions(self) -> torch.Tensor:
        """The data version of each validation window (that of the shard where it starts)."""
        self._windows()
        assert self._val_starts is not None
        ends = torch.tensor(self._val_shard_ends, dtype=torch.long)
        versions = torch.tensor(self._val_shard_versions, dtype=torch.long)
        return versions[torch.searchsorted(ends, self._val_starts, right=True)]

    def example_batch(self, size: int = 256) -> torch.Tensor:
        """Real inputs for tracing and measuring a growth: up to ``min(size, 16)`` windows of
        validation ids, else of training ids."""
        count = max(1, min(size, EXAMPLE_WINDOWS))
        if self.load_val and self._windows().shape[0]:
            return self._windows()[:count, :-1].clone()
        w = self.window
        n = self.local_size
        starts = torch.unique(torch.linspace(0, n - w, count).round().long())
        return self._tokens.data[starts[:, None] + torch.arange(w - 1)].long()
