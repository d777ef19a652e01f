"""The resident parts of replay (``ReplaySpec``): the newest window and the class-balanced reservoir.

Both hold copies of samples, bounded in rows, so they cost the same whatever the history's size;
``workers.reader`` counts them in the rank's memory budget.
"""

from __future__ import annotations

import random

import torch

from workers.spec import ReplaySpec, TaskSpec


class NewestBuffer:
    """The last ``capacity`` training samples to arrive at a rank, and how many are untrained.

    ``draw(k)`` takes the untrained samples first, oldest first (so each is trained on once before
    any of them twice), then fills up uniformly from the whole window.
    """

    def __init__(self, capacity: int, seed: int) -> None:
        self.capacity = capacity
        self.features: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None
        self.untrained = 0
        self.drawn = 0  # untrained samples handed out so far (tests, benchmarks)
        self._gen = torch.Generator().manual_seed(seed)

    @property
    def size(self) -> int:
        return 0 if self.features is None else self.features.shape[0]

    @property
    def resident_bytes(self) -> int:
        if self.features is None or self.labels is None:
            return 0
        return sum(t.nelement() * t.element_size() for t in (self.features, self.labels))

    def add(self, features: torch.Tensor, labels: torch.Tensor, *, trained: bool = False) -> None:
        """Append arrived samples (``trained``: already trained on, e.g. at a resume)."""
        if features.shape[0] == 0:
            return
        if self.features is None or self.labels is None:
            x, y = features, labels
        else:
            x, y = torch.cat([self.features, features]), torch.cat([self.labels, labels])
        keep = min(self.capacity, x.shape[0])
        self.features, self.labels = x[-keep:].clone(), y[-keep:].clone()
        if not trained:
            self.untrained = min(keep, self.untrained + features.shape[0])

    def draw(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.features is not None and self.labels is not None and k > 0
        n = self.size
        fresh = min(k, self.untrained)
        first = n - self.untrained
        idx = torch.arange(first, first + fresh)
        if fresh < k:
            idx = torch.cat([idx, torch.randint(0, n, (k - fresh,), generator=self._gen)])
        self.untrained -= fresh
        self.drawn += fresh
        return self.features.index_select(0, idx), self.labels.index_select(0, idx)

    def clear(self) -> None:
        self.features = self.labels = None
        self.untrained = 0


class ClassBalancedReservoir:
    """Class-balanced reservoir sampling (Chrysakis and Moens, 2020) of at most ``capacity`` rows.

    While not full every sample is kept. When full, a sample of class ``c``: if ``c`` is not among
    the largest classes held, it replaces a random sample of one of the largest; otherwise it
    replaces a random sample of its own class with probability ``held(c) / seen(c)``.
    """

    def __init__(self, capacity: int, row_shape: tuple[int, ...], seed: int) -> None:
        self.capacity = capacity
        self.features = torch.empty((0, *row_shape), dtype=torch.float32)
        self.labels = torch.empty((0,), dtype=torch.int64)
        self._slots: dict[int, list[int]] = {}  # class -> reservoir rows
        self._seen: dict[int, int] = {}
        self._rng = random.Random(seed)
        self._gen = torch.Generator().manual_seed(seed)

    @property
    def size(self) -> int:
        return int(self.labels.shape[0])

    @property
    def resident_bytes(self) -> int:
        return sum(t.nelement() * t.element_size() for t in (self.features, self.labels))

    def counts(self) -> dict[int, int]:
        return {c: len(rows) for c, rows in sorted(self._slots.items()) if rows}

    def offer(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Offer arrived samples to the reservoir."""
        room = max(0, self.capacity - self.size)
        if room:
            take = min(room, features.shape[0])
            start = self.size
            self.features = torch.cat([self.features, features[:take].to(torch.float32)])
            self.labels = torch.cat([self.labels, labels[:take].to(torch.int64)])
            for i, c in enumerate(labels[:take].tolist()):
                self._slots.setdefault(c, []).append(start + i)
                self._seen[c] = self._seen.get(c, 0) + 1
            features, labels = features[take:], labels[take:]
        for i, c in enumerate(labels.tolist()):
            self._seen[c] = self._seen.get(c, 0) + 1
            slot = self._replace(c)
            if slot is not None:
                self.features[slot] = features[i]
                self.labels[slot] = c

    def _replace(self, c: int) -> int | None:
        held = {k: len(v) for k, v in self._slots.items() if v}
        largest = max(held.values())
        own = self._slots.setdefault(c, [])
        if held.get(c, 0) < largest:
            victims = [k for k, n in held.items() if n == largest]
            victim = self._slots[self._rng.choice(victims)]
            slot = victim.pop(self._rng.randrange(len(victim)))
            own.append(slot)
            return slot
        if self._rng.random() < len(own) / self._seen[c]:
            return own[self._rng.randrange(len(own))]
        return None

    def draw(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, self.size, (k,), generator=self._gen)
        return self.features.index_select(0, idx), self.labels.index_select(0, idx)


def reader_replay(
    task: TaskSpec,
    *,
    rank: int,
    world_size: int,
    recency_half_life: float | None,
    max_steps_per_pass: int | None,
    replay: ReplaySpec | None,
) -> tuple[ReplaySpec, int | None]:
    """The replay a reader follows and its pass bound, checked against the rank and the task.

    Without a ``replay``, the plain reader: uniform or recency (``recency_half_life``) replay, no
    newest share, ``max_steps_per_pass`` as given; with one, its own pass bound.
    """
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
    if replay.history == "class_balanced" and task.kind != "classification":
        raise ValueError("replay 'class_balanced' is for classification tasks")
    return replay, max_steps_per_pass
