"""Head-size growth: every head of one attention group grows from hs to hs' channels.

The heads of q and k gain hs' − hs dims each; the new q rows are zero, so q·kᵀ is unchanged over
the old dims. Where the attention's scale follows the head size (SDPA without ``scale=``, or a
written-out attention whose scale the forward computes from the head size), the scale becomes
1/sqrt(hs') and the old q rows (weights and bias) are multiplied by sqrt(hs'/hs) to keep every
logit. The heads of v gain new dims with random rows whose output-projection columns are zero.
The module attribute that holds hs (``self.head_dim``) is rewritten in the grown model.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn
from torch.nn import functional as F  # noqa: N812

from ._errors import GrowthError
from ._graph import Analysis, GroupInfo, analyse, as_inputs
from ._handlers import ParamAxes
from ._mapping import AxisMap, generator
from ._shapes import SizeLiteral, _probe_trace, _shape_args, attribute_of, scopes, set_attributes
from ._types import ParamPlan

OP = "widen"


@dataclass
class HeadAttention:
    """One attention op of a head group: its q, k, v projections, whether its scale follows the
    head size, and the view that gives the head size."""

    node: fx.Node
    q: str
    k: str
    v: str
    rescale: bool
    view: fx.Node | None


@dataclass
class HeadPlan:
    """How one head group's head size grows."""

    group: str
    old: int
    new: int
    attentions: list[HeadAttention]
    out: str
    attribute: tuple[str, str] | None


def _producer_of(node: fx.Node, producers: set[str]) -> tuple[str | None, fx.Node | None]:
    """The producer module that a tensor comes from (walking back through views, transposes,
    elementwise ops) and the view/reshape nearest to it on that path."""
    stack, seen = [node], set()
    view: fx.Node | None = None
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op == "call_module" and str(n.target) in producers:
            return str(n.target), view
        if n.op in ("call_method", "call_function") and str(
            getattr(n.target, "__name__", n.target)
        ) in ("view", "reshape"):
            view = n
        if n.op == "call_module" or (n.op == "call_method" and n.target == "size"):
            continue  # another module's output, or a size: not the tensor's path
        stack += [a for a in n.all_input_nodes if a.op != "get_attr"]
    return None, view


def _attention_nodes(gm: fx.GraphModule) -> Iterator[tuple[fx.Node, Any, Any, Any, bool]]:
    """(node, q, k, v, scale follows the head size) for SDPA and for written-out attention
    (``softmax(q @ kᵀ · s) @ v``)."""
    for n in gm.graph.nodes:
        if n.op == "call_function" and n.target is F.scaled_dot_product_attention:
            explicit = n.kwargs.get("scale", n.args[6] if len(n.args) > 6 else None)
            yield n, n.args[0], n.args[1], n.args[2], explicit is None
        elif _is_matmul(n) and _after_softmax(n.args[0]):
            scores = _scores(n.args[0])
            if scores is not None:
                yield n, scores.args[0], scores.args[1], n.args[1], True


def _is_matmul(n: fx.Node) -> bool:
    name = str(getattr(n.target, "__name__", n.target))
    return n.op in ("call_function", "call_method") and name in ("matmul", "bmm")


def _after_softmax(value: Any) -> bool:
    return isinstance(value, fx.Node) and "softmax" in str(
        getattr(value.target, "__name__", value.target)
    )


def _scores(node: fx.Node) -> fx.Node | None:
    """The q @ kᵀ matmul that a softmax's input comes from: the nearest one, not reaching through
    module calls or sizes."""
    queue = deque(node.all_input_nodes)
    while queue:
        n = queue.popleft()
        if _is_matmul(n):
            return n
        if n.op != "call_module" and not (n.op == "call_method" and n.target == "size"):
            queue += n.all_input_nodes
    return None


def _refuse(name: str, why: str) -> GrowthError:
    return GrowthError(f"{OP}: cannot grow the head size of group {name!r}: {why}")


def _check_group(an: Analysis, name: str) -> GroupInfo:
    g = an.by_name().get(name)
    if g is None:
        raise GrowthError(
            f"{OP}: head_size names no width group {name!r}; see net2net.width_groups"
        )
    modules = dict(an.model.named_modules())
    for p in g.producers + g.consumers:
        if isinstance(modules.get(p), nn.MultiheadAttention):
            raise _refuse(
                name,
                f"nn.MultiheadAttention '{p}' computes its head_dim as embed_dim // num_heads; "
                "grow the number of heads instead",
            )
    if g.grows_with:
        raise _refuse(
            name,
            "the forward computes the head size from the stream width (C // n_head), so it "
            "cannot grow without changing the stream; grow the number of heads instead, or "
            "give the attention its own head-size attribute (self.head_dim)",
        )
    return g


def _attentions(an: Analysis, g: GroupInfo) -> list[HeadAttention]:
    producers = set(g.producers)
    found = []
    for node, q, k, v, rescale in _attention_nodes(an.gm):
        parts = [
            _producer_of(t, producers) if isinstance(t, fx.Node) else (None, None)
            for t in (q, k, v)
        ]
        names = [p for p, _ in parts]
        if not any(names):
            continue
        if None in names or len(set(names)) < 3:
            raise _refuse(
                g.name,
                "its q, k and v do not come from three separate projections (a fused projection "
                "splits one width by head count and size); write q_proj, k_proj and v_proj",
            )
        found.append(
            HeadAttention(node, str(names[0]), str(names[1]), str(names[2]), rescale, parts[0][1])
        )
    if not found:
        raise _refuse(
            g.name,
            "no attention op (scaled_dot_product_attention or softmax(q @ kᵀ) @ v) reads its heads",
        )
    return found


def _head_size(an: Analysis, g: GroupInfo, att: HeadAttention) -> int:
    shape = an.state.shapes.get(att.node.args[0]) if isinstance(att.node.args[0], fx.Node) else None
    if att.node.target is F.scaled_dot_product_attention and shape:
        return int(shape[-1])
    weight = an.model.get_submodule(att.q).get_parameter("weight")
    heads = an.state.shapes.get(att.view) if att.view is not None else None
    if heads is None or len(heads) < 2:
        raise _refuse(g.name, "the head size cannot be read from a view into heads")
    return int(heads[-1]) if int(weight.shape[0]) % int(heads[-1]) == 0 else 0


def _check_rope(an: Analysis, g: GroupInfo, scope: str, hs: int) -> None:
    """Rotary embeddings: a buffer of the attention module spanning the head dim."""
    for n in an.gm.graph.nodes:
        if n.op != "get_attr" or not str(n.target).startswith(f"{scope}." if scope else ""):
            continue
        value = an.state.shapes.get(n)
        if (
            value
            and len(value) >= 2
            and value[-1] == hs
            and str(n.target) not in dict(an.model.named_parameters())
        ):
            raise _refuse(
                g.name,
                f"rotary embeddings (buffer '{n.target}') are computed for head size {hs}; grow "
                "the number of heads instead",
            )


def _attribute(an: Analysis, g: GroupInfo, view: fx.Node | None, hs: int) -> tuple[str, str] | None:
    """The module attribute that the view into heads reads as the head size; None when the
    forward computes it (``-1`` or a size of a tensor)."""
    if view is None:
        return None
    sizes = _shape_args(view)
    last = sizes[-1] if sizes else None
    if not isinstance(last, int) or last == -1:
        return None
    found = attribute_of(an.model, SizeLiteral(view, hs, (), len(sizes) - 1), an.state.probes)
    if isinstance(found, str) or found[2] != 1:
        why = (
            found.replace("{group}", g.name)
            if isinstance(found, str)
            else (f"the head size is {found[2]} × {found[1]}, not an attribute of its own")
        )
        raise _refuse(g.name, f"{why}; give the attention a head-size attribute (self.head_dim)")
    if not _reads(an, view, found[0], found[1]):
        raise _refuse(
            g.name,
            f"{SizeLiteral(view, hs, ()).where()} hard-codes the head size {hs} as a literal, "
            "which net2net cannot rewrite; read it from an attribute of the module "
            "(self.head_dim)",
        )
    return found[0], found[1]


def _reads(an: Analysis, view: fx.Node, path: str, attr: str) -> bool:
    """Whether the view's head size changes in a trace with ``path.attr`` changed (a literal
    that only happens to equal the attribute does not)."""
    nodes = _probe_trace(an.model, an.model.get_submodule(path), attr, an.state.probes)
    base = list(view.graph.nodes)
    at = base.index(view)
    if nodes is None or len(nodes) <= at or nodes[at].target != view.target:
        return True  # the forward took another path: the attribute is read before the view
    return _shape_args(nodes[at])[-1:] != _shape_args(view)[-1:]


def plan_head_size(an: Analysis, name: str, new: int) -> HeadPlan:
    g = _check_group(an, name)
    atts = _attentions(an, g)
    hs = _head_size(an, g, atts[0])
    if hs <= 0:
        raise _refuse(name, "its head size cannot be told from the graph")
    if new < hs:
        raise _refuse(name, f"the new head size {new} is smaller than {hs}; net2net only grows")
    scope = scopes(atts[0].node)[0]
    _check_rope(an, g, scope, hs)
    if len(g.consumers) != 1 or not isinstance(an.model.get_submodule(g.consumers[0]), nn.Linear):
        raise _refuse(name, "its heads are not read by one nn.Linear output projection")
    for p in g.producers:
        if not isinstance(an.model.get_submodule(p), nn.Linear):
            raise _refuse(name, f"its producer '{p}' is not an nn.Linear")
    attr = _attribute(an, g, atts[0].view, hs)
    return HeadPlan(name, hs, new, atts, g.consumers[0], attr)


def _std(w: torch.Tensor) -> float:
    return float(w.std()) if w.numel() > 1 else 1.0


def _pad_rows(
    lin: nn.Linear, hs: int, new: int, *, fill: str, scale: float, gen: torch.Generator
) -> None:
    """Rows (H·hs, in) → (H·hs', in): each head's old rows times ``scale``, then hs' − hs new
    rows, zero (``fill="zero"``) or N(0, std(W)²) (``fill="random"``); new bias entries zero."""
    w = lin.weight.detach()
    heads = w.shape[0] // hs
    extra = torch.zeros(heads, new - hs, w.shape[1], dtype=w.dtype)
    if fill == "random":
        extra = torch.randn(extra.shape, generator=gen, dtype=w.dtype) * _std(w)
    grown = torch.cat([w.view(heads, hs, -1) * scale, extra.to(w.device)], dim=1)
    lin.weight = nn.Parameter(
        grown.reshape(heads * new, -1), requires_grad=lin.weight.requires_grad
    )
    if lin.bias is not None:
        b = lin.bias.detach().view(heads, hs) * scale
        pad = torch.zeros(heads, new - hs, dtype=b.dtype, device=b.device)
        lin.bias = nn.Parameter(
            torch.cat([b, pad], 1).reshape(-1), requires_grad=lin.bias.requires_grad
        )
    lin.out_features = heads * new


def _pad_cols(lin: nn.Linear, hs: int, new: int) -> None:
    """Columns (out, H·hs) → (out, H·hs'): the new columns of every head are zero."""
    w = lin.weight.detach()
    heads = w.shape[1] // hs
    pad = torch.zeros(w.shape[0], heads, new - hs, dtype=w.dtype, device=w.device)
    grown = torch.cat([w.view(w.shape[0], heads, hs), pad], dim=2).reshape(w.shape[0], -1)
    lin.weight = nn.Parameter(grown, requires_grad=lin.weight.requires_grad)
    lin.in_features = heads * new


def _state_plan(name: str, axis: int, units: int, old: int, new: int) -> ParamPlan:
    """How optimizer state follows along ``axis`` (``units`` heads of ``old`` → ``new``): each old
    position keeps its state, a new dim starts at zero (share 0)."""
    head, dim = torch.arange(units).repeat_interleave(new), torch.arange(new).repeat(units)
    fresh = dim >= old
    index = torch.where(fresh, torch.zeros_like(dim), head * old + dim)
    amap = AxisMap(
        index=index,
        share=(~fresh).to(torch.float64),
        fresh=fresh,
        random_rows=fresh,
        random_cols=torch.zeros_like(fresh),
        old=units * old,
        new=units * new,
    )
    return ParamPlan(old_name=name, axes=ParamAxes(out=axis), out=amap)


def state_plans(student: nn.Module, plan: HeadPlan) -> dict[str, ParamPlan]:
    """Optimizer-state plans of the parameters that grew along the head size."""
    plans: dict[str, ParamPlan] = {}
    for name in (
        {a.q for a in plan.attentions}
        | {a.k for a in plan.attentions}
        | {a.v for a in plan.attentions}
    ):
        for p, t in student.get_submodule(name).named_parameters():
            plans[f"{name}.{p}"] = _state_plan(
                f"{name}.{p}", 0, t.shape[0] // plan.new, plan.old, plan.new
            )
    w = student.get_submodule(plan.out).get_parameter("weight")
    plans[f"{plan.out}.weight"] = _state_plan(
        f"{plan.out}.weight", 1, w.shape[1] // plan.new, plan.old, plan.new
    )
    return plans


def apply_head_size(student: nn.Module, plan: HeadPlan, seed: int) -> list[str]:
    """Grow the plan's projections in ``student``; the names of the grown parameters."""
    old, new = plan.old, plan.new
    rescale = {a.q: math.sqrt(new / old) if a.rescale else 1.0 for a in plan.attentions}
    fills = {a.q: "zero" for a in plan.attentions}
    fills |= {a.k: "random" for a in plan.attentions} | {a.v: "random" for a in plan.attentions}
    grown = []
    for name, fill in fills.items():
        lin = student.get_submodule(name)
        assert isinstance(lin, nn.Linear)
        gen = generator(seed, "head_size", plan.group, name)
        _pad_rows(lin, old, new, fill=fill, scale=rescale.get(name, 1.0), gen=gen)
        grown += [f"{name}.{p}" for p, _ in lin.named_parameters()]
    out = student.get_submodule(plan.out)
    assert isinstance(out, nn.Linear)
    _pad_cols(out, old, new)
    if plan.attribute is not None:
        set_attributes(student, {plan.attribute: (old, new)})
    return [*grown, f"{plan.out}.weight"]


def head_size_record(plans: list[HeadPlan]) -> dict[str, Any]:
    return {
        "head_size": {p.group: [p.old, p.new] for p in plans},
        "attributes": {
            ".".join(x for x in p.attribute if x): [p.old, p.new]
            for p in plans
            if p.attribute is not None
        },
    }


def plan_all(
    model: nn.Module, example_input: Any, sizes: Mapping[str, int]
) -> tuple[Analysis, list[HeadPlan]]:
    an = analyse(model, as_inputs(example_input), OP)
    return an, [plan_head_size(an, name, int(new)) for name, new in sizes.items()]


def check_head_size_error(teacher: Any, err: float) -> None:
    """Refuse a grown model whose output moved: its attention scale was neither 1/sqrt(head size)
    computed by the forward nor a constant passed to SDPA as ``scale=``."""
    outs = list(teacher) if isinstance(teacher, (tuple, list)) else [teacher]
    size = max((float(t.abs().max()) for t in outs if isinstance(t, torch.Tensor)), default=1.0)
    if err > 1e-4 * max(size, 1.0):
        raise GrowthError(
            f"{OP}: growing the head size changed the output by {err:.3g}; its attention scale "
            "must be 1/sqrt(head size) computed by the forward (SDPA's default, q.size(-1) ** -0.5) "
            "or a constant passed to scaled_dot_product_attention as scale="
        )
