"""The training recipe around the optimizer: param groups, the learning-rate schedule, clipping.

* :func:`param_groups`: with ``decay="matrices"`` weight decay applies to weights of two or more
  dims (linear, conv and embedding weights) and not to biases, norm gains or other vectors
  (nanoGPT's and most LM recipes' rule); the two groups keep the model's parameter order.
  ``net2net.transfer_optimizer`` carries the groups through growth (a new block's parameters join
  the group of the ones they copy), and :func:`regroup` puts the parameters back into the groups
  :func:`param_groups` makes, in the model's order, so that a checkpoint's optimizer state (kept
  by position) loads into the groups that a resume builds.
* :func:`learning_rate`: the rate of one optimizer step from the loop's counters
  (``workers.spec.ScheduleSpec``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from workers.spec import LM_WARMUP_STEPS, OptimizerSpec, TaskSpec


def param_groups(spec: OptimizerSpec, module: nn.Module) -> list[dict[str, Any]]:
    """The optimizer's param groups for ``module``: one group with ``decay="all"`` (or no weight
    decay), else the matrices (with ``weight_decay``) and the rest (without), in model order."""
    params = [p for p in module.parameters() if p.requires_grad]
    if spec.decay == "all" or spec.weight_decay == 0.0:
        return [{"params": params, "weight_decay": spec.weight_decay}]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": spec.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def order_like_model(optimizer: torch.optim.Optimizer, module: nn.Module) -> None:
    """Sort every param group's parameters in ``module.parameters()`` order, in place (the state
    is keyed by parameter, so it follows). Parameters not in the module stay last."""
    rank = {id(p): i for i, p in enumerate(module.parameters())}
    for group in optimizer.param_groups:
        group["params"] = sorted(group["params"], key=lambda p: rank.get(id(p), len(rank)))


def regroup(optimizer: torch.optim.Optimizer, spec: OptimizerSpec, module: nn.Module) -> None:
    """Put ``module``'s parameters into the groups :func:`param_groups` makes, in model order, in
    place, keeping each group's other settings and every parameter's state: after a growth (whose
    new parameters join the group of the ones they copy, or the first) the groups are again the
    ones a resume builds. An optimizer with another number of groups is only put in model order."""
    wanted = param_groups(spec, module)
    if len(wanted) != len(optimizer.param_groups):
        order_like_model(optimizer, module)
        return
    for group, want in zip(optimizer.param_groups, wanted, strict=True):
        group["params"] = list(want["params"])


def warmup_steps(spec: OptimizerSpec, task: TaskSpec) -> int:
    """The warm-up length: the spec's, else 100 steps for language modelling and none otherwise."""
    if spec.schedule.warmup_steps is not None:
        return spec.schedule.warmup_steps
    return LM_WARMUP_STEPS if task.kind == "language_modeling" else 0


@dataclass(frozen=True)
class StepCounters:
    """Where an optimizer step is: each count is of the steps done before it."""

    step: int
    generation: int = 0
    generation_step: int = 0
    version_step: int = 0
    version_budget: int | None = None  # compute.budget_per_version.steps
    total_budget: int | None = None  # compute.budget_total.steps


def learning_rate(spec: OptimizerSpec, counters: StepCounters, warmup: int) -> float:
    """The learning rate of the step after ``counters`` (``workers.spec.ScheduleSpec``)."""
    s, lr, c = spec.schedule, spec.lr, counters
    if c.step < warmup:
        return lr * (c.step + 1) / (warmup + 1)
    if s.kind == "cosine":
        return _cosine(spec, c.step, warmup)
    if s.kind == "wsd":
        return _wsd(spec, c)
    if s.kind == "rewarm" and c.generation > 0 and c.generation_step < s.rewarm_steps:
        return lr * (c.generation_step + 1) / (s.rewarm_steps + 1)
    return lr


def _cosine(spec: OptimizerSpec, step: int, warmup: int) -> float:
    s = spec.schedule
    assert s.decay_steps is not None
    if step >= s.decay_steps:
        return s.min_lr
    ratio = (step - warmup) / (s.decay_steps - warmup)
    return s.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (spec.lr - s.min_lr)


def _wsd(spec: OptimizerSpec, c: StepCounters) -> float:
    """Stable, then linear to ``min_lr`` at the last step before the nearest step budget ends."""
    s = spec.schedule
    assert s.decay_steps is not None
    left = [
        budget - done
        for budget, done in ((c.version_budget, c.version_step), (c.total_budget, c.step))
        if budget is not None
    ]
    remaining = min(left, default=None)
    if remaining is None or remaining > s.decay_steps:
        return spec.lr
    return s.min_lr + (spec.lr - s.min_lr) * max(remaining - 1, 0) / s.decay_steps


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
