"""Applying a ``GrowthOp`` to a module: the one place that calls ``net2net``'s transforms.

Every rank calls :func:`apply_op` with the same module (bit-identical), the same example batch and
the same op (with its seed), and so gets the same grown module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import net2net
from growth_policy.types import GrowthOp


@dataclass
class Applied:
    """A growth applied to a module: the new module and the optimizer for it."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    record: dict[str, Any] | None
    max_abs_error: float | None


def apply_op(
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    example: torch.Tensor,
    op: GrowthOp,
    *,
    optimizer_state: str = "auto",
) -> Applied:
    """Grow ``module`` (left untouched) by ``op``; carry the optimizer state to the grown module
    (``net2net.transfer_optimizer(..., state=optimizer_state)``: "auto", "carry" or "reset").

    ``shrink_perturb`` is the exception: it changes the parameters in place,
    ``θ ← shrink·θ + perturb·ε`` with ``ε ~ N(0, 1)`` drawn from ``op.seed`` (the same on every
    rank), keeps the architecture and the optimizer, and has no growth record.
    """
    if op.op == "shrink_perturb":
        shrink_perturb(module, shrink=op.shrink, perturb=op.perturb, seed=op.seed)
        return Applied(module, optimizer, None, None)
    if op.op == "widen":
        grown = net2net.widen(module, example, **op.widen_kwargs())
    elif op.op == "deepen":
        assert op.after is not None
        grown = net2net.deepen(module, example, after=op.after, style=op.style, seed=op.seed)
    elif op.op == "add_classes":
        assert op.classes is not None
        grown = net2net.add_classes(module, example, classes=op.classes, seed=op.seed)
    else:  # pragma: no cover - GrowthOp validates op
        raise ValueError(f"unknown growth op {op.op!r}")
    new_optimizer = in_module_order(
        net2net.transfer_optimizer(optimizer, module, grown, state=optimizer_state), grown.model
    )
    return Applied(grown.model, new_optimizer, dict(grown.record), float(grown.max_abs_error))


def in_module_order(optimizer: torch.optim.Optimizer, module: nn.Module) -> torch.optim.Optimizer:
    """Put each param group's parameters in the module's order (in place; returns it).

    ``transfer_optimizer`` appends an inserted layer's parameters at the end of their group. A
    checkpoint stores the optimizer state by position, and a resume builds the optimizer over
    ``module.parameters()``: the positions must be the module's, or the state lands on the wrong
    tensors (a resume after a deepen failed on mismatched shapes). The state itself is keyed by
    tensor, so reordering loses nothing.
    """
    order = {id(p): i for i, p in enumerate(module.parameters())}
    for group in optimizer.param_groups:
        group["params"].sort(key=lambda p: order.get(id(p), len(order)))
    return optimizer


@torch.no_grad()
def shrink_perturb(module: nn.Module, *, shrink: float, perturb: float, seed: int) -> None:
    """Ash & Adams' shrink and perturb, in place: ``θ ← shrink·θ + perturb·ε`` per parameter."""
    gen = torch.Generator().manual_seed(seed)
    for param in module.parameters():
        noise = torch.randn(param.shape, generator=gen, dtype=param.dtype)
        param.mul_(shrink).add_(noise.to(param.device), alpha=perturb)
