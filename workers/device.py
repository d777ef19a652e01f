"""The training device: precision, batches to the device, optimizer state, and a growth's memory.

* Precision (``ComputeSpec.precision``): ``'auto'`` trains in bf16 autocast on CUDA and in fp32
  elsewhere; ``'bf16'`` and ``'fp32'`` force it. Under ``torch.autocast`` the forward pass and the
  loss run in bf16 where it is safe; parameters, gradients and optimizer state stay fp32, and bf16
  has fp32's exponent range, so no gradient scaler is needed.
* :class:`HostToDevice`: on CUDA, a host batch is copied into a pinned staging buffer and from
  there to the device with ``non_blocking=True``, so the copy overlaps the work queued before it;
  two buffers take turns, and a buffer is reused only once its last copy is done. Elsewhere it is
  a plain ``.to(device)``.
* :func:`move_optimizer_state`: an optimizer's per-parameter state on its parameters' device (as
  ``Optimizer.load_state_dict`` places it: a non-capturable ``step`` stays on the host).
* A growth's memory (:func:`growth_memory_need`, :func:`estimate_params_after`,
  :func:`memory_refusal`): before a growth on a GPU, what the grown model will add at the peak
  (its weights, optimizer state and gradients, and the snapshot its background checkpoint is
  written from) is checked against the memory the device has left; a growth that would not fit is
  refused with a reason instead of dying out of memory.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from typing import Any, Literal

import torch
from torch import nn

from growth_policy.types import GrowthOp

Precision = Literal["auto", "bf16", "fp32"]
GIB = 1 << 30


def autocast_dtype(precision: Precision, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device``; None: fp32, no autocast."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def autocast(
    device: torch.device, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` on ``device`` in ``dtype``, or nothing when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class HostToDevice:
    """Host batches to the device: through pinned buffers with non-blocking copies on CUDA."""

    def __init__(self, device: torch.device, *, slots: int = 2) -> None:
        self.device = device
        self.pinned = device.type == "cuda"
        self._slots = slots
        self._next = 0
        self._buffers: dict[tuple[int, int], torch.Tensor] = {}
        self._events: dict[int, Any] = {}

    def __call__(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``tensors`` (one batch: features, targets) on the device."""
        if not self.pinned:
            return tuple(t.to(self.device) for t in tensors)
        slot, self._next = self._next, (self._next + 1) % self._slots
        event = self._events.get(slot)
        if event is not None:
            event.synchronize()  # the copies out of this slot's buffers are done
        out = []
        for i, t in enumerate(tensors):
            buffer = self._buffers.get((slot, i))
            if buffer is None or buffer.shape != t.shape or buffer.dtype != t.dtype:
                buffer = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                self._buffers[(slot, i)] = buffer
            buffer.copy_(t)
            out.append(buffer.to(self.device, non_blocking=True))
        event = torch.cuda.Event()  # type: ignore[no-untyped-call]
        event.record()
        self._events[slot] = event
        return tuple(out)


def move_optimizer_state(optimizer: torch.optim.Optimizer, device: torch.device | str) -> int:
    """Put every per-parameter state tensor on ``device`` (a non-capturable, non-fused ``step``
    stays where it is, as ``load_state_dict`` keeps it). Returns how many tensors moved."""
    device = torch.device(device)
    moved = 0
    for group in optimizer.param_groups:
        keep_step = not (group.get("capturable") or group.get("fused"))
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if not isinstance(value, torch.Tensor) or (key == "step" and keep_step):
                    continue
                if value.device != device:
                    state[key] = value.to(device)
                    moved += 1
    return moved


def state_values_per_param(optimizer: torch.optim.Optimizer, params: int) -> int:
    """How many values of state the optimizer keeps per parameter (Adam 2, SGD with momentum 1);
    2 while it has none yet (before its first step), to be safe."""
    values = sum(
        t.numel()
        for state in optimizer.state.values()
        for t in state.values()
        if isinstance(t, torch.Tensor) and t.dim() > 0
    )
    return math.ceil(values / params) if values and params else 2


def estimate_params_after(
    module: nn.Module, op: GrowthOp, widths: dict[str, int] | None = None
) -> int:
    """An upper bound of the parameter count after ``op``, without growing.

    widen ×f: at most f² times (a weight between two widened groups grows on both axes); with
    ``op.widths``, f is the largest ratio to the group's current width (``widths``: the current
    width of each group, from ``net2net.width_groups``). deepen: one new layer as wide as the last
    weight before ``op.after``, with its kernel, and its normalisation; a block deepen (style
    'block' or 'stack', or 'auto' where ``op.after`` is an item of an ``nn.ModuleList`` or
    ``nn.Sequential`` with layers of its own, such as a transformer block) adds a copy of the whole
    block, so its parameters are counted (exactly the grown count for a ``gpt``). Anything else:
    unchanged.
    """
    params = sum(p.numel() for p in module.parameters())
    if op.op == "widen":
        factor = op.factor
        if factor is None:
            assert op.widths is not None  # GrowthOp: a widen has a factor or widths
            current = widths or {}
            ratios = [new / current[g] for g, new in op.widths.items() if current.get(g)]
            factor = max(ratios) if ratios else float(max(op.widths.values()))
        return math.ceil(params * max(1.0, factor) ** 2)
    if op.op == "deepen":
        width, kernel = _width_at(module, op.after)
        layer = width * width * kernel + 4 * width
        block = _block_params(module, op.after)
        if op.style in ("block", "stack"):
            return params + (layer if block is None else block)
        if op.style == "auto" and block is not None:
            return params + block  # a block after a block (net2net's auto)
        return params + layer
    return params


def _block_params(module: nn.Module, after: str | None) -> int | None:
    """The parameters of the block ``after`` names: an item of an ``nn.ModuleList`` or
    ``nn.Sequential`` with submodules of its own (None: not such a block)."""
    if not after:
        return None
    parent_name = after.rpartition(".")[0]
    try:
        parent = module.get_submodule(parent_name)
        block = module.get_submodule(after)
    except AttributeError:
        return None
    if type(parent) not in (nn.ModuleList, nn.Sequential) or not any(block.children()):
        return None
    return sum(p.numel() for p in block.parameters())


def _width_at(module: nn.Module, after: str | None) -> tuple[int, int]:
    """(width, kernel size) of the last weight up to the module ``after`` (in module order); the
    widest weight and the largest kernel where ``after`` is not found."""
    last: torch.Tensor | None = None
    for name, sub in module.named_modules():
        weight = getattr(sub, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.dim() >= 2:
            last = weight
        if name == after and last is not None:
            return int(last.shape[0]), math.prod(last.shape[2:])
    weights = [p for p in module.parameters() if p.dim() >= 2]
    width = max((max(p.shape[:2]) for p in weights), default=0)
    return width, max((math.prod(p.shape[2:]) for p in weights), default=1)


def growth_memory_need(
    params_after: int,
    *,
    state_per_param: int,
    snapshot: bool,
    bytes_per_value: int = 4,
) -> int:
    """Bytes a growth adds on the device at its peak, with the model before it still held: the
    grown weights and their optimizer state (and a copy of both for the background checkpoint
    write, ``snapshot``), and the grown model's gradients at its first step."""
    copies = 2 if snapshot else 1
    return bytes_per_value * (params_after * (1 + state_per_param) * copies + params_after)


def available_memory(device: torch.device) -> int | None:
    """Bytes the device can still give this process (free, plus what the caching allocator holds
    unused); None where it is not a GPU (the check does not apply)."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(free + cached)


def memory_refusal(
    need: int,
    available: int | None,
    *,
    device: torch.device,
    params_after: int,
    margin: float = 1.1,
) -> str | None:
    """Why a growth that needs ``need`` bytes must be refused on ``device``; None: it fits (with
    ``margin`` for activations and fragmentation) or nothing is known of the device."""
    if available is None or need * margin <= available:
        return None
    return (
        f"not enough memory on {device}: growing to about {params_after:,} parameters needs "
        f"about {need / GIB:.2f} GiB more (weights, optimizer state, gradients and the "
        f"checkpoint snapshot, ×{margin} for activations), and {available / GIB:.2f} GiB is "
        "available; grow by less, or run the job on a larger GPU"
    )


def devices_of(tensors: Iterable[torch.Tensor]) -> set[torch.device]:
    """The devices that ``tensors`` live on."""
    return {t.device for t in tensors}
