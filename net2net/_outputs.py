"""Output growth: a classifier's head gains output units for classes that arrive later.

The head is the layer whose output rows are the logits (``head``, a module name; its handler says
which axis of each tensor is the output axis). Its first C rows are copied unchanged, so the old
logits z₁…z_C are exactly the teacher's for every input. The new rows start by ``init``:

* ``"mean"``: each new row is the mean of the old rows (weights and bias), so a new logit is the
  mean old logit, z_new(x) = (1/C)·Σᵢ zᵢ(x), for every input;
* ``"low"``: zero weights and a bias b = log(p/(1−p)) + mean over the example of
  logsumexp(z(x)), so a new class starts with a probability of about ``p`` (``prior``) on a
  typical input, and its gradient is the same for every input until it has learned.

Either way the softmax over the grown head is the old distribution times the mass the new classes
leave: pᵢ' = pᵢ · Z/(Z + Σ_new e^{z_new}), so the old classes' ranking, and so every argmax among
them, is unchanged, while each old probability shrinks by the same factor.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ._errors import GrowthError
from ._graph import as_inputs, eval_mode, output_tensors
from ._handlers import ParamAxes, handler_for
from ._mapping import AxisMap
from ._types import Grown, ParamPlan
from ._widen import RECORD_FORMAT, copy_model, input_spec, set_tensor

OP = "add_classes"
HEAD_INITS = ("mean", "low")


def add_classes(
    model: nn.Module,
    example_input: Any,
    *,
    classes: int,
    head: str = "head",
    init: str = "low",
    prior: float = 0.01,
    seed: int = 0,
) -> Grown:
    """Grow the output layer ``head`` of ``model`` to ``classes`` outputs (module docstring).

    The old outputs are kept exactly (``Grown.max_abs_error`` compares them on ``example_input``
    and is 0). The record replays the new architecture (:func:`net2net.replay`);
    :func:`net2net.transfer_optimizer` carries the old rows' optimizer state unchanged and starts
    the new rows with none (zero moments).
    """
    inputs = as_inputs(example_input)
    return add_classes_impl(
        model, inputs, classes=classes, head=head, init=init, prior=prior, seed=seed, check=True
    )


def _head_axes(model: nn.Module, head: str) -> tuple[nn.Module, dict[str, ParamAxes]]:
    try:
        module = model.get_submodule(head)
    except AttributeError as err:
        raise GrowthError(f"{OP}: the model has no module {head!r} (pass head=<name>)") from err
    handler = handler_for(module)
    axes = dict(handler.param_axes(module)) if handler is not None else {}
    if not axes or any(a.out is None for a in axes.values()) or "weight" not in axes:
        raise GrowthError(
            f"{OP}: module {head!r} ({type(module).__name__}) has no output axis that net2net "
            "knows; the head must be a Linear (or a layer whose handler names its output axis)"
        )
    return module, axes


def _old_width(module: nn.Module, axes: dict[str, ParamAxes]) -> int:
    weight = module.get_parameter("weight")
    out = axes["weight"].out
    assert out is not None
    return int(weight.shape[out])


def _check(init: str, prior: float, old: int, classes: int) -> None:
    if init not in HEAD_INITS:
        raise GrowthError(f"{OP}: init must be one of {HEAD_INITS}, got {init!r}")
    if not 0.0 < prior < 1.0:
        raise GrowthError(f"{OP}: prior must be in (0, 1), got {prior}")
    if classes <= old:
        raise GrowthError(
            f"{OP}: the head has {old} outputs already; classes must be more than that "
            f"(got {classes})"
        )


def _low_bias(teacher_out: torch.Tensor, prior: float) -> float:
    """b with e^b / (e^b + Z) = prior where log Z is the example's mean logsumexp."""
    lse = torch.logsumexp(teacher_out.double().reshape(-1, teacher_out.shape[-1]), dim=-1)
    return float(lse.mean()) + math.log(prior / (1.0 - prior))


def _grown_tensor(
    t: torch.Tensor, axis: int, new: int, *, init: str, bias: float, is_bias: bool
) -> torch.Tensor:
    old = t.shape[axis]
    shape = list(t.shape)
    shape[axis] = new - old
    if init == "mean":
        row = t.detach().mean(dim=axis, keepdim=True)
        extra = row.expand(shape).clone()
    elif is_bias:
        extra = torch.full(shape, bias, dtype=t.dtype, device=t.device)
    else:
        extra = torch.zeros(shape, dtype=t.dtype, device=t.device)
    return torch.cat([t.detach(), extra], dim=axis).contiguous()


def add_classes_impl(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    *,
    classes: int,
    head: str,
    init: str,
    prior: float,
    seed: int,
    check: bool,
) -> Grown:
    """:func:`add_classes` on prepared inputs; ``check=False`` (replay) skips the measurement
    (the weights are loaded afterwards)."""
    module, axes = _head_axes(model, head)
    old = _old_width(module, axes)
    _check(init, prior, old, classes)
    teacher = None
    if check or init == "low":
        with eval_mode(model):
            teacher = model(*inputs)
    bias = _low_bias(output_tensors(teacher)[0], prior) if teacher is not None else 0.0
    student = copy_model(model, OP)
    target = student.get_submodule(head)
    plans = {n: ParamPlan(n) for n, _ in student.named_parameters()}
    amap = _axis_map(old, classes)
    for local, ax in axes.items():
        tensor = getattr(target, local, None)
        if tensor is None:
            continue
        assert ax.out is not None
        grown = _grown_tensor(tensor, ax.out, classes, init=init, bias=bias, is_bias=ax.in_ is None)
        set_tensor(target, local, grown)
        full = f"{head}.{local}"
        plans[full] = ParamPlan(full, axes=ParamAxes(out=ax.out), out=amap, out_kind="dense")
    handler = handler_for(target)
    assert handler is not None
    handler.resize(target, classes, None)
    error = 0.0
    if check:
        error = _preserved_error(teacher, student, inputs, old)
    record = {
        "op": OP,
        "format": RECORD_FORMAT,
        "head": head,
        "classes": [old, classes],
        "init": init,
        "prior": prior,
        "seed": seed,
        "input": input_spec(inputs),
    }
    names = [n for n, _ in student.named_parameters()]
    return Grown(
        model=student,
        record=record,
        max_abs_error=error,
        exact=True,
        param_sources={n: n for n in names},
        notes=[f"head {head!r}: {old} -> {classes} outputs ({init})"],
        plans=plans,
    )


def _axis_map(old: int, new: int) -> AxisMap:
    """Old rows keep their place and state (share 1); new rows start with none (share 0)."""
    fresh = torch.arange(new) >= old
    index = torch.where(fresh, torch.zeros(new, dtype=torch.long), torch.arange(new))
    share = (~fresh).to(torch.float64)
    none = torch.zeros(new, dtype=torch.bool)
    return AxisMap(index, share, fresh, none, none, old, new)


def _preserved_error(
    teacher: Any, student: nn.Module, inputs: tuple[torch.Tensor, ...], old: int
) -> float:
    """max |z_student[..., :old] − z_teacher| on the inputs, both in eval mode."""
    with eval_mode(student):
        out = output_tensors(student(*inputs))[0]
    ref = output_tensors(teacher)[0]
    if out.shape[:-1] != ref.shape[:-1]:
        return float("inf")
    return float((out[..., :old].double() - ref.double()).abs().max()) if ref.numel() else 0.0
