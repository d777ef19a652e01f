"""Rules for the tensor functions and methods that appear between layers in a traced graph.

Each rule maps the input layouts of one call to its output layout, coupling or blocking groups on
the way. Anything without a rule blocks the groups that reach it (the refusal names the op).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

import torch
from torch import fx
from torch.nn import functional as F  # noqa: N812

from ._layout import Layout, Seg, Segs, canonical, fixed, has_groups, reshape_layout
from ._trace import OpContext

OpRule = Callable[[OpContext], Layout]

FUNCTIONS: dict[Any, OpRule] = {}
METHODS: dict[str, OpRule] = {}


def rule_for(node: fx.Node) -> OpRule | None:
    if node.op == "call_function":
        return FUNCTIONS.get(node.target)
    if node.op == "call_method" and isinstance(node.target, str):
        return METHODS.get(node.target)
    return None


def label_of(node: fx.Node) -> str:
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    target = node.target
    mod = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", str(target))
    if mod.startswith("torch.nn.functional"):
        return f"F.{name}"
    if mod == "_operator" or target in vars(operator).values():
        return f"operator.{name}"
    return f"torch.{name}" if mod.startswith("torch") or not mod else f"{mod}.{name}"


def _dim(d: int, rank: int) -> int:
    return d + rank if d < 0 else d


# -- rules ---------------------------------------------------------------------------------------


def _unary(ctx: OpContext) -> Layout:
    return dict(ctx.layout_of(ctx.arg(0, "input")))


def _elementwise(ctx: OpContext) -> Layout:
    return ctx.broadcast(ctx.tensor_inputs())


def _where(ctx: OpContext) -> Layout:
    return ctx.broadcast(ctx.tensor_inputs())


def _no_tensor(ctx: OpContext) -> Layout:
    return {}


def _cat(ctx: OpContext) -> Layout:
    tensors = ctx.arg(0, "tensors")
    out_shape = ctx.out_shape
    if not isinstance(tensors, (list, tuple)) or out_shape is None:
        return ctx.block()
    rank = len(out_shape)
    dim = _dim(int(ctx.arg(1, "dim", 0)), rank)
    parts = [t for t in tensors if ctx.shape_of(t) is not None]
    result: Layout = {}
    for d in range(rank):
        if d == dim:
            continue
        met = [ctx.layout_of(t).get(d) or fixed(_size(ctx, t, d)) for t in parts]
        if any(has_groups(s) for s in met):
            merged = met[0]
            for other in met[1:]:
                merged = ctx.state.unify(merged, other, ctx.where())
            result[d] = merged
    segs: list[Seg] = []
    for t in parts:
        segs += ctx.layout_of(t).get(dim) or fixed(_size(ctx, t, dim))
    joined = canonical(tuple(segs))
    if has_groups(joined):
        result[dim] = joined
    return result


def _size(ctx: OpContext, t: Any, d: int) -> int:
    shape = ctx.shape_of(t)
    assert shape is not None
    return shape[d]


def _stack(ctx: OpContext) -> Layout:
    tensors = ctx.arg(0, "tensors")
    out_shape = ctx.out_shape
    if not isinstance(tensors, (list, tuple)) or out_shape is None:
        return ctx.block()
    dim = _dim(int(ctx.arg(1, "dim", 0)), len(out_shape))
    parts = [t for t in tensors if ctx.shape_of(t) is not None]
    result: Layout = {}
    for d in range(len(out_shape) - 1):  # the inputs' dims (all inputs have one shape)
        met = [ctx.layout_of(t).get(d) or fixed(_size(ctx, t, d)) for t in parts]
        if any(has_groups(s) for s in met):
            merged = met[0]
            for other in met[1:]:
                merged = ctx.state.unify(merged, other, ctx.where())
            result[d + 1 if d >= dim else d] = merged
    return result


def _reshape(ctx: OpContext) -> Layout:
    src = ctx.arg(0, "input")
    in_shape, out_shape = ctx.shape_of(src), ctx.out_shape
    if in_shape is None or out_shape is None:
        return ctx.block()
    out, lost = reshape_layout(in_shape, ctx.layout_of(src), out_shape)
    for gid in lost:
        ctx.state.groups.pin(
            gid,
            f"{ctx.where()} splits or interleaves the channels of group '{{group}}' (as an "
            "attention-style reshape does); net2net cannot remap that",
        )
    return out


def _permute_dims(ctx: OpContext, rank: int) -> list[int] | None:
    """The permutation (output dim -> input dim) of permute/transpose/t/movedim."""
    node = ctx.node
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    args: list[Any] = list(node.args[1:])
    if name == "permute":
        dims: Any = args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else args
        if not dims:
            dims = node.kwargs.get("dims", [])
        return [_dim(int(d), rank) for d in dims]
    if name in ("transpose", "swapaxes", "swapdims"):
        a = _dim(int(args[0] if args else cast(int, node.kwargs["dim0"])), rank)
        b = _dim(int(args[1] if len(args) > 1 else cast(int, node.kwargs["dim1"])), rank)
        perm = list(range(rank))
        perm[a], perm[b] = perm[b], perm[a]
        return perm
    if name == "t":
        return list(range(rank))[::-1]
    if name in ("movedim", "moveaxis"):
        src, dst = args[0], args[1]
        if not isinstance(src, int) or not isinstance(dst, int):
            return None
        order = list(range(rank))
        s = _dim(src, rank)
        order.remove(s)
        order.insert(_dim(dst, rank), s)
        return order
    return None


def _permute(ctx: OpContext) -> Layout:
    src = ctx.arg(0, "input")
    shape = ctx.shape_of(src)
    if shape is None:
        return ctx.block()
    perm = _permute_dims(ctx, len(shape))
    if perm is None or sorted(perm) != list(range(len(shape))):
        return ctx.block()
    lay = ctx.layout_of(src)
    return {j: lay[i] for j, i in enumerate(perm) if i in lay}


def _reduce(ctx: OpContext) -> Layout:
    src = ctx.arg(0, "input")
    shape = ctx.shape_of(src)
    if shape is None or ctx.out_shape is None:
        return ctx.block()
    rank = len(shape)
    dim = ctx.arg(1, "dim", None)
    keepdim = bool(ctx.arg(2, "keepdim", False))
    if dim is None:
        dims = list(range(rank))
    elif isinstance(dim, int):
        dims = [_dim(dim, rank)]
    elif isinstance(dim, (list, tuple)) and all(isinstance(d, int) for d in dim):
        dims = [_dim(int(d), rank) for d in dim]
    else:
        return ctx.block()
    lay = ctx.layout_of(src)
    for d in dims:
        if d in lay:
            ctx.state.pin_layout(
                {d: lay[d]},
                f"{ctx.where()} reduces over the channels of group '{{group}}', which new units "
                "would change; reduce over other dims only",
            )
    out: Layout = {}
    for d, segs in lay.items():
        if d in dims:
            continue
        nd = d if keepdim else d - sum(1 for r in dims if r < d)
        out[nd] = segs
    return out


def _spatial(nd: int | None) -> OpRule:
    def rule(ctx: OpContext) -> Layout:
        src = ctx.arg(0, "input")
        shape = ctx.shape_of(src)
        if shape is None:
            return ctx.block()
        n = nd if nd is not None else max(len(shape) - 2, 1)
        lay = ctx.layout_of(src)
        for d in range(len(shape) - n, len(shape)):
            if d in lay:
                ctx.state.pin_layout(
                    {d: lay[d]},
                    f"{ctx.where()} mixes values along dim {d}, which holds channels of group "
                    "'{group}'",
                )
        return {d: s for d, s in lay.items() if d < len(shape) - n}

    return rule


def _pad(ctx: OpContext) -> Layout:
    pad = ctx.arg(1, "pad", ())
    n = len(pad) // 2 if isinstance(pad, (list, tuple)) else 0
    return _spatial(n)(ctx) if n else _unary(ctx)


def _softmax(ctx: OpContext) -> Layout:
    src = ctx.arg(0, "input")
    shape = ctx.shape_of(src)
    dim = ctx.arg(1, "dim", None)
    if shape is None or not isinstance(dim, int):
        return ctx.block()
    d = _dim(dim, len(shape))
    lay = ctx.layout_of(src)
    if d in lay:
        ctx.state.pin_layout(
            {d: lay[d]}, f"{ctx.where()} normalises over the channels of group '{{group}}'"
        )
    return {k: v for k, v in lay.items() if k != d}


def _getitem(ctx: OpContext) -> Layout:
    src = ctx.arg(0, "input")
    shape = ctx.shape_of(src)
    if shape is None:
        return {}  # indexing a tuple or a size: no tensor channels involved
    index = ctx.node.args[1]
    items: Sequence[Any] = index if isinstance(index, tuple) else (index,)
    if any(isinstance(i, fx.Node) for i in items) or sum(i is Ellipsis for i in items) > 1:
        return ctx.block()
    n_real = sum(1 for i in items if i is not None and i is not Ellipsis)
    expanded: list[Any] = []
    for i in items:
        if i is Ellipsis:
            expanded += [slice(None)] * (len(shape) - n_real)
        else:
            expanded.append(i)
    expanded += [slice(None)] * (len(shape) - sum(1 for i in expanded if i is not None))
    lay = ctx.layout_of(src)
    out: Layout = {}
    in_d = out_d = 0
    for i in expanded:
        if i is None:
            out_d += 1
            continue
        if isinstance(i, slice) and i == slice(None):
            if in_d in lay:
                out[out_d] = lay[in_d]
            in_d += 1
            out_d += 1
            continue
        if in_d in lay:
            ctx.state.pin_layout(
                {in_d: lay[in_d]},
                f"{ctx.where()} indexes into the channels of group '{{group}}'; index other dims "
                "only",
            )
        in_d += 1
        if isinstance(i, slice):
            out_d += 1
        elif not isinstance(i, int):
            return ctx.block()
    return out


# -- the tables ------------------------------------------------------------------------------------


def _register() -> None:
    """The built-in rules, as a table: each rule and the functions and tensor methods it covers."""
    unary_functions: list[Any] = [
        torch.relu,
        torch.relu_,
        torch.tanh,
        torch.sigmoid,
        torch.exp,
        torch.abs,
        torch.neg,
        torch.square,
        torch.sqrt,
        torch.clamp,
        torch.clip,
        torch.erf,
        torch.sin,
        torch.cos,
        torch.log1p,
        torch.nn.functional.relu,
        F.relu6,
        F.leaky_relu,
        F.gelu,
        F.silu,
        F.elu,
        F.selu,
        F.celu,
        F.mish,
        F.softplus,
        F.softsign,
        F.hardswish,
        F.hardsigmoid,
        F.hardtanh,
        F.logsigmoid,
        F.tanhshrink,
        F.dropout,
        F.dropout1d,
        F.dropout2d,
        F.dropout3d,
        F.alpha_dropout,
        F.feature_alpha_dropout,
        operator.neg,
        operator.pos,
    ]
    elementwise_functions = (
        operator.add,
        operator.sub,
        operator.mul,
        operator.truediv,
        operator.iadd,
        operator.isub,
        operator.imul,
        operator.itruediv,
        torch.add,
        torch.sub,
        torch.mul,
        torch.div,
        torch.maximum,
        torch.minimum,
        torch.pow,
        operator.pow,
    )
    functions: list[tuple[OpRule, Iterable[Any]]] = [
        (_unary, unary_functions),
        (_elementwise, elementwise_functions),
        (_where, [torch.where]),
        (_cat, [torch.cat, torch.concat, torch.concatenate]),
        (_stack, [torch.stack]),
        (_reshape, [torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, torch.unflatten]),
        (_permute, [torch.permute, torch.transpose, torch.swapaxes, torch.t, torch.movedim]),
        (_reduce, [torch.mean, torch.sum, torch.amax, torch.amin]),
        (_spatial(1), [F.max_pool1d, F.avg_pool1d, F.adaptive_avg_pool1d, F.adaptive_max_pool1d]),
        (_spatial(2), [F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d]),
        (_spatial(3), [F.max_pool3d, F.avg_pool3d, F.adaptive_avg_pool3d, F.adaptive_max_pool3d]),
        (_spatial(None), [F.interpolate]),  # spatial dims: all after (batch, channels)
        (_pad, [F.pad]),
        (_softmax, [F.softmax, F.log_softmax, torch.softmax, torch.log_softmax]),
        (_getitem, [operator.getitem]),
        (_no_tensor, [getattr]),
    ]
    methods: list[tuple[OpRule, Iterable[str]]] = [
        (
            _unary,
            [
                "relu",
                "relu_",
                "tanh",
                "sigmoid",
                "exp",
                "abs",
                "neg",
                "square",
                "sqrt",
                "clamp",
                "clamp_",
                "clip",
                "contiguous",
                "clone",
                "detach",
                "float",
                "double",
                "half",
                "bfloat16",
                "to",
                "type_as",
                "requires_grad_",
            ],
        ),
        (_elementwise, ["add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "pow"]),
        (_reshape, ["view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as"]),
        (_permute, ["permute", "transpose", "swapaxes", "swapdims", "t", "movedim"]),
        (_reduce, ["mean", "sum", "amax", "amin"]),
        (_softmax, ["softmax", "log_softmax"]),
        (_no_tensor, ["size", "dim", "numel", "ndimension"]),
    ]
    for rule, targets in functions:
        FUNCTIONS.update(dict.fromkeys(targets, rule))
    for rule, names in methods:
        METHODS.update(dict.fromkeys(names, rule))


_register()

__all__ = ["FUNCTIONS", "METHODS", "OpRule", "Segs", "label_of", "rule_for"]
