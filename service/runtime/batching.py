"""Concurrent predictions on one model, run as one forward pass.

The API answers each ``/predict`` in a worker thread. :class:`MicroBatcher` lets the calls that
arrive together on the same model share a forward pass: the first caller becomes the leader, waits
``window_s`` for others to join, concatenates every queued input (up to ``max_rows`` rows per
pass), runs the model once, and hands each caller its rows; it goes on until the queue is empty.
The others wait for their rows. A model in eval mode treats each row on its own, so the answers
are those of separate calls.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class _Call:
    rows: torch.Tensor
    done: threading.Event = field(default_factory=threading.Event)
    result: torch.Tensor | None = None
    error: BaseException | None = None


class MicroBatcher:
    """One model's forward passes, shared by the calls that arrive within ``window_s``."""

    def __init__(
        self,
        forward: Callable[[torch.Tensor], torch.Tensor],
        *,
        max_rows: int = 10_000,
        window_s: float = 0.002,
    ) -> None:
        self.forward = forward
        self.max_rows = max_rows
        self.window_s = window_s
        self.passes = 0  # forward passes run (for tests and metrics)
        self.calls = 0
        self._queue: list[_Call] = []
        self._leading = False
        self._lock = threading.Lock()

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        call = _Call(rows)
        with self._lock:
            self._queue.append(call)
            self.calls += 1
            lead = not self._leading
            self._leading = True
        if lead:
            if self.window_s:
                time.sleep(self.window_s)  # let the calls that arrive together join
            self._drain()
        call.done.wait()
        if call.error is not None:
            raise call.error
        assert call.result is not None
        return call.result

    def _take(self) -> list[_Call]:
        """The next batch (at least one call, at most ``max_rows`` rows beyond the first)."""
        with self._lock:
            batch: list[_Call] = []
            rows = 0
            while self._queue and (not batch or rows + len(self._queue[0].rows) <= self.max_rows):
                call = self._queue.pop(0)
                batch.append(call)
                rows += len(call.rows)
            if not batch:
                self._leading = False
            return batch

    def _drain(self) -> None:
        while batch := self._take():
            try:
                with torch.no_grad():
                    out = self.forward(torch.cat([c.rows for c in batch]))
                self.passes += 1
                start = 0
                for call in batch:
                    call.result = out[start : start + len(call.rows)]
                    start += len(call.rows)
            except BaseException as exc:  # every caller of the pass hears why
                for call in batch:
                    call.error = exc
            for call in batch:
                call.done.set()
