"""Growth checkpoints written in the background while training goes on.

A growth closes generation N and opens N+1 with a durable checkpoint of each. Writing them
(safetensors, digests, fsync) takes seconds for a model of 10M parameters on a CPU, several times
the transform itself; training need not wait for it. At the growth, rank 0 takes a snapshot of the
state (:func:`snapshot`) and one writer thread (:class:`Writes`) writes it, while the loop trains
the grown model. The opening checkpoint is staged under a hidden name and put in place, reported
to the runtime and announced only once it is whole (``workers.loop``): a crash before that leaves
no trace of generation N+1, and the run resumes from the previous checkpoint.

A snapshot is a copy where the tensors live (a device copy on a GPU: no host round trip in the
pause; the writer thread copies to the host), or a plain reference to state that nothing will
change again (the model before a widen or deepen, which ``net2net`` leaves untouched).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import torch
from torch import nn

T = TypeVar("T")


def snapshot(
    module: nn.Module, optimizer: torch.optim.Optimizer, *, copy: bool
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The model's and the optimizer's state dicts, tensors copied on their device (``copy``) or
    referenced (for state that will not change again)."""

    def take(t: torch.Tensor) -> torch.Tensor:
        return t.detach().clone() if copy else t.detach()

    weights = {name: take(t) for name, t in module.state_dict().items()}
    state = optimizer.state_dict()
    per_param = {
        index: {k: take(v) if isinstance(v, torch.Tensor) else v for k, v in values.items()}
        for index, values in state["state"].items()
    }
    groups = [dict(g, params=list(g["params"])) for g in state["param_groups"]]
    return weights, {"state": per_param, "param_groups": groups}


class Writes:
    """One writer thread, started on first use; writes run one at a time, in order."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lifelong-ckpt")
        return self._pool.submit(fn, *args)

    def close(self) -> None:
        """Wait for the writes under way and stop the thread."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
