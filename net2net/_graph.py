"""Trace a model with torch.fx and infer its width groups: the coupled sets of producers,
consumers and per-channel modules whose units must share one mapping."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from ._errors import GrowthError
from ._handlers import handler_for
from ._layout import GroupState, Layout, gids_of
from ._ops import label_of, rule_for
from ._shapes import pin_unwritable, size_links
from ._ties import Tie, resolve_ties
from ._torch_modules import traceable_forward
from ._trace import ModuleRoles, OpContext, TraceContext, TraceState

Inputs = tuple[torch.Tensor, ...]


def as_inputs(example_input: Any) -> Inputs:
    if isinstance(example_input, torch.Tensor):
        return (example_input,)
    if isinstance(example_input, (tuple, list)) and all(
        isinstance(t, torch.Tensor) for t in example_input
    ):
        return tuple(example_input)
    raise GrowthError(
        f"example_input must be a tensor or a tuple of tensors, got {type(example_input).__name__}"
    )


class _Tracer(fx.Tracer):
    """Layers with a handler are leaves; everything else is traced through."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if handler_for(m) is not None:
            return True
        if traceable_forward(m) is not None:
            return False
        return bool(super().is_leaf_module(m, module_qualified_name))

    def call_module(
        self,
        m: nn.Module,
        forward: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """Modules whose own forward cannot be traced (torch's transformer layers, with their
        fast-path checks) are followed through an equivalent forward."""
        alt = traceable_forward(m)
        if alt is not None and not self.is_leaf_module(m, self.path_of_module(m)):
            forward = functools.partial(alt, m)
        return super().call_module(m, forward, args, kwargs)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode and no grad for the duration; every module's training flag is restored after."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, flag in flags:
            m.training = flag


class _ShapeProp(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.shapes: dict[fx.Node, tuple[int, ...] | None] = {}

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        self.shapes[n] = tuple(result.shape) if isinstance(result, torch.Tensor) else None
        return result


def trace(model: nn.Module, op: str) -> fx.GraphModule:
    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
    except Exception as err:  # fx raises TraceError, TypeError, RuntimeError, ...
        raise GrowthError(
            f"{op}: torch.fx cannot trace {type(model).__name__}: {type(err).__name__}: {err}. "
            "Make its forward traceable (no Python control flow on tensor values, no "
            "data-dependent shapes), or register the submodule type that holds that code with "
            "net2net.register_handler(TheType, net2net.Opaque()) so the trace treats it as a "
            "leaf that does not grow"
        ) from err
    return fx.GraphModule(tracer.root, graph)


@dataclass
class GroupInfo:
    """A resolved width group (internal; the public view is :class:`net2net.WidthGroup`)."""

    gid: int
    name: str
    width: int
    producers: list[str]
    consumers: list[str]
    channelwise: list[str]
    blocks: int
    grouped_by: list[str]
    balanced_by: list[str]
    reasons: list[str]
    elements_per_unit: int = 1
    grows_with: list[str] = field(default_factory=list)  # groups linked to it by a size

    @property
    def growable(self) -> bool:
        return not self.reasons


@dataclass
class Analysis:
    model: nn.Module
    gm: fx.GraphModule
    state: TraceState
    groups: dict[int, GroupInfo]  # by root gid
    calls: dict[str, int]
    output_node: fx.Node
    output: Any = None  # the traced graph's output on the example input (eval mode)
    ties: list[Tie] = field(default_factory=list)  # shared parameters that grow as one

    def find(self, gid: int) -> int:
        return self.state.groups.find(gid)

    def group(self, gid: int) -> GroupInfo:
        return self.groups[self.find(gid)]

    def by_name(self) -> dict[str, GroupInfo]:
        return {g.name: g for g in self.groups.values()}

    @property
    def roles(self) -> dict[str, ModuleRoles]:
        return self.state.roles


def _dedupe(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def analyse(model: nn.Module, example_input: Any, op: str) -> Analysis:
    """Trace ``model``, run it once on ``example_input`` (eval mode, no grad) for the shapes, and
    infer the width groups."""
    inputs = as_inputs(example_input)
    gm = trace(model, op)
    prop = _ShapeProp(gm)
    with eval_mode(model):
        try:
            teacher_out = prop.run(*inputs)
            if any(traceable_forward(m) is not None for m in model.modules()):
                # the trace followed a slow path where torch's own forward may take a fast one
                # (nested tensors give zeros at padded positions): verify against the model
                teacher_out = model(*inputs)
        except Exception as err:
            raise GrowthError(
                f"{op}: running {type(model).__name__} on example_input failed: "
                f"{type(err).__name__}: {err}; pass an input the model accepts"
            ) from err
    state = TraceState()
    state.shapes = prop.shapes
    nodes = list(gm.graph.nodes)
    state.order = {n: i for i, n in enumerate(nodes)}
    calls: dict[str, int] = {}
    output_node = nodes[-1]
    for node in nodes:
        state.layouts[node] = _node_layout(gm, state, node, calls)
        if node.op == "output":
            output_node = node
    pin_unwritable(model, gm, state)
    state.pin_other_uses()
    ties = resolve_ties(model, gm, state)
    linked = _link_groups(state, size_links(gm, state) + state.links)
    groups: dict[int, GroupInfo] = {}
    names = _group_names(state)
    for root in state.groups.roots():
        st: GroupState = state.groups.state[root]
        name = names[root]
        groups[root] = GroupInfo(
            gid=root,
            name=name,
            width=st.width,
            producers=_dedupe(st.producers),
            consumers=_dedupe(st.consumers),
            channelwise=_dedupe(st.channelwise),
            blocks=st.blocks,
            grouped_by=_dedupe(st.grouped_by),
            balanced_by=_dedupe(st.balanced_by),
            reasons=[r.replace("{group}", name) for r in _dedupe(st.reasons)],
            elements_per_unit=max(st.elements, 1),
            grows_with=[names[r] for r in linked.get(root, []) if r in names],
        )
    return Analysis(model, gm, state, groups, calls, output_node, teacher_out, ties)


def _link_groups(state: TraceState, links: list[tuple[set[int], fx.Node]]) -> dict[int, list[int]]:
    """Root → the other roots it must grow with (a computed size links them). A component with a
    group that cannot grow cannot grow at all: the others are pinned too."""
    comp: dict[int, set[int]] = {}
    for gids, _ in links:
        roots = {state.groups.find(g) for g in gids}
        merged = set(roots)
        for r in roots:
            merged |= comp.get(r, set())
        for r in merged:
            comp[r] = merged
    for root, members in comp.items():
        fixed = sorted(m for m in members if state.groups.state[m].reasons)
        if fixed and not state.groups.state[root].reasons:
            node = next(n for gids, n in links if root in {state.groups.find(g) for g in gids})
            state.groups.pin(root, _link_reason(node))
    return {r: sorted(m for m in members if m != r) for r, members in comp.items()}


def _link_reason(node: fx.Node) -> str:
    if node.op == "call_module":  # a module that needs its groups equal (MultiheadAttention)
        return (
            f"module '{node.target}' needs group '{{group}}' to grow by the same factor as a "
            "group that cannot grow (its input width is its embed_dim), so '{group}' keeps its "
            "width too"
        )
    return (
        f"op '{node.name}' computes a size of group '{{group}}' from the width of a group "
        "that cannot grow, so '{group}' keeps its width too; compute that size from the "
        "module's own attributes (e.g. self.n_embd // self.n_head)"
    )


def _group_names(state: TraceState) -> dict[int, str]:
    """Each group is named after its first producer; the parts of a split that stay apart are
    told apart by their position, ``name[0]``, ``name[1]``, …"""
    roots = state.groups.roots()
    base = {r: state.groups.state[r].producers[0] for r in roots}
    seen: dict[str, int] = {}
    for r in roots:
        seen[base[r]] = seen.get(base[r], 0) + 1
    names: dict[int, str] = {}
    counter: dict[str, int] = {}
    for r in roots:
        b = base[r]
        if seen[b] == 1:
            names[r] = b
        else:
            names[r] = f"{b}[{counter.get(b, 0)}]"
            counter[b] = counter.get(b, 0) + 1
    return names


def _node_layout(
    gm: fx.GraphModule, state: TraceState, node: fx.Node, calls: dict[str, int]
) -> Layout:
    if node.op == "get_attr":
        shape = state.shapes.get(node)
        if shape is not None and str(node.target) in dict(gm.named_parameters()):
            state.origins[node] = (str(node.target), {d: d for d in range(len(shape))})
        return {}
    if node.op == "placeholder":
        return {}
    if node.op == "output":
        ctx = OpContext(state, node, "output")
        for n in ctx.tensor_inputs():
            state.pin_layout(
                state.layouts.get(n, {}),
                "group '{group}' is an output of the model; output layers are never widened",
            )
        return {}
    if node.op == "call_module":
        assert isinstance(node.target, str)
        name = node.target
        calls[name] = calls.get(name, 0) + 1
        module = gm.get_submodule(name)
        return _module_layout(state, node, name, module)
    rule = rule_for(node)
    ctx = OpContext(state, node, label_of(node))
    if rule is None:
        return ctx.block()
    return _checked(state, node, rule(ctx), ctx.where())


def _module_layout(state: TraceState, node: fx.Node, name: str, module: nn.Module) -> Layout:
    handler = handler_for(module)
    ctx = OpContext(state, node, name)
    tensors = ctx.tensor_inputs()
    if handler is None:
        return ctx.block(
            f"module '{name}' ({type(module).__name__}) in group '{{group}}' has no net2net "
            f"handler; register one with net2net.register_handler({type(module).__name__}, ...) "
            "or keep it out of the group"
        )
    if not tensors:
        return {}
    first = tensors[0]
    follows = getattr(handler, "follows_inputs", False)
    for extra in tensors[1:]:
        if extra is first or follows:
            continue
        state.pin_layout(
            state.layouts.get(extra, {}),
            f"module '{name}' ({type(module).__name__}) takes group '{{group}}' as a second "
            "input, which its handler does not follow",
        )
    in_shape = state.shapes.get(first)
    assert in_shape is not None
    tctx = TraceContext(
        state,
        node,
        name=name,
        layout=state.layouts.get(first, {}),
        in_shape=in_shape,
        out_shape=state.shapes.get(node),
        extra=[(state.layouts.get(t, {}), state.shapes.get(t) or ()) for t in tensors[1:]]
        if follows
        else [],
    )
    out = handler.trace(module, tctx)
    state.role(name).calls += 1
    if state.shapes.get(node) is None and node in state.parts:
        return {}  # a tuple: its items' layouts are in state.parts
    if state.shapes.get(node) is None:
        state.pin_layout(
            out,
            f"module '{name}' ({type(module).__name__}) returns no single tensor; group "
            "'{group}' cannot be followed",
        )
        return {}
    return _checked(state, node, out, f"module '{name}'")


def _checked(state: TraceState, node: fx.Node, out: Layout, where: str) -> Layout:
    """A layout that does not fit the node's shape means a rule lost track: block, never guess."""
    shape = state.shapes.get(node)
    if shape is None:
        if out:
            state.pin_layout(
                out, f"{where} returns no tensor; group '{{group}}' cannot be followed"
            )
        return {}
    bad = {d: s for d, s in out.items() if d >= len(shape) or sum(x.size for x in s) != shape[d]}
    if bad:
        state.pin_layout(
            bad, f"net2net lost track of group '{{group}}' at {where}; please report this model"
        )
        return {d: s for d, s in out.items() if d not in bad}
    return out


def output_tensors(value: Any) -> list[torch.Tensor]:
    """The tensors in a model output (tensor, tuple, list or dict, nested)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in output_tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in output_tensors(v)]
    return []


def max_abs_error(teacher: Any, student: Any) -> float:
    a, b = output_tensors(teacher), output_tensors(student)
    if len(a) != len(b):
        return float("inf")
    err = 0.0
    for x, y in zip(a, b, strict=True):
        if x.shape != y.shape:
            return float("inf")
        if x.numel():
            err = max(err, float((x.double() - y.double()).abs().max()))
    return err


__all__ = ["Analysis", "GroupInfo", "analyse", "as_inputs", "eval_mode", "gids_of"]
