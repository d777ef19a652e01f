"""Saturation signals per width group, measured by one forward pass on a small batch.

The worker calls :func:`group_signals` on rank 0 when it builds an observation and puts the result
in ``Observation.group_signals``. The ``saturated`` widen mode reads one of the signals
(``GrowthPolicyConfig.saturation.signal``, ``active_fraction`` by default).

Which tensor stands for a group's units: the input of the group's last member module in execution
order that sees them whole. For a Linear or conv consumer that is the units after their norm and
activation, exactly as the next layer sees them. Where the consumer sees them flattened (a conv map
into a Linear) or concatenated, it is the input of the last member before it (the norm's input, or
the activation's when activations are modules); when no member input has the width, the output of the
last member that has it. Units are on dim 1 (``(B, C, …)``) or, failing that, the last dim
(``(B, T, C)``); every other dim counts as samples.

The signals, for activations ``h`` of shape (N, width):

- ``active_fraction``: the share of units that are not dormant. A unit is dormant when its mean
  ``|h|`` is at most ``dormant_threshold`` × the layer's mean over units (the dormant-neuron score of
  Sokar et al., ICML 2023). A group with dormant units has capacity it does not use, and widening
  it adds more of the same; a group whose units are all active uses its whole width.
- ``effective_rank``: the participation ratio ``tr(C)² / ‖C‖²_F`` of the activation covariance,
  divided by ``min(width, N - 1)``: 1 when every unit carries its own direction, near 0 when the
  units are copies of a few. Computed without an eigendecomposition.
- ``mean_abs``: the mean ``|h|``, and ``width``: the width measured (a check on the summary).

Cost: one forward pass in eval mode under ``torch.no_grad()``; nothing in the model changes (training
flags are restored, hooks removed, BatchNorm statistics untouched because of eval mode).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn


class GroupLike(Protocol):
    """What :func:`group_signals` needs of a width group (``net2net.WidthGroup`` has it)."""

    name: str
    width: int


@dataclass(frozen=True)
class SignalGroup:
    """A width group given by hand: name, width, and the names of the modules it touches."""

    name: str
    width: int
    modules: tuple[str, ...]


def _member_names(group: Any, attrs: Sequence[str] | None = None) -> list[str]:
    """Module names a group touches, from the attributes a WidthGroup may carry."""
    names: list[str] = []
    default = ("modules", "module_names", "producers", "channelwise", "norms", "consumers")
    for attr in attrs or default:
        value = getattr(group, attr, None)
        if value is None:
            continue
        items: Iterable[Any] = value.values() if isinstance(value, dict) else value
        for item in items:
            name = (
                item
                if isinstance(item, str)
                else getattr(item, "name", getattr(item, "module", None))
            )
            if isinstance(name, str) and name not in names:
                names.append(name)
    return names


def _units(t: Tensor, width: int) -> Tensor | None:
    """(N, width) view of ``t`` with units last, or None when no dim has ``width`` entries."""
    if not isinstance(t, Tensor) or t.ndim < 2 or not t.is_floating_point():
        return None
    if t.shape[1] == width:
        dim = 1
    elif t.shape[-1] == width:
        dim = t.ndim - 1
    else:
        return None
    return t.detach().movedim(dim, -1).reshape(-1, width).float()


def _signals(h: Tensor, dormant_threshold: float, max_rows: int) -> dict[str, float]:
    n, width = h.shape
    if n > max_rows:  # evenly spaced rows: deterministic and spread over the batch and positions
        h = h[torch.linspace(0, n - 1, max_rows).long()]
        n = max_rows
    mean_abs_unit = h.abs().mean(dim=0)  # (width,)
    layer_mean = float(mean_abs_unit.mean())
    if layer_mean > 0:
        active = float((mean_abs_unit > dormant_threshold * layer_mean).float().mean())
    else:
        active = 0.0
    centred = h - h.mean(dim=0, keepdim=True)
    # tr(C) and ‖C‖_F from the smaller of the two Gram matrices: same non-zero eigenvalues.
    gram = centred @ centred.T if n < width else centred.T @ centred
    trace = float(torch.diagonal(gram).sum())
    frob2 = float((gram * gram).sum())
    denom = max(1, min(width, n - 1))
    erank = (trace * trace / frob2) / denom if frob2 > 0 else 0.0
    return {
        "active_fraction": active,
        "effective_rank": min(1.0, erank),
        "mean_abs": layer_mean,
        "width": float(width),
    }


_Call = tuple[str, tuple[Any, ...], Any]  # (module name, its inputs, its output)


def group_signals(
    model: nn.Module,
    batch: Tensor | Sequence[Tensor],
    groups: Sequence[Any] | None = None,
    *,
    max_samples: int = 256,
    max_rows: int = 2048,
    dormant_threshold: float = 0.1,
) -> dict[str, dict[str, float]]:
    """Per width group, named saturation signals: ``{group: {"active_fraction": …, …}}``.

    ``model`` is the plain module (unwrap DDP first); ``batch`` is the model's input, of which the
    first ``max_samples`` samples are used; ``groups`` is ``net2net.width_groups(model, batch)``,
    computed once per generation and passed in to save the trace (computed here when None). Groups
    whose units are not seen in the forward pass are left out.
    """
    if groups is None:
        import importlib

        groups = importlib.import_module("net2net").width_groups(model, batch)
    inputs = tuple(batch) if isinstance(batch, list | tuple) else (batch,)
    names = {name for g in groups for name in _member_names(g)}
    calls = _record_calls(model, tuple(x[:max_samples] for x in inputs), names)
    out: dict[str, dict[str, float]] = {}
    for g in groups:
        h = _group_units(g, calls)
        if h is not None and h.shape[0] > 0:
            out[g.name] = _signals(h, dormant_threshold, max_rows)
    return out


def _record_calls(model: nn.Module, inputs: tuple[Tensor, ...], names: set[str]) -> list[_Call]:
    """One forward pass in eval mode, without gradients: the calls of the modules named, in
    execution order. Hooks are removed and training flags restored afterwards."""
    calls: list[_Call] = []

    def hook(name: str) -> Any:
        def record(_m: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            calls.append((name, args, out))

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n in names]
    flags = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
        for m, flag in flags.items():
            m.training = flag
    return calls


def _group_units(group: Any, calls: Sequence[_Call]) -> Tensor | None:
    """The (N, width) activations that stand for a group's units (module docstring): the input of
    its last consumer that sees them whole, else of its last member that does, else the output of
    its last member that has the width."""
    members = set(_member_names(group))
    consumers = set(_member_names(group, ("consumers",)))
    seen = [(name, args, out) for name, args, out in reversed(calls) if name in members]
    for pool in (consumers, members):
        for name, args, _ in seen:
            if name in pool and args and (h := _units(args[0], group.width)) is not None:
                return h
    return next((h for _, _, out in seen if (h := _units(out, group.width)) is not None), None)
