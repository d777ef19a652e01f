"""Rules for the tensor functions and methods that appear between layers in a traced graph.

Each rule maps the input layouts of one call to its output layout, coupling or blocking groups on
the way. Anything without a rule blocks the groups that reach it (the refusal names the op).
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

import torch
from torch import fx
from torch.nn import functional as F  # noqa: N812

from ._layout import Layout, Seg, Segs, canonical, fixed, has_groups
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
        params = [(t, d) for t in parts if d not in ctx.layout_of(t) and t in ctx.state.origins]
        met = [
            ctx.layout_of(t).get(d) or fixed(_size(ctx, t, d))
            for t in parts
            if (t, d) not in params
        ]
        merged = ctx.meet(met, params)
        if merged is not None:
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
    return ctx.state.reshape(in_shape, ctx.layout_of(src), out_shape, ctx.where())


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
        if d in lay and _mean_over_one_group(ctx, lay[d], len(dims)):
            continue
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


def _mean_over_one_group(ctx: OpContext, segs: Segs, ndims: int) -> bool:
    """x.mean(-1) over the channels of one group (an RMSNorm or LayerNorm written out): the mean
    of the grown channels equals the old one if every unit is replicated equally often, so the
    group takes integer factors only, with the module that holds the op named as its norm."""
    return _name_of(ctx.node) == "mean" and ndims == 1 and _balance(ctx, segs)


def _balance(ctx: OpContext, segs: Segs) -> bool:
    """The op normalises over ``segs``: one group, replicated equally often (integer factors)."""
    segs = canonical(segs)
    if len(segs) != 1 or segs[0].gid is None:
        return False
    st = ctx.state.groups.get(segs[0].gid)
    name = ctx.scope() or ctx.node.name
    if name not in st.balanced_by:
        st.balanced_by.append(name)
    return True


def _functional_norm(ctx: OpContext) -> Layout:
    """F.layer_norm / F.rms_norm(x, shape, weight, bias) over the last dim (nanoGPT's LayerNorm
    class): a norm over one group, integer factors only; weight and bias, used as-is, are tiled
    with the group."""
    src, weight = ctx.arg(0, "input"), ctx.arg(2, "weight")
    bias = ctx.arg(3, "bias") if _name_of(ctx.node) == "layer_norm" else None
    shape, ns = ctx.shape_of(src), ctx.arg(1, "normalized_shape")
    n = len(ns) if isinstance(ns, (list, tuple)) else len(ctx.shape_of(weight) or ())
    if shape is None or not n:  # a shape from a tensor (weight.shape): the weight's rank
        return ctx.block()
    lay = dict(ctx.layout_of(src))
    dims = range(len(shape) - n, len(shape))
    if any(d in lay for d in dims) and (n != 1 or not _balance(ctx, lay[dims[0]])):
        return ctx.block(
            f"{ctx.where()} normalises over group '{{group}}' together with other channels or "
            "dims, so no replication keeps its statistics; normalise over one group's last dim"
        )
    segs = lay.get(len(shape) - 1)
    for p in (weight, bias):
        if segs is not None and isinstance(p, fx.Node) and not ctx.adopt(p, 0, segs):
            ctx.state.pin_layout(
                {0: segs}, f"{ctx.where()} takes a weight that cannot grow with group '{{group}}'"
            )
    return lay


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
    index = ctx.node.args[1]
    if shape is None:
        parts = ctx.state.parts.get(src) if isinstance(src, fx.Node) else None
        if parts is not None and isinstance(index, int):
            return dict(parts[index])  # one output of a split
        return {}  # indexing a tuple or a size: no tensor channels involved
    expanded = expand_index(index, len(shape))
    if expanded is None:
        return ctx.block()
    _index_origin(ctx, src, expanded)
    out: Layout = {}
    in_d = out_d = 0
    for i in expanded:
        step = _index_dim(ctx, src, in_d, i)
        if step is None:
            return ctx.block()
        used, made, segs = step
        if segs is not None and has_groups(segs):
            out[out_d] = segs
        in_d += used
        out_d += made
    return out


def _index_origin(ctx: OpContext, src: Any, expanded: Sequence[Any]) -> None:
    """A parameter indexed with slices and None keeps its axes where the slice takes them whole
    (learned positions ``self.pos[:, :T]``)."""
    origin = ctx.state.origins.get(src) if isinstance(src, fx.Node) else None
    shape = ctx.shape_of(src)
    if origin is None or shape is None:
        return
    kept: dict[int, int] = {}
    in_d = out_d = 0
    for i in expanded:
        if i is None:
            out_d += 1
            continue
        if not isinstance(i, slice):
            return
        if i == slice(None) and in_d in origin[1]:
            kept[out_d] = origin[1][in_d]
        in_d += 1
        out_d += 1
    ctx.state.origins[ctx.node] = (origin[0], kept)


def expand_index(index: Any, rank: int) -> list[Any] | None:
    """A tensor index as one item per dim (None items insert a dim); None if not static."""
    items: Sequence[Any] = index if isinstance(index, tuple) else (index,)
    if any(isinstance(i, fx.Node) for i in items) or sum(i is Ellipsis for i in items) > 1:
        return None
    n_real = sum(1 for i in items if i is not None and i is not Ellipsis)
    expanded: list[Any] = []
    for i in items:
        if i is Ellipsis:
            expanded += [slice(None)] * (rank - n_real)
        else:
            expanded.append(i)
    expanded += [slice(None)] * (rank - sum(1 for i in expanded if i is not None))
    return expanded


def _index_dim(ctx: OpContext, src: fx.Node, d: int, i: Any) -> tuple[int, int, Segs | None] | None:
    """One index item at input dim ``d``: (input dims used, output dims made, the output dim's
    segments); None for an index net2net cannot follow."""
    if i is None:
        return 0, 1, None
    lay = ctx.layout_of(src)
    if isinstance(i, slice) and (i == slice(None) or d not in lay):
        return 1, 1, lay.get(d)
    if isinstance(i, slice) and _plain_slice(i):
        segs = _slice(ctx, src, d, i)
        if segs is not None:
            return 1, 1, segs
    elif d in lay:
        ctx.state.pin_layout(
            {d: lay[d]},
            f"{ctx.where()} indexes into the channels of group '{{group}}'; index other dims only",
        )
    if isinstance(i, slice):
        return 1, 1, None
    return (1, 0, None) if isinstance(i, int) else None


def _plain_slice(i: slice) -> bool:
    ints = all(b is None or isinstance(b, int) for b in (i.start, i.stop))
    return ints and i.step in (None, 1)


def _slice(ctx: OpContext, src: fx.Node, dim: int, i: slice) -> Segs | None:
    """The channels ``x[..., a:b]`` of dim ``dim``: groups cut by the slice are split into parts
    (see :meth:`TraceState.refine`); None (and the groups pinned) where a cut falls inside a unit."""
    shape = ctx.shape_of(src)
    assert shape is not None
    start, stop, _ = i.indices(shape[dim])
    if start >= stop:
        return ()
    parts = _cut(ctx, src, dim, [start, stop])
    if parts is None:
        return None
    return parts[sorted({0, shape[dim], start, stop}).index(start)]


def _cut(ctx: OpContext, src: fx.Node, dim: int, bounds: Sequence[int]) -> list[Segs] | None:
    """The segments of ``src``'s dim ``dim`` between consecutive cut points (0, *bounds, size),
    after cutting every group that a bound crosses into parts at unit boundaries."""
    shape = ctx.shape_of(src)
    assert shape is not None
    points = sorted({0, shape[dim], *(b for b in bounds if 0 < b < shape[dim])})
    for _ in range(shape[dim] + 1):  # each refinement aligns one more group with the points
        segs = canonical(ctx.layout_of(src).get(dim) or fixed(shape[dim]))
        crossing = _crossing(segs, points)
        if crossing is None:
            break
        gid, cuts = crossing
        if cuts is None:
            ctx.state.groups.pin(
                gid,
                f"{ctx.where()} cuts the channels of group '{{group}}' inside a unit (a head); "
                "cut at unit boundaries only",
            )
            return None
        if not ctx.state.refine(gid, cuts, ctx.where()):
            return None
    else:
        ctx.state.pin_layout({dim: segs}, f"{ctx.where()} cuts group '{{group}}' too often")
        return None
    return [_between(segs, a, b) for a, b in itertools.pairwise(points)]


def _crossing(segs: Segs, points: Sequence[int]) -> tuple[int, list[int] | None] | None:
    """The first group that a cut point falls inside, with the cuts in its units (None: a cut
    inside a unit's block); None when every point falls between segments."""
    offset = 0
    for s in segs:
        lo, hi = offset, offset + s.size
        offset = hi
        inner = [p - lo for p in points if lo < p < hi]
        if not inner or s.gid is None:
            continue
        if any(c % s.block for c in inner):
            return s.gid, None
        return s.gid, [c // s.block for c in inner]
    return None


def _between(segs: Segs, a: int, b: int) -> Segs:
    """The whole segments between element offsets a and b (fixed stretches may be cut)."""
    out: list[Seg] = []
    offset = 0
    for s in segs:
        lo, hi = offset, offset + s.size
        offset = hi
        x, y = max(lo, a), min(hi, b)
        if x >= y:
            continue
        out.append(s if (x, y) == (lo, hi) else Seg(None, y - x, 1))
    return canonical(tuple(out))


def _split_sizes(ctx: OpContext, size: int) -> list[int] | None:
    """The sizes of the outputs of split / chunk along the split dim."""
    name = _name_of(ctx.node)
    arg = ctx.arg(1, "split_size_or_sections", None)
    for key in ("split_size", "chunks", "sections"):
        arg = ctx.node.kwargs.get(key, arg)
    if isinstance(arg, (list, tuple)) and all(isinstance(a, int) for a in arg):
        return [int(a) for a in arg]
    if not isinstance(arg, int) or arg <= 0:
        return None
    step = -(-size // arg) if name == "chunk" else arg
    return [step] * (size // step) + ([size % step] if size % step else [])


def _name_of(node: fx.Node) -> str:
    if node.op == "call_method":
        return str(node.target)
    return str(getattr(node.target, "__name__", ""))


def _split(ctx: OpContext) -> Layout:
    """split / chunk along a dim: each output gets its stretch of the input's layout (groups cut
    at the boundaries become parts, which may grow apart). The outputs are taken by getitem."""
    src = ctx.arg(0, "input")
    shape = ctx.shape_of(src)
    if shape is None:
        return ctx.block()
    dim = _dim(int(ctx.arg(2, "dim", 0)), len(shape))
    sizes = _split_sizes(ctx, shape[dim])
    users_ok = all(
        u.op == "call_function" and u.target is operator.getitem and isinstance(u.args[1], int)
        for u in ctx.node.users
    )
    if sizes is None or sum(sizes) != shape[dim] or not users_ok:
        return ctx.block()
    lay = ctx.layout_of(src)
    pieces: list[Segs] | None = [()] * len(sizes)
    if dim in lay:
        bounds = [sum(sizes[:i]) for i in range(1, len(sizes))]
        pieces = _cut(ctx, src, dim, bounds)
    rest = {d: v for d, v in ctx.layout_of(src).items() if d != dim}
    parts: list[Layout] = []
    for piece in pieces or [()] * len(sizes):
        part = dict(rest)
        if has_groups(piece):
            part[dim] = piece
        parts.append(part)
    ctx.state.parts[ctx.node] = parts
    return {}


def _attention(ctx: OpContext) -> Layout:
    """F.scaled_dot_product_attention(q, k, v, attn_mask): heads (and batch dims) meet
    elementwise, so q, k and v share one mapping there; the sequence dims are attended over and
    q/k's last dim is contracted (both must keep their size, which also keeps the default scale
    1/sqrt(head size)); v's last dim passes to the output."""
    q, k, v = ctx.arg(0, "query"), ctx.arg(1, "key"), ctx.arg(2, "value")
    mask = ctx.arg(3, "attn_mask")
    out_shape = ctx.out_shape
    shapes = [ctx.shape_of(t) for t in (q, k, v)]
    if out_shape is None or any(s is None or len(s) != len(out_shape) for s in shapes):
        return ctx.block()
    rank = len(out_shape)
    for t, dims in ((q, (rank - 2, rank - 1)), (k, (rank - 2, rank - 1)), (v, (rank - 2,))):
        _pin_dims(ctx, t, dims, "attends over or contracts")
    inputs = [t for t in (q, k, v, mask) if isinstance(t, fx.Node)]
    if ctx.node.kwargs.get("enable_gqa") and rank >= 3:
        _pin_dims(ctx, mask, range(len(ctx.shape_of(mask) or ())), "masks with")
        result = ctx.broadcast(inputs, dims=range(rank - 3))
        heads = _gqa_heads(ctx, q, [k, v], rank)
        if heads is not None:
            result[rank - 3] = heads
    else:
        result = ctx.broadcast(inputs, dims=range(rank - 2))
    lv = ctx.layout_of(v)
    if rank - 1 in lv:
        result[rank - 1] = lv[rank - 1]
    return result


def _gqa_heads(ctx: OpContext, q: Any, kv: Sequence[Any], rank: int) -> Segs | None:
    """SDPA with ``enable_gqa``: each key/value head serves ``r`` consecutive query heads, as if
    repeated with ``repeat_interleave(r, dim=-3)``; the head dims meet in those units."""
    sq = ctx.shape_of(q)
    assert sq is not None
    d = rank - 3
    merged = ctx.layout_of(q).get(d) or fixed(sq[d])
    for t in kv:
        st = ctx.shape_of(t)
        assert st is not None
        if sq[d] % st[d]:
            ctx.block()
            return None
        r = sq[d] // st[d]
        segs = ctx.layout_of(t).get(d) or fixed(st[d])
        merged = ctx.state.unify(merged, _interleave(segs, r), ctx.where())
    return merged if has_groups(merged) else None


def _interleave(segs: Segs, r: int) -> Segs:
    return canonical(tuple(Seg(s.gid, s.units, s.block * r) for s in segs))


def _repeat_interleave(ctx: OpContext) -> Layout:
    """x.repeat_interleave(r, dim): every element of dim repeated r times in place, so each unit
    of a group there owns r times its block (key/value heads repeated for grouped-query
    attention)."""
    src = ctx.arg(0, "input")
    shape = ctx.shape_of(src)
    reps, dim = ctx.arg(1, "repeats"), ctx.arg(2, "dim")
    if shape is None or not isinstance(reps, int) or not isinstance(dim, int):
        return ctx.block()
    d = _dim(dim, len(shape))
    lay = dict(ctx.layout_of(src))
    if d in lay:
        lay[d] = _interleave(lay[d], reps)
    return lay


def _expand(ctx: OpContext) -> Layout:
    """x.expand(*sizes): size-1 dims are broadcast (new leading dims may appear); the dims that
    hold groups keep their size and layout."""
    src = ctx.arg(0, "input")
    shape, out_shape = ctx.shape_of(src), ctx.out_shape
    if shape is None or out_shape is None:
        return ctx.block()
    offset = len(out_shape) - len(shape)
    origin = ctx.state.origins.get(src)
    if origin is not None:
        kept = {d + offset: ax for d, ax in origin[1].items() if shape[d] == out_shape[d + offset]}
        ctx.state.origins[ctx.node] = (origin[0], kept)
    out: Layout = {}
    for d, segs in ctx.layout_of(src).items():
        if shape[d] != out_shape[d + offset]:
            ctx.state.pin_layout(
                {d: segs},
                f"group '{{group}}' is broadcast at {ctx.where()}, so its width must stay 1",
            )
            continue
        out[d + offset] = segs
    return out


def _pin_dims(ctx: OpContext, t: Any, dims: Iterable[int], what: str) -> None:
    lay = ctx.layout_of(t)
    for d in dims:
        if d in lay:
            ctx.state.pin_layout(
                {d: lay[d]},
                f"{ctx.where()} {what} dim {d}, which holds the channels of group '{{group}}'; "
                "new units would change the result",
            )


def _matmul(ctx: OpContext) -> Layout:
    """a @ b (both at least 2-D): batch dims meet elementwise, the contracted dim must keep its
    size, a's rows and b's columns pass to the output."""
    a, b = ctx.arg(0, "input"), ctx.arg(1, "other")
    sa, sb, out_shape = ctx.shape_of(a), ctx.shape_of(b), ctx.out_shape
    if sa is None or sb is None or out_shape is None or len(sa) < 2 or len(sb) < 2:
        return ctx.block()
    _pin_dims(ctx, a, [len(sa) - 1], "contracts")
    _pin_dims(ctx, b, [len(sb) - 2], "contracts")
    rank = len(out_shape)
    result = ctx.broadcast([a, b], dims=range(rank - 2))
    la, lb = ctx.layout_of(a), ctx.layout_of(b)
    if len(sa) - 2 in la:
        result[rank - 2] = la[len(sa) - 2]
    if len(sb) - 1 in lb:
        result[rank - 1] = lb[len(sb) - 1]
    return result


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
        torch.rsqrt,
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
        (_split, [torch.split, torch.chunk]),
        (_attention, [F.scaled_dot_product_attention]),
        (_repeat_interleave, [torch.repeat_interleave]),
        (_functional_norm, [F.layer_norm, F.rms_norm]),
        (_matmul, [torch.matmul, operator.matmul, torch.bmm]),
        (_elementwise, [torch.masked_fill]),
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
                "rsqrt",
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
        (
            _elementwise,
            ["add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "pow", "masked_fill"],
        ),
        (_split, ["split", "chunk"]),
        (_repeat_interleave, ["repeat_interleave"]),
        (_expand, ["expand"]),
        (_matmul, ["matmul", "bmm"]),
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
