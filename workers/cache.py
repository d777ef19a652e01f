"""A rank's history streamed from the storage root through a bounded cache of two windows.

When a rank's share of the training history no longer fits its memory budget
(``DataSpec.resident_bytes``), :class:`workers.reader.DataReader` stops holding it and draws the
history's samples from a :class:`StreamedHistory` instead:

* the rank's share is its own contiguous block of rows in every shard (rows
  ``[floor(r·N/W), floor((r+1)·N/W))`` of a shard of ``N`` rows on rank ``r`` of ``W``), cut into
  **pieces** of at most a quarter of a window; a piece is read as byte ranges of its shard
  (``ShardStore.read_rows``), so a rank reads only its own rows;
* an **epoch** is an order over the pieces: a seeded shuffle (``uniform``), or pieces drawn with
  replacement with probabilities proportional to their recency weight times their rows
  (``recency``);
* a **window** is consecutive pieces of the epoch up to ``window_bytes``; its rows are handed out
  in a shuffled order. While one window is trained on, the next one is read in a background
  thread: two windows at most are resident, so the resident bytes are at most
  ``2 × window_bytes`` (plus one piece) whatever the history's size;
* pieces appended while an epoch runs join the next epoch (the newest share of every batch,
  ``workers.replay``, trains on them at once).

Nothing here decodes the whole history: start-up and resume only build the piece index from the
manifest.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from workers.shards import ShardInfo, ShardStore


def seed_of(*parts: int | str) -> int:
    """A 63-bit seed from its parts (the same on every machine)."""
    digest = hashlib.sha256(",".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def block(num_samples: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous rows of a shard of ``num_samples`` rows."""
    return num_samples * rank // world_size, num_samples * (rank + 1) // world_size


Window = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # features, labels, the row order


class StreamedHistory:
    """An endless stream of a rank's history samples, read window by window from the shards."""

    def __init__(
        self,
        store: ShardStore,
        *,
        sample_bytes: int,
        window_bytes: int,
        seed: int,
        rank: int,
        half_life: float | None = None,
        label_shape: tuple[int, ...] = (),
        label_dtype: torch.dtype = torch.int64,
    ) -> None:
        self.store = store
        self.sample_bytes = sample_bytes
        self.window_bytes = max(window_bytes, sample_bytes)
        self.piece_rows = max(1, self.window_bytes // (4 * sample_bytes))
        self.seed = seed
        self.rank = rank
        self.half_life = half_life
        self.label_shape = label_shape
        self.label_dtype = label_dtype
        self.shards: list[ShardInfo] = []
        self._shard: list[int] = []  # per piece: the index into self.shards
        self._start: list[int] = []
        self._stop: list[int] = []
        self._global_end: list[int] = []  # per piece: training samples up to its shard's end
        self.rows = 0  # this rank's rows over all pieces
        self.train_size = 0  # every rank's training samples
        self._epoch = -1
        self._order: list[int] = []
        self._next = 0  # position in self._order of the next window's first piece
        self._windows = 0
        self._current: Window | None = None
        self._cursor = 0
        self._ahead: Future[Window] | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-window")
        self.reads = 0  # pieces read (for tests and benchmarks)

    # -- the index --------------------------------------------------------------------------------

    def add(self, info: ShardInfo, start: int, stop: int, global_end: int) -> None:
        """Add this rank's rows ``[start, stop)`` of a shard (none are read now)."""
        self.train_size = global_end
        if stop <= start:
            return
        self.shards.append(info)
        index = len(self.shards) - 1
        for lo in range(start, stop, self.piece_rows):
            self._shard.append(index)
            self._start.append(lo)
            self._stop.append(min(stop, lo + self.piece_rows))
            self._global_end.append(global_end)
        self.rows += stop - start

    @property
    def pieces(self) -> int:
        return len(self._shard)

    @property
    def resident_bytes(self) -> int:
        """Bytes of the windows held now: the one trained on and the one read ahead."""
        held = _nbytes(self._current)
        if self._ahead is not None and self._ahead.done() and self._ahead.exception() is None:
            held += _nbytes(self._ahead.result())
        return held

    # -- epochs and windows -----------------------------------------------------------------------

    def _new_epoch(self) -> None:
        self._epoch += 1
        n = self.pieces
        gen = torch.Generator().manual_seed(seed_of(self.seed, self.rank, "epoch", self._epoch))
        if self.half_life is None:
            self._order = torch.randperm(n, generator=gen).tolist()
        else:
            rows = torch.tensor(self._stop, dtype=torch.float64) - torch.tensor(self._start)
            newer = self.train_size - torch.tensor(self._global_end, dtype=torch.float64)
            weights = rows * torch.pow(0.5, newer / self.half_life)
            self._order = torch.multinomial(weights, n, replacement=True, generator=gen).tolist()
        self._next = 0

    def _plan_window(self) -> list[int]:
        """The next window's pieces (at least one), starting a new epoch where one ends."""
        if self._next >= len(self._order):
            self._new_epoch()
        pieces: list[int] = []
        size = 0
        while self._next < len(self._order):
            piece = self._order[self._next]
            rows = self._stop[piece] - self._start[piece]
            if pieces and size + rows * self.sample_bytes > self.window_bytes:
                break
            pieces.append(piece)
            size += rows * self.sample_bytes
            self._next += 1
        return pieces

    def _read_window(self, pieces: list[int], seed: int) -> Window:
        features, labels = [], []
        for piece in pieces:
            x, y = self.store.read_rows(
                self.shards[self._shard[piece]], self._start[piece], self._stop[piece]
            )
            features.append(x)
            labels.append(y)
        self.reads += len(pieces)
        x_all = np.concatenate(features) if len(features) > 1 else features[0].copy()
        y_all = np.concatenate(labels) if len(labels) > 1 else labels[0].copy()
        x_t = torch.from_numpy(x_all).to(torch.float32)
        y_t = torch.from_numpy(y_all).to(self.label_dtype)
        y_t = y_t.reshape(y_t.shape[0], *self.label_shape)
        # The rows are handed out in a shuffled order (one index_select a batch, as the resident
        # reader does), so the window itself is never copied again.
        order = torch.randperm(x_t.shape[0], generator=torch.Generator().manual_seed(seed))
        return x_t, y_t, order

    def _submit(self) -> Future[Window]:
        pieces = self._plan_window()
        self._windows += 1
        seed = seed_of(self.seed, self.rank, "window", self._windows)
        return self._pool.submit(self._read_window, pieces, seed)

    def _advance(self) -> None:
        ahead = self._ahead if self._ahead is not None else self._submit()
        self._current = None  # free the spent window before the next one is read ahead
        self._current = ahead.result()
        self._cursor = 0
        self._ahead = self._submit()

    def draw(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The next ``n`` samples of the stream."""
        if self.pieces == 0:
            raise RuntimeError("no history to stream yet")
        xs, ys = [], []
        while n > 0:
            if self._current is None or self._cursor >= self._current[0].shape[0]:
                self._advance()
            assert self._current is not None
            take = min(n, self._current[0].shape[0] - self._cursor)
            idx = self._current[2][self._cursor : self._cursor + take]
            xs.append(self._current[0].index_select(0, idx))
            ys.append(self._current[1].index_select(0, idx))
            self._cursor += take
            n -= take
        if len(xs) == 1:
            return xs[0], ys[0]
        return torch.cat(xs), torch.cat(ys)

    def close(self) -> None:
        if self._ahead is not None:
            self._ahead.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._current = self._ahead = None


def _nbytes(window: Window | None) -> int:
    """The window's samples (features and labels; its row order is not a sample)."""
    if window is None:
        return 0
    return sum(t.nelement() * t.element_size() for t in window[:2])


def window_bytes_for(budget: int, reserved: int, sample_bytes: int) -> int:
    """Each of the two windows' bytes under a budget of which ``reserved`` is taken already."""
    free = budget - reserved
    if free < 2 * sample_bytes:
        raise ValueError(
            f"the memory budget of {budget:,} bytes leaves {max(0, free):,} for streaming after "
            f"{reserved:,} for the newest window and the reservoir; raise data.resident_bytes "
            "or lower replay.newest_window or replay.reservoir_size"
        )
    return free // 2
