"""Public result types: WidthGroup and Grown."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ._handlers import ParamAxes
from ._mapping import AxisMap


@dataclass(frozen=True)
class WidthGroup:
    """A set of channels that must grow together: the output units of its ``producers``, the
    input units of its ``consumers`` and the per-channel parameters of its ``norms`` (BatchNorm,
    LayerNorm, depthwise convs, PReLU) all share one mapping.

    ``multiple_of``: a new width must be a multiple of it (grouped convs). ``integer_factor``: a
    LayerNorm/RMSNorm normalises over the group, so the new width must be an integer multiple of
    the current one (named in ``integer_factor_norms``). ``grows_with``: groups that must grow
    by the same factor, because the forward computes a size of one from the width of another
    (``C // self.n_head`` with C the residual stream's width).
    """

    name: str
    width: int
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    norms: tuple[str, ...]
    multiple_of: int = 1
    integer_factor_norms: tuple[str, ...] = ()
    grows_with: tuple[str, ...] = ()

    @property
    def integer_factor(self) -> bool:
        return bool(self.integer_factor_norms)

    @property
    def modules(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.producers + self.norms + self.consumers))

    def __str__(self) -> str:
        lines = [
            f"group {self.name!r}: width {self.width}",
            f"  producers: {', '.join(self.producers) or '-'}",
            f"  norms:     {', '.join(self.norms) or '-'}",
            f"  consumers: {', '.join(self.consumers) or '-'}",
        ]
        if self.multiple_of > 1:
            lines.append(f"  new width must be a multiple of {self.multiple_of}")
        if self.integer_factor_norms:
            lines.append(
                f"  new width must be an integer multiple of {self.width} "
                f"(normalised by {', '.join(self.integer_factor_norms)})"
            )
        if self.grows_with:
            lines.append(f"  grows by the same factor as {', '.join(self.grows_with)}")
        return "\n".join(lines)


@dataclass
class ParamPlan:
    """How one parameter (or buffer) of the grown model derives from the old model's."""

    old_name: str | None  # None: a fresh tensor (an inserted layer)
    axes: ParamAxes | None = None
    out: AxisMap | None = None
    out_kind: str | None = None
    in_: AxisMap | None = None
    in_groups: int = 1
    template: str | None = None  # fresh tensors join the optimizer param group of this old one


@dataclass
class Grown:
    """The result of a growth op.

    ``model``: the grown module (a new object; the input model and its parameters are untouched),
    on the input's device and dtype. ``record``: JSON-serialisable; :func:`net2net.replay` rebuilds
    the same architecture from it. ``max_abs_error``: max |f_student(x) − f_teacher(x)| on the
    example input, both in eval mode. ``exact``: the transform preserves the function by
    construction (then ``max_abs_error`` is float rounding). ``widths``: group → (old, new).
    ``mappings``: group → new-position → source-unit index g(j); ``shares``: group → the factor s(j)
    on each new position's outgoing weights (1/count for an equal split; 0 for new units of the
    zero-outgoing modes). ``new_param_names``: parameters with no
    counterpart in the old model; ``param_sources``: every new parameter's old name (or None).
    """

    model: nn.Module
    record: dict[str, Any]
    max_abs_error: float
    exact: bool
    widths: dict[str, tuple[int, int]] = field(default_factory=dict)
    mappings: dict[str, torch.Tensor] = field(default_factory=dict)
    shares: dict[str, torch.Tensor] = field(default_factory=dict)
    new_param_names: list[str] = field(default_factory=list)
    param_sources: dict[str, str | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    plans: dict[str, ParamPlan] = field(default_factory=dict, repr=False)

    @property
    def op(self) -> str:
        return str(self.record["op"])

    @property
    def init(self) -> str | None:
        value = self.record.get("init")
        return str(value) if value is not None else None
