"""Output growth: a classifier's head gains output units for classes that arrive later.

The head is the output layer ``head`` (a module name): a ``Linear``, or a :class:`ClassHead` that
an earlier ``add_classes`` made. The grown head is a :class:`ClassHead`: its blocks are the old
head's rows, unchanged, and one new block for the new classes, and its forward computes each block
on its own and concatenates them. So the old logits z₁…z_C are computed by the very same matrix
product as before (same shapes), and are bit-identical, not merely close: one matrix product over
all the rows would not be, since BLAS libraries (MKL here) pick their kernel by the number of
output columns, and a different kernel rounds differently (measured: 1.2e-7 apart).

The new rows start by ``init``:

* ``"low"`` (the default): zero weights and a bias b = log(p/(1−p)) + mean over the example of
  logsumexp(z(x)), so a new class starts with a probability of about ``prior`` on a typical input;
* ``"mean"``: each new row is the mean of the old rows (weights and bias), so a new logit is the
  mean old logit, z_new(x) = (1/C)·Σᵢ zᵢ(x), for every input.

Either way the softmax over the grown head is the old distribution times the mass the new classes
take: pᵢ' = pᵢ · Z/(Z + Σ_new e^{z_new}), so the old classes keep their ranking (the argmax among
them is unchanged), and each old probability shrinks by the same factor. Measured on digits
(``tests/net2net/test_add_classes.py``): 10 Adam steps after adding two classes, "low" has learned
them far better than "mean", whose new logit starts as an average, not a low, score.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from ._errors import GrowthError
from ._graph import as_inputs, eval_mode, output_tensors
from ._handlers import Handler, ParamAxes, register_handler
from ._layout import Layout
from ._trace import TraceContext
from ._types import Grown, ParamPlan
from ._widen import RECORD_FORMAT, copy_model, input_spec

OP = "add_classes"
HEAD_INITS = ("mean", "low")


class ClassHead(nn.Module):
    """A linear output layer in blocks of rows: ``cat([x Wₖᵀ + bₖ for each block k], -1)``.

    Block k's parameters are ``weight_k`` (rows, in_features) and ``bias_k`` (rows,). Each block
    is its own matrix product, so adding a block leaves the others' outputs bit-identical."""

    def __init__(self, in_features: int, sizes: list[int]) -> None:
        super().__init__()
        self.in_features = in_features
        self.sizes = list(sizes)
        for k, rows in enumerate(sizes):
            self.register_parameter(f"weight_{k}", nn.Parameter(torch.empty(rows, in_features)))
            self.register_parameter(f"bias_{k}", nn.Parameter(torch.empty(rows)))

    @property
    def out_features(self) -> int:
        return sum(self.sizes)

    def blocks(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [
            (self.get_parameter(f"weight_{k}"), self.get_parameter(f"bias_{k}"))
            for k in range(len(self.sizes))
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([functional.linear(x, w, b) for w, b in self.blocks()], dim=-1)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, sizes={self.sizes}"


class _ClassHeadHandler(Handler):
    """A ClassHead consumes the last dim like a Linear; its output (the logits) never widens,
    so its blocks follow width groups on their input axis only."""

    def trace(self, module: nn.Module, ctx: TraceContext) -> Layout:
        return ctx.dense(-1, _as_head(module).out_features)

    def param_axes(self, module: nn.Module) -> Mapping[str, ParamAxes]:
        return {f"weight_{k}": ParamAxes(in_=1) for k in range(len(_as_head(module).sizes))}

    def resize(self, module: nn.Module, out_width: int | None, in_width: int | None) -> None:
        if in_width is not None:
            _as_head(module).in_features = in_width


def _as_head(module: nn.Module) -> ClassHead:
    assert isinstance(module, ClassHead)
    return module


register_handler(ClassHead, _ClassHeadHandler())


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

    The old outputs are kept bit for bit (``Grown.max_abs_error`` compares them on
    ``example_input``: 0). The record replays the new architecture (:func:`net2net.replay`);
    :func:`net2net.transfer_optimizer` carries the old rows' optimizer state unchanged, and the
    new block starts with none.
    """
    inputs = as_inputs(example_input)
    return add_classes_impl(
        model, inputs, classes=classes, head=head, init=init, prior=prior, seed=seed, check=True
    )


def _blocks_of(model: nn.Module, head: str) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """The head's row blocks as ``(parameter suffix, weight, bias)``."""
    try:
        module = model.get_submodule(head)
    except AttributeError as err:
        raise GrowthError(f"{OP}: the model has no module {head!r} (pass head=<name>)") from err
    if isinstance(module, ClassHead):
        return [(str(k), w, b) for k, (w, b) in enumerate(module.blocks())]
    if isinstance(module, nn.Linear) and module.bias is not None:
        return [("", module.weight, module.bias)]
    raise GrowthError(
        f"{OP}: module {head!r} ({type(module).__name__}) is not a Linear with a bias (or a "
        "ClassHead); the output layer of a classifier must be one"
    )


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


def _new_block(
    blocks: list[tuple[str, torch.Tensor, torch.Tensor]], rows: int, *, init: str, bias: float
) -> tuple[torch.Tensor, torch.Tensor]:
    weights = torch.cat([w.detach() for _, w, _ in blocks])
    biases = torch.cat([b.detach() for _, _, b in blocks])
    if init == "mean":
        return (
            weights.mean(dim=0, keepdim=True).expand(rows, -1).clone(),
            biases.mean().expand(rows).clone(),
        )
    return torch.zeros(rows, weights.shape[1], dtype=weights.dtype, device=weights.device), (
        torch.full((rows,), bias, dtype=biases.dtype, device=biases.device)
    )


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
    blocks = _blocks_of(model, head)
    old = sum(int(w.shape[0]) for _, w, _ in blocks)
    _check(init, prior, old, classes)
    teacher = None
    if check or init == "low":
        with eval_mode(model):
            teacher = model(*inputs)
    bias = _low_bias(output_tensors(teacher)[0], prior) if teacher is not None else 0.0
    student = copy_model(model, OP)
    grown_head, sources = _grown_head(blocks, head, classes - old, init=init, bias=bias)
    _replace(student, head, grown_head)
    names = [n for n, _ in student.named_parameters()]
    param_sources: dict[str, str | None] = {n: sources.get(n, n) for n in names}
    new = [n for n in names if param_sources[n] is None]
    template = _old_name(head, "weight", blocks[0][0])  # new rows join its param group
    plans = {n: ParamPlan(param_sources[n], template=template) for n in names}
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
    return Grown(
        model=student,
        record=record,
        max_abs_error=_preserved_error(teacher, student, inputs, old) if check else 0.0,
        exact=True,
        param_sources=param_sources,
        new_param_names=new,
        notes=[f"head {head!r}: {old} -> {classes} outputs ({init})"],
        plans=plans,
    )


def _grown_head(
    blocks: list[tuple[str, torch.Tensor, torch.Tensor]],
    head: str,
    rows: int,
    *,
    init: str,
    bias: float,
) -> tuple[ClassHead, dict[str, str | None]]:
    """The new ClassHead (old blocks copied, one new block) and each parameter's old name."""
    sizes = [int(w.shape[0]) for _, w, _ in blocks] + [rows]
    weight0 = blocks[0][1]
    grown = ClassHead(int(weight0.shape[1]), sizes).to(weight0.device, weight0.dtype)
    sources: dict[str, str | None] = {}
    new_w, new_b = _new_block(blocks, rows, init=init, bias=bias)
    with torch.no_grad():
        for k, (suffix, w, b) in enumerate([*blocks, ("new", new_w, new_b)]):
            grown.get_parameter(f"weight_{k}").copy_(w)
            grown.get_parameter(f"bias_{k}").copy_(b)
            fresh = suffix == "new"
            sources[f"{head}.weight_{k}"] = None if fresh else _old_name(head, "weight", suffix)
            sources[f"{head}.bias_{k}"] = None if fresh else _old_name(head, "bias", suffix)
    return grown, sources


def _old_name(head: str, kind: str, suffix: str) -> str:
    return f"{head}.{kind}_{suffix}" if suffix else f"{head}.{kind}"


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


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
