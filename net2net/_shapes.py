"""Sizes that a model's forward passes to reshapes and splits, and the module attributes they come
from.

torch.fx bakes ``self.n_head`` into the traced graph as a literal, but the grown model runs its
own Python forward, which reads the attribute again. So every literal size that measures a growing
group (the head count in ``q.view(B, T, self.n_head, hs)``, the attention width in
``qkv.split(self.n_embd, dim=2)``) must come from an int attribute of the module whose forward
holds the op (or of one of its parents), and growth rewrites that attribute. A literal that no
attribute holds cannot be rewritten: the groups it measures keep their width, with a reason that
names the module. Sizes computed from tensors (``x.size(-1) // self.n_head``) are not literals;
the forward computes them again.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from torch import fx, nn

from ._errors import GrowthError
from ._layout import Segs, has_groups
from ._ops import expand_index as _expand_index
from ._trace import TraceState


@dataclass(frozen=True)
class SizeLiteral:
    """A literal ``value`` in the op at ``node`` that equals the size of ``segs`` (a stretch of a
    dim): when those groups grow, the literal must become their new size."""

    node: fx.Node
    value: int
    segs: Segs
    arg: int | None = None  # its position among a view's sizes

    def where(self) -> str:
        label = f"Tensor.{self.node.target}" if self.node.op == "call_method" else "op"
        return f"{label} (node '{self.node.name}')"


def scopes(node: fx.Node) -> list[str]:
    """The modules whose forward holds ``node``, innermost first, ending with the root ("")."""
    stack = node.meta.get("nn_module_stack") or {}
    paths = [str(v[0]) if isinstance(v, tuple) else str(k) for k, v in stack.items()]
    return [*reversed(paths), ""]


def _op_name(node: fx.Node) -> str:
    if node.op == "call_method":
        return str(node.target)
    if node.op == "call_function":
        return str(getattr(node.target, "__name__", ""))
    return ""


def _view_literals(node: fx.Node, state: TraceState) -> Iterator[SizeLiteral]:
    """view / reshape: the target size of each output dim that holds groups."""
    args: list[Any] = list(node.args[1:]) if node.op == "call_method" else list(node.args[1:2])
    if len(args) == 1 and isinstance(args[0], (list, tuple)):
        args = list(args[0])
    for d, segs in state.layouts.get(node, {}).items():
        size = args[d] if d < len(args) else None
        if isinstance(size, int) and size != -1 and has_groups(segs):
            yield SizeLiteral(node, size, segs, d)


def _split_literals(node: fx.Node, state: TraceState) -> Iterator[SizeLiteral]:
    """split: the size of each output (an int gives every output but a remainder that size)."""
    parts = state.parts.get(node)
    src = node.args[0]
    shape = state.shapes.get(src) if isinstance(src, fx.Node) else None
    if parts is None or shape is None or _op_name(node) != "split":
        return
    size = node.args[1] if len(node.args) > 1 else None
    for key in ("split_size", "split_size_or_sections"):
        size = node.kwargs.get(key, size)
    dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
    if not isinstance(dim, int):
        return
    dim = dim + len(shape) if dim < 0 else dim
    sizes = list(size) if isinstance(size, (list, tuple)) else [size] * len(parts)
    for part, value in zip(parts, sizes, strict=False):
        segs = part.get(dim)
        if not isinstance(value, int) or segs is None or not has_groups(segs):
            continue
        if sum(x.size for x in segs) == value:  # not the remainder of an int split
            yield SizeLiteral(node, int(value), segs)


def _slice_literals(node: fx.Node, state: TraceState) -> Iterator[SizeLiteral]:
    """x[..., a:b] on a dim that holds groups: the bounds are offsets into the channels."""
    src = node.args[0]
    index = node.args[1] if len(node.args) > 1 else None
    if not isinstance(src, fx.Node) or index is None or state.shapes.get(src) is None:
        return
    shape = state.shapes.get(src)
    assert shape is not None
    items = [i for i in _expand_index(index, len(shape)) or [] if i is not None]
    lay = state.layouts.get(src, {})
    for d, i in enumerate(items):
        if not isinstance(i, slice) or d not in lay:
            continue
        for bound in (i.start, i.stop):
            if isinstance(bound, int) and bound > 0:
                prefix = _prefix(lay[d], bound)
                if prefix is not None and has_groups(prefix):
                    yield SizeLiteral(node, bound, prefix)


def _prefix(segs: Segs, offset: int) -> Segs | None:
    out = []
    total = 0
    for s in segs:
        if total == offset:
            break
        out.append(s)
        total += s.size
    return tuple(out) if total == offset else None


_COLLECTORS: dict[str, Callable[[fx.Node, TraceState], Iterator[SizeLiteral]]] = {
    "view": _view_literals,
    "reshape": _view_literals,
    "split": _split_literals,
    "getitem": _slice_literals,
}


def size_literals(gm: fx.GraphModule, state: TraceState) -> list[SizeLiteral]:
    """Every literal size in the graph that measures a group."""
    out: list[SizeLiteral] = []
    for node in gm.graph.nodes:
        collect = _COLLECTORS.get(_op_name(node))
        if collect is not None:
            out += collect(node, state)
    return out


MULTIPLES = (1, 2, 3, 4)  # a literal may be a small multiple of an attribute (2 * self.n_embd)


def _int_attrs(module: nn.Module, value: int) -> tuple[int, list[str]]:
    """The smallest multiple c and the int attributes a with value == c · a."""
    ints = {
        k: v
        for k, v in vars(module).items()
        if isinstance(v, int) and not isinstance(v, bool) and v > 0 and not k.startswith("_")
    }
    for c in MULTIPLES:
        names = [k for k, v in ints.items() if c * v == value]
        if names:
            return c, names
    return 1, []


Probes = dict[tuple[int, str], list[fx.Node] | None]  # (module id, attribute) → a trace's nodes


def _probe(
    model: nn.Module, module: nn.Module, names: list[str], lit: SizeLiteral, probes: Probes
) -> list[str]:
    """The attributes among ``names`` (all holding one value) that the op at ``lit.node`` reads:
    each is set to another value for one more trace (kept in ``probes`` for the other literals),
    and read if the literal changes with it. The model is restored after each trace. All of
    ``names`` when the forward takes another path before the op (control flow on the
    attribute): then the caller stays ambiguous."""

    def literal(n: fx.Node) -> Any:
        if lit.arg is None:
            return _plain((n.args, n.kwargs))
        sizes = _shape_args(n)
        return _plain(sizes[lit.arg]) if lit.arg < len(sizes) else None

    base = list(lit.node.graph.nodes)
    upto = base.index(lit.node) + 1
    read: list[str] = []
    for name in names:
        nodes = _probe_trace(model, module, name, probes)
        if nodes is None or [(n.op, n.target) for n in nodes[:upto]] != [
            (n.op, n.target) for n in base[:upto]
        ]:
            return names  # the forward took another path before the op
        if literal(nodes[upto - 1]) != literal(lit.node):
            read.append(name)
    return read or names


def _probe_trace(
    model: nn.Module, module: nn.Module, name: str, probes: Probes
) -> list[fx.Node] | None:
    """The nodes of a trace of ``model`` with ``module.name`` set to another value."""
    from ._graph import trace  # here: the graph module imports this one

    key = (id(module), name)
    if key not in probes:
        old = getattr(module, name)
        try:
            setattr(module, name, old + 7919)  # a prime no size is likely to equal
            probes[key] = list(trace(model, "widen").graph.nodes)
        except GrowthError:
            probes[key] = None
        finally:
            setattr(module, name, old)
    return probes[key]


def _plain(value: Any) -> Any:
    """Node arguments with nodes replaced by their names (to compare two traces)."""
    if isinstance(value, fx.Node):
        return value.name
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def attribute_of(
    model: nn.Module, lit: SizeLiteral, probes: Probes | None = None
) -> tuple[str, str, int] | str:
    """(module path, attribute name, c) such that the literal is c times the attribute, or the
    reason no attribute can be found."""
    modules = dict(model.named_modules())
    for path in scopes(lit.node):
        module = modules.get(path)
        if module is None:
            continue
        c, names = _int_attrs(module, lit.value)
        if len(names) > 1:
            names = _probe(model, module, names, lit, {} if probes is None else probes)
        if len(names) == 1:
            return path, names[0], c
        if len(names) > 1:
            return (
                f"{lit.where()} in '{path or type(model).__name__}' uses the size {lit.value} of "
                f"group '{{group}}', and attributes {', '.join(names)} all hold {lit.value}, so "
                "net2net cannot tell which one to grow; give them different values or compute "
                "the size from a tensor (x.size(-1))"
            )
    scope = scopes(lit.node)[0]
    owner = modules.get(scope, model)
    return (
        f"{lit.where()} in '{scope or type(model).__name__}' ({type(owner).__name__}) hard-codes "
        f"the size {lit.value} of group '{{group}}' as a literal, which net2net cannot rewrite; "
        "read it from an attribute of the module (e.g. self.n_head, self.n_embd) or compute it "
        "from a tensor (x.size(-1))"
    )


def pin_unwritable(model: nn.Module, gm: fx.GraphModule, state: TraceState) -> None:
    """Groups measured by a literal that no attribute holds keep their width."""
    for lit in size_literals(gm, state):
        found = attribute_of(model, lit, state.probes)
        if isinstance(found, str):
            state.pin_layout({0: lit.segs}, found)


def attribute_updates(
    model: nn.Module,
    gm: fx.GraphModule,
    state: TraceState,
    new_size: Callable[[Segs], int],
) -> dict[tuple[str, str], tuple[int, int]]:
    """(module path, attribute) → (old, new) for every literal size that growth changes. Raises
    GrowthError when one attribute would need two different new values."""
    updates: dict[tuple[str, str], tuple[int, int]] = {}
    for lit in size_literals(gm, state):
        new = new_size(lit.segs)
        found = attribute_of(model, lit, state.probes)
        if isinstance(found, str):
            if new != lit.value:
                raise GrowthError(f"widen: {found}")
            continue
        path, attr, c = found
        if new % c:
            raise GrowthError(
                f"widen: {lit.where()} in '{path}' uses {c} × {attr} as a size, which growth "
                f"would make {new}, not a multiple of {c}; grow by a factor that keeps it one"
            )
        key, new = (path, attr), new // c
        old_new = updates.get(key)
        if old_new is not None and old_new[1] != new:
            raise GrowthError(
                f"widen: attribute '{attr}' of '{path}' gives the sizes of several groups, which "
                f"would need both {old_new[1]} and {new} after growth; grow them by the same "
                "factor, or give each size its own attribute"
            )
        if old_new is None:
            updates[key] = (lit.value // c, new)
    return {k: v for k, v in updates.items() if v[0] != v[1]}


def set_attributes(model: nn.Module, updates: Mapping[tuple[str, str], tuple[int, int]]) -> None:
    modules = dict(model.named_modules())
    for (path, attr), (_, new) in updates.items():
        setattr(modules[path], attr, new)


# -- sizes computed from other tensors: groups that must grow by the same factor -----------------

_ARITH = {
    operator.floordiv,
    operator.mul,
    operator.add,
    operator.sub,
    operator.mod,
    operator.truediv,
}


def _size_sources(value: Any, state: TraceState, index: int | None = None) -> set[int]:
    """The groups whose widths the int ``value`` (a node of size arithmetic) is computed from."""
    if not isinstance(value, fx.Node):
        return set()
    name = _op_name(value)
    if name == "getitem" and isinstance(value.args[1], int):
        return _size_sources(value.args[0], state, value.args[1])
    if value.op == "call_function" and value.target in _ARITH:
        return {g for a in value.args for g in _size_sources(a, state)}
    is_shape = name == "getattr" and len(value.args) > 1 and value.args[1] == "shape"
    if name != "size" and not is_shape:
        return set()
    t = value.args[0]
    shape = state.shapes.get(t) if isinstance(t, fx.Node) else None
    if shape is None:
        return set()
    dim = value.args[1] if name == "size" and len(value.args) > 1 else value.kwargs.get("dim")
    dims = [dim] if isinstance(dim, int) else [index] if index is not None else range(len(shape))
    lay = state.layouts.get(t, {}) if isinstance(t, fx.Node) else {}
    return {
        state.groups.find(s.gid)
        for d in dims
        for s in lay.get(d + len(shape) if d < 0 else d, ())
        if s.gid is not None
    }


def _shape_args(node: fx.Node) -> list[Any]:
    name = _op_name(node)
    if name in ("view", "reshape"):
        args = list(node.args[1:]) if node.op == "call_method" else list(node.args[1:2])
        return list(args[0]) if len(args) == 1 and isinstance(args[0], (list, tuple)) else args
    if name == "split" and len(node.args) > 1:
        size = node.args[1]
        return list(size) if isinstance(size, (list, tuple)) else [size]
    return []


def _equal_parts(node: fx.Node, state: TraceState) -> set[int]:
    """The groups of the outputs of ``chunk(n)`` or ``split(size)``: the forward gives every
    output one size, so they grow by one factor."""
    parts = state.parts.get(node)
    size = node.args[1] if len(node.args) > 1 else None
    if parts is None or isinstance(size, (list, tuple)):
        return set()
    return {
        state.groups.find(s.gid)
        for part in parts
        for segs in part.values()
        for s in segs
        if s.gid is not None
    }


def size_links(gm: fx.GraphModule, state: TraceState) -> list[tuple[set[int], fx.Node]]:
    """Groups that a reshape's computed size ties together: ``q.view(B, T, n_head, C // n_head)``
    with C the stream's width makes the heads' size depend on the stream, so the stream and the
    heads keep their ratio only if they grow by the same factor."""
    links: list[tuple[set[int], fx.Node]] = []
    for node in gm.graph.nodes:
        equal = _equal_parts(node, state)
        if len(equal) > 1:
            links.append((equal, node))
        args = [a for a in _shape_args(node) if isinstance(a, fx.Node)]
        if not args:
            continue
        src = node.args[0]
        lays = [state.layouts.get(node, {})]
        if isinstance(src, fx.Node):
            lays.append(state.layouts.get(src, {}))
        targets = {
            state.groups.find(s.gid)
            for lay in lays
            for segs in lay.values()
            for s in segs
            if s.gid is not None
        }
        deps = {g for a in args for g in _size_sources(a, state)}
        if targets and deps - targets:
            links.append((targets | deps, node))
    return links
