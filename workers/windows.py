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
refused. Tokens are held in the smallest integer type that holds the vocabulary (one byte a token
for the byte tokenizer).

Bounded memory (``workers.spec.DataSpec.resident_bytes``, per rank): while the rank's share of the
history fits the budget it stays resident; once the largest rank's share does not (the same
manifest version on every rank), the rank drops it and draws its windows from a
:class:`TokenStream`, which reads the history from the storage root by byte ranges
(``ShardStore.read_token_range``): the history is cut into **pieces** of consecutive window starts
(with the ``context_length`` tokens after the last start), an epoch is a shuffled (or, for
recency, weighted) order of the pieces, and a **buffer** is consecutive pieces of the epoch up to
half the budget left after the newest tail. Windows start uniformly over a buffer's starts, about
one window per ``context_length`` starts, and the next buffer is read ahead while one is trained
on, so at most two buffers are resident. The newest share keeps the rank's last
``max(newest_window, context_length + 1)`` tokens resident (untrained tokens older than that are
left to the history's draws). Start-up and resume past the budget only index the shards. With a
budget the validation windows are read by byte ranges as well, and only they stay resident.

Validation (rank 0): the validation shards' tokens, one after another, cut into consecutive
windows of ``context_length + 1`` tokens that overlap by one (every token after the first is
predicted once); at most ``val_max_samples`` windows, spread evenly over them. Deterministic: the
same snapshot gives the same windows.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from workers.cache import seed_of, window_bytes_for
from workers.reader import GrowingTensor, PassPlan
from workers.replay import reader_replay
from workers.shards import Manifest, ShardInfo, ShardStore
from workers.spec import ReplaySpec, TaskSpec, token_itemsize

EXAMPLE_WINDOWS = 16  # windows used to trace and verify a growth, at most


def token_dtype(vocab: int) -> torch.dtype:
    """The smallest dtype that holds every id below ``vocab``: one byte a token for the byte
    tokenizer, two below 32,768 ids, four otherwise."""
    return {1: torch.uint8, 2: torch.int16, 4: torch.int32}[token_itemsize(vocab)]


_NUMPY = {torch.uint8: np.uint8, torch.int16: np.int16, torch.int32: np.int32}


def token_block(tokens: int, number: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous tokens of the ``number``-th training shard (``tokens`` long)."""
    k = (rank + number) % world_size
    return tokens * k // world_size, tokens * (k + 1) // world_size


@dataclass(frozen=True)
class Segment:
    """A shard's tokens ``[offset, offset + stop - start)`` as tokens ``[start, stop)`` of a
    history (a rank's share of the training shards, or the validation shards)."""

    info: ShardInfo
    offset: int
    start: int
    stop: int


class History:
    """Segments one after another: a history of tokens read from the shards by byte ranges."""

    def __init__(self, store: ShardStore, vocab: int, dtype: torch.dtype) -> None:
        self.store = store
        self.vocab = vocab
        self.dtype = dtype
        self.segments: list[Segment] = []
        self.stops: list[int] = []  # each segment's stop, for bisection
        self.global_ends: list[int] = []  # per segment: training tokens over all ranks after it
        self.size = 0

    def add(self, info: ShardInfo, lo: int, hi: int, global_end: int = 0) -> None:
        """Shard tokens ``[lo, hi)`` join the history's end (none is read now)."""
        self.segments.append(Segment(info, lo, self.size, self.size + hi - lo))
        self.size += hi - lo
        self.stops.append(self.size)
        self.global_ends.append(global_end)

    def read(self, start: int, stop: int) -> torch.Tensor:
        """Tokens ``[start, stop)``: a byte range of each shard they lie in."""
        parts = []
        first = bisect.bisect_right(self.stops, start)
        for seg in self.segments[first:]:
            if seg.start >= stop:
                break
            lo, hi = max(start, seg.start), min(stop, seg.stop)
            if hi > lo:
                a = seg.offset + lo - seg.start
                parts.append(self.store.read_token_range(seg.info, a, a + hi - lo))
        tokens = np.concatenate(parts) if len(parts) > 1 else parts[0]
        if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab):
            raise ValueError(f"the shards hold token ids outside the vocabulary [0, {self.vocab})")
        return torch.from_numpy(tokens.astype(_NUMPY[self.dtype]))

    def gather(self, starts: torch.Tensor, length: int) -> torch.Tensor:
        """Windows of ``length`` tokens at ``starts`` (sorted), one read per run of starts that
        begins in the same segment; (len(starts), length) tokens."""
        out = torch.empty((starts.shape[0], length), dtype=self.dtype)
        begin = 0
        for i in range(1, starts.shape[0] + 1):
            here = bisect.bisect_right(self.stops, int(starts[begin]))
            if i < starts.shape[0] and bisect.bisect_right(self.stops, int(starts[i])) == here:
                continue
            lo = int(starts[begin])
            span = self.read(lo, int(starts[i - 1]) + length)
            out[begin:i] = span[(starts[begin:i] - lo)[:, None] + torch.arange(length)]
            begin = i
        return out


Buffer = tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]  # tokens, piece offsets/starts, w


class TokenStream:
    """A rank's history drawn as windows from buffers of pieces read by byte ranges."""

    def __init__(
        self,
        history: History,
        *,
        window_bytes: int,
        context_length: int,
        seed: int,
        rank: int,
        half_life: float | None,
    ) -> None:
        itemsize = torch.empty((), dtype=history.dtype).element_size()
        tokens = window_bytes // itemsize
        assert tokens >= context_length + 2, "buffer_bytes sizes a buffer for a window at least"
        self.history = history
        self.itemsize = itemsize
        self.buffer_tokens = tokens
        self.context_length = context_length
        # a piece is a quarter of a buffer where that leaves starts, else a whole buffer
        quarter = tokens // 4 - context_length
        self.piece_starts = quarter if quarter > 0 else tokens - context_length
        self.seed = seed
        self.rank = rank
        self.half_life = half_life
        self._epoch = -1
        self._order: list[int] = []
        self._next = 0
        self._buffers = 0
        self._current: Buffer | None = None
        self._left = 0  # windows still to draw from the current buffer
        self._gen = torch.Generator()
        self._ahead: Future[Buffer] | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="token-buffer")
        self.reads = 0  # pieces read (for tests and benchmarks)

    @property
    def resident_bytes(self) -> int:
        """Bytes of the buffers' tokens held now: the one drawn from and the one read ahead."""
        held = 0 if self._current is None else _nbytes(self._current[0])
        ahead = self._ahead
        if ahead is not None and ahead.done() and ahead.exception() is None:
            held += _nbytes(ahead.result()[0])
        return held

    def _pieces(self, w: int) -> int:
        return math.ceil((self.history.size - w + 1) / self.piece_starts)

    def _new_epoch(self, w: int) -> None:
        self._epoch += 1
        n = self._pieces(w)
        gen = torch.Generator().manual_seed(seed_of(self.seed, self.rank, "epoch", self._epoch))
        if self.half_life is None:
            self._order = torch.randperm(n, generator=gen).tolist()
        else:
            first = torch.arange(n) * self.piece_starts
            shard = torch.searchsorted(torch.tensor(self.history.stops), first, right=True)
            ends = torch.tensor(self.history.global_ends, dtype=torch.float64)[shard]
            newer = self.history.global_ends[-1] - ends
            weights = torch.pow(0.5, newer / self.half_life)
            self._order = torch.multinomial(weights, n, replacement=True, generator=gen).tolist()
        self._next = 0

    def _plan(self, w: int) -> list[tuple[int, int]]:
        """The next buffer's pieces as token ranges ``[start, stop)`` (at least one)."""
        if self._next >= len(self._order):
            self._new_epoch(w)
        last = self.history.size - w  # the last valid start
        ranges: list[tuple[int, int]] = []
        size = 0
        while self._next < len(self._order):
            lo = self._order[self._next] * self.piece_starts
            hi = min(lo + self.piece_starts - 1, last) + w  # the last start's window ends there
            if ranges and size + hi - lo > self.buffer_tokens:
                break
            ranges.append((lo, hi))
            size += hi - lo
            self._next += 1
        return ranges

    def _read(self, ranges: list[tuple[int, int]], w: int) -> Buffer:
        parts = [self.history.read(lo, hi) for lo, hi in ranges]
        self.reads += len(parts)
        lengths = torch.tensor([p.shape[0] for p in parts])
        offsets = torch.cumsum(lengths, 0) - lengths
        starts = lengths - w + 1  # each piece's window starts
        return torch.cat(parts), torch.stack([offsets, torch.cumsum(starts, 0)]), starts, w

    def _submit(self, w: int) -> Future[Buffer]:
        return self._pool.submit(self._read, self._plan(w), w)

    def _advance(self, w: int) -> None:
        ahead = self._ahead if self._ahead is not None else self._submit(w)
        self._current = None  # free the spent buffer before the next one is read ahead
        self._current = ahead.result()
        self._buffers += 1
        self._gen.manual_seed(seed_of(self.seed, self.rank, "buffer", self._buffers))
        self._left = max(1, math.ceil(int(self._current[2].sum()) / self.context_length))
        self._ahead = self._submit(w)

    def draw(self, count: int, w: int) -> torch.Tensor:
        """The next ``count`` windows of ``w`` tokens (count, w), in the history's dtype."""
        out = []
        while count > 0:
            if self._current is None or self._left <= 0 or self._current[3] != w:
                self._advance(w)
            assert self._current is not None
            tokens, index, starts, _ = self._current
            take = min(count, self._left)
            r = torch.randint(0, int(index[1, -1]), (take,), generator=self._gen)
            piece = torch.searchsorted(index[1], r, right=True)
            first = index[1, piece] - starts[piece]  # the piece's first start, counted over all
            at = index[0, piece] + r - first
            out.append(tokens[at[:, None] + torch.arange(w)])
            self._left -= take
            count -= take
        return out[0] if len(out) == 1 else torch.cat(out)

    def close(self) -> None:
        if self._ahead is not None:
            self._ahead.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._current = self._ahead = None


def buffer_bytes(budget: int, reserved: int, itemsize: int, context_length: int) -> int:
    """Each of a :class:`TokenStream`'s two buffers' bytes under a budget of which ``reserved``
    (the newest tail) is taken already; refused where a buffer cannot hold a window and more."""
    window_bytes = window_bytes_for(budget, reserved, itemsize)
    if window_bytes // itemsize < context_length + 2:
        raise ValueError(
            f"the memory budget of {budget:,} bytes leaves {window_bytes:,} bytes a streamed "
            f"buffer, fewer than a window of {context_length + 1} tokens and one more; raise "
            "data.resident_bytes or lower replay.newest_window"
        )
    return window_bytes


def _nbytes(t: torch.Tensor) -> int:
    return t.nelement() * t.element_size()


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
        self.budget = resident_bytes
        self.dtype = token_dtype(task.vocab)
        self.itemsize = torch.empty((), dtype=self.dtype).element_size()
        # the newest tail a streamed rank keeps resident (tokens)
        newest = replay.newest_share > 0
        self.tail_tokens = max(replay.newest_window, self.context_length + 1) if newest else 0
        self._window_bytes = 0  # fail at once if nothing is left to stream through
        if resident_bytes is not None:
            self._window_bytes = buffer_bytes(
                resident_bytes, self.tail_tokens * self.itemsize, self.itemsize, self.context_length
            )
        self.manifest = Manifest(job_id="")
        self._stream: TokenStream | None = None
        self._reset()

    def _reset(self) -> None:
        limit = None if self.budget is None else self.budget // self.itemsize
        self._tokens = GrowingTensor((), self.dtype, limit)  # the resident history
        self._val_tokens = GrowingTensor((), self.dtype)  # without a budget only
        self._history = History(self.store, self.task.vocab, self.dtype)
        self._val_history = History(self.store, self.task.vocab, self.dtype)
        if self._stream is not None:
            self._stream.close()
        self._stream = None
        self._tail = torch.empty(0, dtype=self.dtype)  # streamed: the newest tokens
        self._tail_start = 0
        self._train_ids: list[str] = []
        self._val_ids: list[str] = []
        self._rank_tokens = [0] * self.world_size
        self._train_size = 0
        self._fresh = 0  # the first local token not yet trained on (newest share)
        self._val_windows: torch.Tensor | None = None
        self._val_starts: torch.Tensor | None = None  # each validation window's first token
        self._val_shard_versions: list[int] = []

    # -- the snapshot ------------------------------------------------------------------------------

    def update(self, manifest: Manifest) -> int:
        """Adopt a newer snapshot; read only the shards not yet held (streamed: none, beyond the
        newest tail). Returns how many shards were added."""
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
        if self._stream is None and not self._fits(new):
            self._start_streaming()
        for info in new:
            self._add_train(info)
        if self._stream is not None:
            self._update_tail()
        if initial:
            self._fresh = self.local_size  # a start or a resume: the history counts as trained
        loaded = len(new)
        if self.load_val:
            for info in manifest.val_shards[len(self._val_ids) :]:
                self._add_val(info)
                loaded += 1
        self.manifest = manifest
        return loaded

    def _fits(self, new: list[ShardInfo]) -> bool:
        """Whether every rank's share, with ``new``, fits the budget (the same on every rank)."""
        if self.budget is None:
            return True
        shares = list(self._rank_tokens)
        for number, info in enumerate(new, start=len(self._train_ids)):
            for r in range(self.world_size):
                lo, hi = token_block(info.num_samples, number, r, self.world_size)
                shares[r] += hi - lo
        return max(shares) * self.itemsize <= self.budget

    def _start_streaming(self) -> None:
        """Past the budget: drop the resident history and stream it from the storage root."""
        self._tokens = GrowingTensor((), self.dtype, 0)
        self._stream = TokenStream(
            self._history,
            window_bytes=self._window_bytes,
            context_length=self.context_length,
            seed=self.seed,
            rank=self.rank,
            half_life=self.recency_half_life,
        )

    def _update_tail(self) -> None:
        """Streamed: keep the rank's last ``tail_tokens`` tokens resident (the newest share)."""
        n, end = self._history.size, self._tail_start + self._tail.shape[0]
        if not self.tail_tokens or end == n:
            return
        start = max(0, n - self.tail_tokens)
        kept = self._tail[start - self._tail_start :] if end > start else self._tail[:0]
        self._tail = torch.cat([kept, self._history.read(max(start, end), n)])
        self._tail_start = start

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
        self._train_size += info.num_samples
        self._history.add(info, lo, hi, self._train_size)
        if hi > lo and self._stream is None:
            self._tokens.append(self._read(info)[lo:hi])
        self._train_ids.append(info.shard_id)

    def _add_val(self, info: ShardInfo) -> None:
        if self.budget is None:
            self._val_tokens.append(self._read(info))
        self._val_history.add(info, 0, info.num_samples)
        self._val_ids.append(info.shard_id)
        self._val_shard_versions.append(info.version)
        self._val_windows = None

    # -- sizes -------------------------------------------------------------------------------------

    @property
    def train_size(self) -> int:
        """Training tokens in the snapshot, over all ranks."""
        return self._train_size

    @property
    def local_size(self) -> int:
        """Training tokens of this rank's share (held, or streamed)."""
        return self._history.size

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
        """Whether the history is streamed from the storage root (past the memory budget)."""
        return self._stream is not None

    @property
    def resident_bytes(self) -> int:
        """Bytes of training tokens held now: the resident history (its allocated capacity), or
        the streamed buffers and the newest tail."""
        held = self._tokens.nbytes + _nbytes(self._tail)
        if self._stream is not None:
            held += self._stream.resident_bytes
        return held

    @property
    def val_resident_bytes(self) -> int:
        windows = 0 if self._val_windows is None else _nbytes(self._val_windows)
        return self._val_tokens.nbytes + (windows if self.budget is not None else 0)

    @property
    def window(self) -> int:
        """Tokens per training window: ``context_length + 1``, fewer while the shortest rank's
        history is shorter (the same on every rank)."""
        return min(self.context_length + 1, *self._rank_tokens)

    def close(self) -> None:
        """Stop reading ahead (the streamed history's thread)."""
        if self._stream is not None:
            self._stream.close()

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
        for local_end, global_end in zip(
            self._history.stops, self._history.global_ends, strict=True
        ):
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
        """``count`` window starts in the newest tokens: untrained ones first, then uniform
        (streamed: within the resident newest tail)."""
        w, n = self.window, self.local_size
        tail = max(n - max(self.replay.newest_window, w), 0)  # the newest tail's first start
        if self._stream is not None:  # untrained tokens before the resident tail are skipped
            self._fresh = max(self._fresh, self._tail_start + 1)
        starts: list[int] = []
        while len(starts) < count and self._fresh < n:
            start = min(max(self._fresh - 1, 0), n - w)  # its targets begin at the first untrained
            starts.append(start)
            self._fresh = start + w  # the first token that no window has predicted yet
        rest = count - len(starts)
        drawn = torch.randint(tail, n - w + 1, (rest,), generator=gen)
        return torch.cat([torch.tensor(starts, dtype=torch.long), drawn])

    def _at(self, starts: torch.Tensor, w: int) -> torch.Tensor:
        """The windows of ``w`` tokens at ``starts``: of the resident history or newest tail."""
        if self._stream is None:
            return self._tokens.data[starts[:, None] + torch.arange(w)]
        return self._tail[(starts - self._tail_start)[:, None] + torch.arange(w)]

    def batches(self, plan: PassPlan) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``plan.steps`` batches of ``(x, y)``: int64 (batch, window − 1) ids and the ids that
        follow each, on the CPU; the newest share first in every batch."""
        if self.local_size < 2:
            raise RuntimeError(
                f"rank {self.rank} holds {self.local_size} training tokens "
                f"(train_size={self._train_size}); wait until ready"
            )
        gen = torch.Generator().manual_seed(seed_of(self.seed, plan.index, self.rank))
        newest = round(self.replay.newest_share * plan.batch_size)
        w = self.window
        for _ in range(plan.steps):
            parts = []
            if newest:
                parts.append(self._at(self._newest_starts(newest, gen), w))
            history = plan.batch_size - newest
            if history and self._stream is not None:
                parts.append(self._stream.draw(history, w))
            elif history:
                parts.append(self._at(self._history_starts(history, gen), w))
            seq = (parts[0] if len(parts) == 1 else torch.cat(parts)).long()
            yield seq[:, :-1], seq[:, 1:]

    # -- validation --------------------------------------------------------------------------------

    def _windows(self) -> torch.Tensor:
        """The validation windows (N, L + 1) (or one shorter window for a short validation set);
        with a budget, read by byte ranges, only the windows held."""
        if self._val_windows is None:
            n, length = self._val_history.size, self.context_length
            full = max((n - 1) // length, 0)
            starts = torch.zeros(1 if n >= 2 else 0, dtype=torch.long)
            if full:
                starts = torch.arange(full) * length
                if self.val_max_samples is not None and full > self.val_max_samples:
                    pick = torch.linspace(0, full - 1, self.val_max_samples).round().long()
                    starts = starts[pick]
                if self.budget is None:
                    tokens = self._val_tokens.data
                    windows = tokens[starts[:, None] + torch.arange(length + 1)]
                else:
                    windows = self._val_history.gather(starts, length + 1)
            elif n >= 2 and self.budget is None:
                windows = self._val_tokens.data[None]
            elif n >= 2:
                windows = self._val_history.read(0, n)[None]
            else:
                windows = torch.zeros((0, 2), dtype=self.dtype)
            self._val_windows, self._val_starts = windows.long(), starts
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
        ends = torch.tensor(self._val_history.stops, dtype=torch.long)
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
        if self._stream is not None:
            return self._history.gather(starts, w - 1).long()
        return self._tokens.data[starts[:, None] + torch.arange(w - 1)].long()
