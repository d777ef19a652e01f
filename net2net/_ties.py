"""Tied parameters: one tensor used by two modules (a language model's token embedding and its
output head).

A width group's mapping wants a producer's units copied (U[:, j] = W[:, g(j)]) and a consumer's
input columns copied *and split* (V'[:, j] = V[:, g(j)] · s(j)). A tensor that is both, such as
``lm_head.weight is wte.weight``, cannot be both, so it is grown once as the producer wants, with
plain copies, and the missing split moves to the input of the consumer: the per-channel norm just
before it (``ln_f``) has its weight and bias multiplied by s(j). Then the head computes
Σ_j s(j)·n'_j·W[v, g(j)] = Σ_i n_i·W[v, i] (Σ over the copies of i of s(j) is 1), the same
logits, and the parameter stays one tensor. Every other kind of sharing keeps its groups' widths.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import fx, nn

from ._handlers import handler_for
from ._layout import Seg, Segs, canonical
from ._trace import TraceState


@dataclass(frozen=True)
class Tie:
    """``consumer.consumer_param`` is ``producer.producer_param``; ``norm`` scales the split."""

    producer: str
    producer_param: str
    consumer: str
    consumer_param: str
    norm: str

    def record(self) -> dict[str, object]:
        return {
            "params": [
                f"{self.producer}.{self.producer_param}",
                f"{self.consumer}.{self.consumer_param}",
            ],
            "kept": True,
            "split_scaled_in": self.norm,
        }


Owner = tuple[str, str]  # (module name, local parameter name)


def _owners(model: nn.Module) -> list[list[Owner]]:
    owners: dict[int, list[Owner]] = {}
    for mname, module in model.named_modules(remove_duplicate=False):
        for pname, p in module.named_parameters(recurse=False):
            lst = owners.setdefault(id(p), [])
            if all(m != mname for m, _ in lst):
                lst.append((mname, pname))
    return [lst for lst in owners.values() if len(lst) > 1]


def _same(state: TraceState, a: Segs | None, b: Segs | None) -> bool:
    if a is None or b is None:
        return False

    def key(s: Seg) -> tuple[int | None, int, int]:
        return (None if s.gid is None else state.groups.find(s.gid), s.units, s.block)

    return [key(s) for s in canonical(a)] == [key(s) for s in canonical(b)]


def _call_node(gm: fx.GraphModule, name: str) -> fx.Node | None:
    calls = [n for n in gm.graph.nodes if n.op == "call_module" and n.target == name]
    return calls[0] if len(calls) == 1 else None


def _norm_before(gm: fx.GraphModule, state: TraceState, consumer: str) -> str | None:
    """The per-channel module whose output feeds ``consumer`` alone, with an out-axis weight."""
    node = _call_node(gm, consumer)
    src = node.args[0] if node is not None and node.args else None
    if not isinstance(src, fx.Node) or src.op != "call_module" or len(src.users) != 1:
        return None
    name = str(src.target)
    module = gm.get_submodule(name)
    handler = handler_for(module)
    role = state.roles.get(name)
    if handler is None or role is None or role.out_kind != "channelwise" or role.calls != 1:
        return None
    axes = handler.param_axes(module).get("weight")
    if axes is None or axes.out != 0 or module._parameters.get("weight") is None:
        return None
    return name if _same(state, role.out, state.roles[consumer].in_) else None


def _tie(gm: fx.GraphModule, state: TraceState, a: Owner, b: Owner) -> Tie | str | None:
    """A as the producer and B as the consumer of one group along the same tensor axis: a Tie, or
    why it cannot be kept exactly; None when the pair is not of that kind."""
    (ma, pa), (mb, pb) = a, b
    mod_a, mod_b = gm.get_submodule(ma), gm.get_submodule(mb)
    ha, hb = handler_for(mod_a), handler_for(mod_b)
    ra, rb = state.roles.get(ma), state.roles.get(mb)
    if ha is None or hb is None or ra is None or rb is None:
        return None
    xa, xb = ha.param_axes(mod_a).get(pa), hb.param_axes(mod_b).get(pb)
    if xa is None or xb is None or xa.in_ is not None or xa.out is None or xb.in_ != xa.out:
        return None
    if ra.out_kind != "produce" or not _same(state, ra.out, rb.in_) or ra.calls != 1:
        return None
    if rb.calls != 1:
        return None
    norm = _norm_before(gm, state, mb)
    if norm is None:
        return (
            f"parameter '{mb}.{pb}' is tied to '{ma}.{pa}', so growing group '{{group}}' would "
            f"need its copies split in '{mb}' but not in '{ma}'; net2net keeps such a tie exact "
            f"by scaling a per-channel norm with weights (a LayerNorm) that feeds '{mb}' alone, "
            "and there is none; untie the weights or add such a norm"
        )
    return Tie(ma, pa, mb, pb, norm)


def resolve_ties(model: nn.Module, gm: fx.GraphModule, state: TraceState) -> list[Tie]:
    """The ties that growth keeps exactly; the groups of every other shared parameter are pinned
    (they keep their width)."""
    ties: list[Tie] = []
    for owners in _owners(model):
        found = None
        if len(owners) == 2:
            found = _tie(gm, state, owners[0], owners[1]) or _tie(gm, state, owners[1], owners[0])
        if isinstance(found, Tie):
            ties.append(found)
            rb = state.roles[found.consumer]
            if rb.out is not None:  # the tensor's other axis belongs to the producer: fixed
                state.pin_layout(
                    {0: rb.out},
                    f"the weight of '{found.consumer}' is tied to '{found.producer}', whose "
                    "other axis does not grow; group '{group}' keeps its width",
                )
            continue
        _pin(state, owners, found)
    return ties


def _pin(state: TraceState, owners: list[Owner], reason: str | None) -> None:
    names = [m for m, _ in owners]
    for n in names:
        role = state.roles.get(n)
        if role is None:
            continue
        for segs in (role.out, role.in_):
            if segs is None:
                continue
            state.pin_layout(
                {0: segs},
                reason
                or (
                    f"a parameter of '{n}' is shared with "
                    f"{', '.join(repr(x) for x in names if x != n)}; group '{{group}}' cannot "
                    "grow while it is tied"
                ),
            )
