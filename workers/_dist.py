"""Small collectives that every rank calls together; all are no-ops with one rank.

Payloads that cross ranks are JSON strings (never arbitrary objects), and tensors.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


class Group:
    """The ranks of one training run (``torch.distributed``'s default group, set up by Ray)."""

    def __init__(self, rank: int, world_size: int, device: torch.device) -> None:
        self.rank = rank
        self.world_size = world_size
        self.device = device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 and dist.is_available() and dist.is_initialized()

    def broadcast_str(self, text: str | None) -> str:
        """Rank 0's ``text`` on every rank (others pass ``None``)."""
        if not self.distributed:
            assert text is not None
            return text
        box: list[Any] = [text if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=self._object_device())
        return str(box[0])

    def gather_str(self, text: str) -> list[str]:
        """Every rank's ``text``, in rank order, on every rank."""
        if not self.distributed:
            return [text]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, text)
        return [str(t) for t in out]

    def broadcast_tensor(self, tensor: torch.Tensor | None) -> torch.Tensor:
        """Rank 0's tensor (any shape, float32) on every rank, on this rank's device."""
        if not self.distributed:
            assert tensor is not None
            return tensor.to(self.device)
        shape_text = self.broadcast_str(
            ",".join(map(str, tensor.shape)) if tensor is not None else None
        )
        shape = [int(d) for d in shape_text.split(",") if d]
        if self.is_main:
            assert tensor is not None
            buf = tensor.to(self.device, torch.float32).contiguous()
        else:
            buf = torch.empty(shape, dtype=torch.float32, device=self.device)
        dist.broadcast(buf, src=0)
        return buf

    def sync_buffers(self, module: nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) everywhere.

        DDP broadcasts buffers at the start of each forward, but each rank then updates them on
        its own batch, so between steps they differ; growth and checkpoints start from rank 0's.
        """
        if not self.distributed:
            return
        for buffer in module.buffers():
            dist.broadcast(buffer.data, src=0)

    def mean(self, values: list[float]) -> list[float]:
        """The element-wise mean over ranks."""
        if not self.distributed:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return [v / self.world_size for v in t.tolist()]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def _object_device(self) -> torch.device | None:
        return self.device if self.device.type == "cuda" else None


def module_digest(module: nn.Module) -> str:
    """SHA-256 of every parameter and buffer, in ``state_dict`` order: equal iff bit-identical."""
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        t = tensor.detach().to("cpu").contiguous()
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
