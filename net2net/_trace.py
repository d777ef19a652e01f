"""Trace-time bookkeeping: the roles that modules play in width groups, and the contexts that
module handlers and op rules use to declare them."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from torch import fx

from ._layout import (
    Groups,
    Layout,
    Seg,
    Segs,
    canonical,
    fixed,
    gids_of,
    has_groups,
    lcm,
    reshape_layout,
)


@dataclass
class ModuleRoles:
    """How one module's parameters meet width groups.

    ``out`` is the axis of its per-unit parameters (rows of a producer, or the channels of a
    channelwise module such as BatchNorm); ``in_`` is the axis of its input units (columns of a
    consumer). ``in_groups`` > 1 for grouped convolutions.
    """

    out: Segs | None = None
    out_kind: str | None = None  # "produce" or "channelwise"
    in_: Segs | None = None
    in_groups: int = 1
    calls: int = 0
    free: dict[str, int] = field(default_factory=dict)  # own parameters used as-is: name → axis


class TraceState:
    """Everything the trace accumulates: groups, roles, layouts and shapes per node."""

    def __init__(self) -> None:
        self.groups = Groups()
        self.roles: dict[str, ModuleRoles] = {}
        self.layouts: dict[fx.Node, Layout] = {}
        self.shapes: dict[fx.Node, tuple[int, ...] | None] = {}
        self.order: dict[fx.Node, int] = {}
        self.parts: dict[fx.Node, list[Layout]] = {}  # the layouts of a split's outputs
        # tensors that are a parameter taken as-is (get_attr, expand, slices of other dims):
        # the parameter's name and, per tensor dim, the parameter's axis
        self.origins: dict[fx.Node, tuple[str, dict[int, int]]] = {}
        self.links: list[tuple[set[int], fx.Node]] = []  # groups a module grows by one factor
        self.adopted: set[tuple[fx.Node, fx.Node]] = set()  # (parameter tensor, op) that grows it
        # traces that tell attributes apart: (module id, attribute) → nodes
        self.probes: dict[tuple[int, str], list[fx.Node] | None] = {}

    # -- re-cutting groups into units -----------------------------------------------------------
    def _rewrite(self, root: int, fn: Callable[[Seg], Segs]) -> None:
        """Replace every reference to group ``root`` (any merged member) everywhere it is held."""

        def segs(old: Segs) -> Segs:
            out: list[Seg] = []
            for s in old:
                hit = s.gid is not None and self.groups.find(s.gid) == root
                out += fn(s) if hit else (s,)
            return tuple(out)

        def layout(lay: Layout) -> Layout:
            return {d: segs(v) for d, v in lay.items()}

        for node, lay in self.layouts.items():
            self.layouts[node] = layout(lay)
        for node, parts in self.parts.items():
            self.parts[node] = [layout(p) for p in parts]
        for role in self.roles.values():
            role.out = segs(role.out) if role.out is not None else None
            role.in_ = segs(role.in_) if role.in_ is not None else None

    def coarsen(self, gid: int, f: int, where: str) -> bool:
        """Make every ``f`` consecutive units of a group one unit (attention heads): it then grows
        by whole blocks of ``f`` channels. False (and the group pinned) where that breaks a
        constraint."""
        root = self.groups.find(gid)
        st = self.groups.state[root]
        if st.width % f or (st.width // f) % st.blocks:
            self.groups.pin(root, f"{where} cuts group '{{group}}' into units of {f} channels")
            return False
        st.width //= f
        st.elements *= f
        self._rewrite(root, lambda s: (Seg(s.gid, s.units // f, s.block * f),))
        return True

    def refine(self, gid: int, cuts: Sequence[int], where: str) -> bool:
        """Cut a group into parts at unit offsets ``cuts`` (a split of a fused projection): each
        part becomes a group of its own that may grow on its own. False (and the group pinned)
        where the group's constraints couple the parts."""
        root = self.groups.find(gid)
        st = self.groups.state[root]
        if st.blocks > 1 or st.balanced_by:
            self.groups.pin(
                root,
                f"{where} splits group '{{group}}', which a grouped conv or a norm over all its "
                "channels couples; net2net cannot grow its parts apart",
            )
            return False
        bounds = [0, *sorted(set(cuts)), st.width]
        new: list[tuple[int, int]] = []
        for i, (lo, hi) in enumerate(itertools.pairwise(bounds)):
            gid_i = len(self.groups.parent)
            self.groups.parent.append(gid_i)
            self.groups.state.append(
                replace(
                    st,
                    width=hi - lo,
                    producers=list(st.producers),
                    consumers=list(st.consumers),
                    channelwise=list(st.channelwise),
                    grouped_by=list(st.grouped_by),
                    balanced_by=[],
                    reasons=list(st.reasons),
                    elements=st.elements,
                    part=i,
                )
            )
            new.append((gid_i, hi - lo))
        st.dead = True
        self._rewrite(root, lambda s: tuple(Seg(g, n, s.block) for g, n in new))
        return True

    def reshape(
        self, in_shape: tuple[int, ...], layout: Layout, out_shape: tuple[int, ...], where: str
    ) -> Layout:
        """The output layout of a reshape; groups it cannot follow are pinned with a reason, and
        groups it cuts into heads are coarsened."""
        out, lost, coarse = reshape_layout(in_shape, layout, out_shape)
        for gid in lost:
            self.groups.pin(
                gid,
                f"{where} splits or interleaves the channels of group '{{group}}'; net2net "
                "cannot remap that",
            )
        for gid, f in coarse:
            if not self.coarsen(gid, f, where):
                out = {d: v for d, v in out.items() if all(s.gid != gid for s in v)}
        return out

    # -- coupling -----------------------------------------------------------------------------
    def unify(self, a: Segs, b: Segs, where: str) -> Segs:
        """Make two channel layouts that meet elementwise share one mapping (merge their groups)."""
        a, b = self._align(canonical(a), canonical(b), where)
        same = len(a) == len(b) and all(
            (x.gid is None) == (y.gid is None) and x.units == y.units and x.block == y.block
            for x, y in zip(a, b, strict=True)
        )
        if same:
            for x, y in zip(a, b, strict=True):
                if x.gid is not None and y.gid is not None:
                    self.groups.union(x.gid, y.gid)
            return a
        shape_match = len(a) == len(b) and all(x.size == y.size for x, y in zip(a, b, strict=True))
        for segs, other in ((a, b), (b, a)):
            for s in segs:
                if s.gid is None:
                    continue
                if shape_match and not has_groups(other):
                    self.groups.pin(
                        s.gid,
                        f"group '{{group}}' meets a fixed-size tensor at {where} (for example "
                        "the model input in a residual add), so its width is fixed; add a "
                        "projection layer there if it must grow",
                    )
                else:
                    self.groups.pin(
                        s.gid,
                        f"group '{{group}}' meets channels of a different layout at {where}; "
                        "net2net cannot give them one mapping",
                    )
        return a

    def _align(self, a: Segs, b: Segs, where: str) -> tuple[Segs, Segs]:
        """One group on each side, of one size, with units of different blocks (a head dim met by
        key/value heads that ``repeat_interleave`` or an expand and reshape repeated ``r`` times
        each): every ``r`` consecutive units of the finer group become one unit, so that both
        grow by whole blocks in step (grouped-query attention keeps its grouping)."""
        if len(a) != 1 or len(b) != 1 or a[0].gid is None or b[0].gid is None:
            return a, b
        x, y = a[0], b[0]
        if x.size != y.size or x.block == y.block:
            return a, b
        fine, coarse = (x, y) if x.block < y.block else (y, x)
        f = coarse.block // fine.block
        assert fine.gid is not None
        if coarse.block % fine.block or not self.coarsen(fine.gid, f, where):
            return a, b
        aligned = Seg(fine.gid, fine.units // f, fine.block * f)
        return ((aligned,), (coarse,)) if fine is x else ((coarse,), (aligned,))

    def pin_other_uses(self) -> None:
        """A parameter that grows with a group must be used only where it meets that group (or
        on its way there: expand, slices); any other use would see its new size. Its groups keep
        their width otherwise."""
        for node, (qualified, _) in self.origins.items():
            owner, _, local = qualified.rpartition(".")
            role = self.roles.get(owner)
            if role is None or local not in role.free or role.out is None:
                continue
            for user in node.users:
                if user in self.origins or (node, user) in self.adopted or _reads_size(user):
                    continue
                self.pin_layout(
                    {0: role.out},
                    f"parameter '{qualified}' grows with group '{{group}}', but op "
                    f"'{user.name}' uses it too, where net2net cannot follow it; use it where it "
                    "meets the group only, or keep it in a module with a handler",
                )

    def pin_layout(self, layout: Layout, reason: str) -> None:
        for gid in gids_of(layout):
            self.groups.pin(gid, reason)

    def role(self, name: str) -> ModuleRoles:
        return self.roles.setdefault(name, ModuleRoles())


def _reads_size(node: fx.Node) -> bool:
    """``p.shape``, ``p.size()``, ``p.dim()``: the forward reads the grown size again."""
    if node.op == "call_method":
        return node.target in ("size", "dim")
    return node.op == "call_function" and node.target is getattr


def _norm_dim(dim: int, rank: int) -> int:
    return dim + rank if dim < 0 else dim


class TraceContext:
    """What a module handler sees of one call of its module, and how it declares roles.

    Dimensions may be given negative (counted from the end of the input's shape).
    """

    def __init__(
        self,
        state: TraceState,
        node: fx.Node,
        *,
        name: str,
        layout: Layout,
        in_shape: tuple[int, ...],
        out_shape: tuple[int, ...] | None,
        extra: Sequence[tuple[Layout, tuple[int, ...]]] = (),
    ) -> None:
        self._state = state
        self._node = node
        self.name = name
        self.in_shape = in_shape
        self.out_shape = out_shape
        self._layout = layout
        self._extra = list(extra)  # the other tensor inputs (handlers with follows_inputs)

    @property
    def rank(self) -> int:
        return len(self.in_shape)

    def dim(self, d: int) -> int:
        return _norm_dim(d, self.rank)

    def input_layout(self) -> Layout:
        return dict(self._layout)

    def _segs(self, d: int) -> Segs:
        return self._layout.get(d) or fixed(self.in_shape[d])

    def _rest(self, drop: Sequence[int]) -> Layout:
        return {d: s for d, s in self._layout.items() if d not in drop}

    # -- declarations ---------------------------------------------------------------------------
    def passthrough(self) -> Layout:
        """The output has the input's shape and each output channel depends on its own channel."""
        return self.input_layout()

    def mix(self, dims: Sequence[int], what: str) -> None:
        """The module mixes values along ``dims`` (e.g. spatial dims of a conv or a pool)."""
        for d in (self.dim(x) for x in dims):
            for s in self._layout.get(d, ()):
                if s.gid is not None:
                    self._state.groups.pin(
                        s.gid,
                        f"{what} '{self.name}' mixes values along dim {d}, which holds channels "
                        "of group '{group}'",
                    )

    def dense(
        self, dim: int, out_width: int, *, groups: int = 1, mixes: Sequence[int] = ()
    ) -> Layout:
        """Consume the input's ``dim`` (its units are this module's input units) and produce a new
        width group of ``out_width`` units at the same dim of the output (Linear, Conv)."""
        d = self.dim(dim)
        self.mix(mixes, "layer")
        role = self._state.role(self.name)
        segs = canonical(self._segs(d))
        if groups > 1 and has_groups(segs):
            if len(segs) == 1 and segs[0].block == 1 and segs[0].gid is not None:
                st = self._state.groups.get(segs[0].gid)
                st.blocks = lcm(st.blocks, groups)
                st.grouped_by.append(self.name)
            else:
                self._state.pin_layout(
                    {d: segs},
                    f"grouped conv '{self.name}' (groups={groups}) reads group '{{group}}' "
                    "through a concatenation or a reshape; net2net widens grouped convs only over "
                    "a single group",
                )
        role.in_ = segs if role.in_ is None else self._state.unify(role.in_, segs, repr(self.name))
        role.in_groups = groups
        for s in segs:
            if s.gid is not None:
                self._state.groups.get(s.gid).consumers.append(self.name)
        out = self._rest([d, *(self.dim(x) for x in mixes)])
        out[d] = self._produce(out_width, groups)
        return out

    def embed(self, out_width: int) -> Layout:
        """Append a new width group of ``out_width`` units as the output's last dim (Embedding)."""
        out = self._rest([])
        out[self.rank] = self._produce(out_width, 1)
        return out

    def _produce(self, width: int, groups: int) -> Segs:
        role = self._state.role(self.name)
        if role.out is not None and role.out_kind == "produce":
            return role.out
        gid = self._state.groups.new(width, self._state.order[self._node], self.name)
        if self.out_shape is not None and width > 0:
            per_sample = 1
            for n in self.out_shape[1:]:
                per_sample *= n
            self._state.groups.get(gid).elements = per_sample // width
        if groups > 1:
            self._state.groups.get(gid).blocks = groups
            self._state.groups.get(gid).grouped_by.append(self.name)
        role.out, role.out_kind = (Seg(gid, width, 1),), "produce"
        return role.out

    def channelwise(self, dim: int, *, balanced: bool = False, mixes: Sequence[int] = ()) -> Layout:
        """Per-channel parameters along ``dim`` (BatchNorm, LayerNorm, depthwise conv, PReLU); the
        output keeps the input's layout. ``balanced``: the module normalises over the channels
        (LayerNorm), which stays exact only if every unit is replicated equally often."""
        d = self.dim(dim)
        self.mix(mixes, "layer")
        segs = canonical(self._segs(d))
        role = self._state.role(self.name)
        if has_groups(segs):
            role.out = (
                segs if role.out is None else self._state.unify(role.out, segs, repr(self.name))
            )
            role.out_kind = "channelwise"
            gids = [s.gid for s in segs if s.gid is not None]
            for gid in gids:
                self._state.groups.get(gid).channelwise.append(self.name)
            if balanced:
                if len(segs) == 1:
                    self._state.groups.get(gids[0]).balanced_by.append(self.name)
                else:
                    self._state.pin_layout(
                        {d: segs},
                        f"norm '{self.name}' normalises over group '{{group}}' together with other "
                        "channels, so no replication keeps its statistics; normalise each group "
                        "separately or use BatchNorm",
                    )
        out = self._rest([self.dim(x) for x in mixes])
        return out

    def reshape(self) -> Layout:
        """The output is a reshape of the input (Flatten, Unflatten): channels are followed."""
        if self.out_shape is None:
            return self.block(f"module '{self.name}' in group '{{group}}' returns no tensor")
        return self._state.reshape(
            self.in_shape, self._layout, self.out_shape, f"reshape '{self.name}'"
        )

    def channels(self, dim: int) -> Segs:
        """The input's layout along ``dim``, fixed-size stretches included."""
        return canonical(self._segs(self.dim(dim)))

    def meet_inputs(self, dim: int, count: int) -> None:
        """The next ``count`` tensor inputs' ``dim`` meets the first input's there (the key and
        value of an attention whose projection shares its columns with the query's)."""
        d = self.dim(dim)
        for lay, shape in self._extra[:count]:
            segs = lay.get(len(shape) + dim if dim < 0 else dim) or fixed(shape[dim])
            if has_groups(segs) or has_groups(self._segs(d)):
                self._state.unify(self._segs(d), segs, repr(self.name))

    def dense_heads(self, dim: int, heads: int, head_size: int, *, copies: int = 1) -> Segs:
        """Consume ``dim`` like :meth:`dense` and produce a group of ``heads`` units of
        ``head_size`` channels each, whose rows repeat ``copies`` times (fused q, k, v)."""
        d = self.dim(dim)
        role = self._state.role(self.name)
        segs = canonical(self._segs(d))
        role.in_ = segs if role.in_ is None else self._state.unify(role.in_, segs, repr(self.name))
        for s in segs:
            if s.gid is not None:
                self._state.groups.get(s.gid).consumers.append(self.name)
        if role.out is None or role.out_kind != "produce":
            gid = self._state.groups.new(heads, self._state.order[self._node], self.name)
            role.out, role.out_kind = (Seg(gid, heads, head_size),) * copies, "produce"
        return role.out[:1]

    def submodule(self, child: str, dim: int, segs: Segs) -> TraceContext:
        """A context for a submodule of this leaf that reads ``segs`` at ``dim`` of a tensor of
        the output's shape (the output projection of an attention)."""
        shape = self.out_shape or self.in_shape
        return TraceContext(
            self._state,
            self._node,
            name=f"{self.name}.{child}",
            layout={_norm_dim(dim, len(shape)): segs},
            in_shape=shape,
            out_shape=shape,
        )

    def link(self, *segs: Segs) -> None:
        """The groups in ``segs`` grow by one factor (a module that needs them equal); a
        fixed-size stretch among them fixes them all."""
        gids = {s.gid for ss in segs for s in ss if s.gid is not None}
        if any(s.gid is None for ss in segs for s in ss):
            for gid in gids:
                self._state.groups.pin(
                    gid,
                    f"module '{self.name}' needs group '{{group}}' to grow by the same factor as "
                    "a fixed-size input (the model input, for example), so '{group}' keeps its "
                    "width; put a Linear before the module if it must grow",
                )
        elif len(gids) > 1:
            self._state.links.append((gids, self._node))

    def tuple_output(self, layouts: Sequence[Layout]) -> None:
        """The module returns a tuple; ``layouts`` are its items' layouts (taken by getitem)."""
        self._state.parts[self._node] = list(layouts)

    def block(self, reason: str) -> Layout:
        """The module cannot be widened through: every group of its input stays at its width.
        ``reason`` may use ``{group}``; it becomes the message of the refusal."""
        self._state.pin_layout(self._layout, reason)
        return {}


class OpContext:
    """What an op rule sees of one call_function / call_method node."""

    def __init__(self, state: TraceState, node: fx.Node, label: str) -> None:
        self.state = state
        self.node = node
        self.label = label  # e.g. "torch.cat" or "Tensor.view", for messages
        self.out_shape = state.shapes.get(node)

    def where(self) -> str:
        return f"op '{self.label}' (node '{self.node.name}')"

    def scope(self) -> str:
        """The module whose forward holds this op (innermost; "" for the model itself)."""
        stack = self.node.meta.get("nn_module_stack") or {}
        paths = [str(v[0]) if isinstance(v, tuple) else str(k) for k, v in stack.items()]
        return paths[-1] if paths else ""

    def adopt(self, value: Any, d: int, segs: Segs) -> bool:
        """Dim ``d`` of ``value`` is an axis of a parameter used as-is (a RMSNorm's ``weight``
        written out, a CLS token, learned positions) that meets ``segs`` elementwise: the
        parameter joins their groups as per-channel parameters of the module that owns it.
        False when ``value`` is not such a parameter."""
        origin = self.state.origins.get(value) if isinstance(value, fx.Node) else None
        if origin is None or d not in origin[1] or not has_groups(segs):
            return False
        qualified, axes = origin
        owner, _, local = qualified.rpartition(".")
        role = self.state.role(owner)
        if role.out_kind == "produce" or (local in role.free and role.free[local] != axes[d]):
            return False
        role.free[local] = axes[d]
        self.state.adopted.add((value, self.node))
        role.out = segs if role.out is None else self.state.unify(role.out, segs, self.where())
        role.out_kind = "channelwise"
        for s in segs:
            if s.gid is not None and owner not in self.state.groups.get(s.gid).channelwise:
                self.state.groups.get(s.gid).channelwise.append(owner)
        return True

    def arg(self, index: int, name: str, default: Any = None) -> Any:
        if len(self.node.args) > index:
            return self.node.args[index]
        return self.node.kwargs.get(name, default)

    def layout_of(self, value: Any) -> Layout:
        return self.state.layouts.get(value, {}) if isinstance(value, fx.Node) else {}

    def shape_of(self, value: Any) -> tuple[int, ...] | None:
        return self.state.shapes.get(value) if isinstance(value, fx.Node) else None

    def tensor_inputs(self) -> list[fx.Node]:
        nodes: list[fx.Node] = []

        def visit(a: Any) -> None:
            if isinstance(a, fx.Node):
                if self.state.shapes.get(a) is not None:
                    nodes.append(a)
            elif isinstance(a, (list, tuple)):
                for x in a:
                    visit(x)
            elif isinstance(a, dict):
                for x in a.values():
                    visit(x)

        visit(self.node.args)
        visit(self.node.kwargs)
        return nodes

    def block(self, reason: str | None = None) -> Layout:
        msg = reason or (
            f"{self.where()} in group '{{group}}' is not supported by net2net; keep it out of "
            "the group, or wrap the code that uses it in a module and register a handler for "
            "that module with net2net.register_handler"
        )
        for n in self.tensor_inputs():
            self.state.pin_layout(self.layout_of(n), msg)
        return {}

    def broadcast(self, inputs: Sequence[Any], dims: Sequence[int] | None = None) -> Layout:
        """Elementwise combination with broadcasting: channels that meet are coupled. ``dims``:
        only these output dims meet elementwise (the batch dims of a matmul or an attention)."""
        out_shape = self.out_shape
        if out_shape is None:
            return self.block()
        rank = len(out_shape)
        result: Layout = {}
        for d in range(rank) if dims is None else dims:
            met: list[Segs] = []
            params: list[tuple[Any, int]] = []
            for a in inputs:
                shape = self.shape_of(a)
                if shape is None:
                    continue
                ad = d - (rank - len(shape))
                if ad < 0:
                    continue
                lay = self.layout_of(a)
                if shape[ad] == 1 and out_shape[d] != 1:
                    if ad in lay:
                        self.state.pin_layout(
                            {ad: lay[ad]},
                            f"group '{{group}}' is broadcast at {self.where()}, so its width "
                            "must stay 1",
                        )
                    continue
                if ad not in lay and a in self.state.origins:
                    params.append((a, ad))
                    continue
                met.append(lay.get(ad) or fixed(shape[ad]))
            merged = self.meet(met, params)
            if merged is not None:
                result[d] = merged
        return result

    def meet(self, met: Sequence[Segs], params: Sequence[tuple[Any, int]]) -> Segs | None:
        """Layouts that meet along one dim, merged; parameters used as-is (``params``: tensor and
        its dim) join the merged groups, or meet them as fixed sizes if they cannot."""
        met = list(met)
        if not any(has_groups(s) for s in met):
            return None
        merged = met[0]
        for other in met[1:]:
            merged = self.state.unify(merged, other, self.where())
        for value, d in params:
            if not self.adopt(value, d, merged):
                shape = self.shape_of(value)
                assert shape is not None
                merged = self.state.unify(merged, fixed(shape[d]), self.where())
        return merged
