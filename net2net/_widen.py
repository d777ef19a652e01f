"""Net2WiderNet over a traced graph: every width group grows with one mapping."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ._errors import GrowthError
from ._graph import Analysis, GroupInfo, analyse, as_inputs, eval_mode, max_abs_error
from ._handlers import ParamAxes, axes_of, handler_for
from ._head_size import (
    apply_head_size,
    check_head_size_error,
    head_size_record,
    plan_all,
    state_plans,
)
from ._layout import Segs
from ._mapping import AxisMap, GroupMap, axis_map, generator, grow_tensor, make_group_map
from ._modes import DEFAULT_INIT, INIT_MODES, InitMode
from ._shapes import attribute_updates, set_attributes
from ._trace import ModuleRoles
from ._types import Grown, ParamPlan, WidthGroup

SPLITS = ("equal", "random")
RECORD_FORMAT = 1


# -- groups as data ------------------------------------------------------------------------------


def group_view(g: GroupInfo) -> WidthGroup:
    return WidthGroup(
        name=g.name,
        width=g.width,
        producers=tuple(g.producers),
        consumers=tuple(g.consumers),
        norms=tuple(g.channelwise),
        multiple_of=g.blocks,
        integer_factor_norms=tuple(g.balanced_by),
        grows_with=tuple(g.grows_with),
    )


def group_spec(g: GroupInfo) -> dict[str, Any]:
    """A group as plain data (the ``groups`` entries of :func:`net2net.summarize`)."""
    return {
        "name": g.name,
        "width": g.width,
        "producers": list(g.producers),
        "consumers": list(g.consumers),
        "norms": list(g.channelwise),
        "multiple_of": g.blocks,
        "multiple_of_because": list(g.grouped_by),
        "integer_factor": bool(g.balanced_by),
        "integer_factor_because": list(g.balanced_by),
        "elements_per_unit": g.elements_per_unit,
        "grows_with": list(g.grows_with),
    }


def blocked_spec(g: GroupInfo) -> dict[str, Any]:
    return {"name": g.name, "width": g.width, "reason": "; ".join(g.reasons)}


def width_groups(model: nn.Module, example_input: Any) -> list[WidthGroup]:
    """The width groups of ``model`` that can grow, in graph order.

    Each group couples the output units of its producers (Linear, Conv, Embedding), the input
    units of its consumers and the per-channel parameters of its norms: they share one mapping g.
    Residual adds and elementwise products merge groups; concatenations place groups side by side
    (with offsets); flattening a conv map gives each channel a block of H·W inputs. Groups that
    reach the model output, meet a fixed-size tensor, or pass through an op or module net2net
    cannot remap are left out (``widen`` names the reason if asked to grow one).
    """
    an = analyse(model, example_input, "width_groups")
    return [group_view(g) for g in an.groups.values() if g.growable]


def resolve_widths(
    groups: Sequence[Mapping[str, Any]],
    blocked: Sequence[Mapping[str, Any]],
    factor: float | None,
    widths: Mapping[str, int] | None,
    op: str = "widen",
) -> dict[str, int]:
    """New width per group that changes (pure data: shared by widen and predict_param_count).

    ``factor``: every growable group becomes ``ceil(width·factor)``, rounded up to a multiple of
    its ``multiple_of``. ``widths``: exactly the listed groups, each checked.
    """
    if (factor is None) == (widths is None):
        raise GrowthError(f"{op}: give exactly one of factor= or widths=")
    if factor is not None:
        out = _widths_for_factor(groups, blocked, factor, op)
    else:
        assert widths is not None
        out = _checked_widths(groups, blocked, widths, op)
    _check_links(groups, out, op)
    return out


def _check_links(groups: Sequence[Mapping[str, Any]], targets: Mapping[str, int], op: str) -> None:
    """Groups linked by a computed size grow by one factor (new · old' = new' · old)."""
    by_name = {str(g["name"]): g for g in groups}
    changed = sorted(groups, key=lambda g: str(g["name"]) not in targets)  # name a growing one
    for g in changed:
        name, width = str(g["name"]), int(g["width"])
        new = targets.get(name, width)
        for other in g.get("grows_with") or []:
            w2 = int(by_name[other]["width"]) if other in by_name else 0
            if w2 and targets.get(other, w2) * width == new * w2:
                continue
            example = {n: int(by_name[n]["width"]) * 2 for n in [name, *g["grows_with"]]}
            raise GrowthError(
                f"{op}: group {name!r} ({width} → {new}) must grow by the same factor as "
                f"{other!r}, because the forward sizes them together (chunk or split into equal "
                "parts, or a size computed from the other's width, such as C // self.n_head with "
                f"C the stream's width); grow them together, e.g. widths={example}; a head size "
                "computed from the attention's own attributes (self.n_embd // self.n_head) lets "
                "the stream and the heads grow apart"
            )


def _widths_for_factor(
    groups: Sequence[Mapping[str, Any]],
    blocked: Sequence[Mapping[str, Any]],
    factor: float,
    op: str,
) -> dict[str, int]:
    """Every growable group ×factor, rounded up (to its ``multiple_of``); the groups that change."""
    if isinstance(factor, bool) or not isinstance(factor, (int, float)):
        raise GrowthError(f"{op}: factor must be a number >= 1, got {factor!r}")
    if not math.isfinite(factor) or factor < 1:
        raise GrowthError(
            f"{op}: factor must be a finite number >= 1 (net2net only grows), got {factor!r}"
        )
    if not groups:
        raise GrowthError(
            f"{op}: the model has no width group that can grow"
            + (f" ({_blocked_summary(blocked)})" if blocked else "")
        )
    out: dict[str, int] = {}
    for g in groups:
        width = int(g["width"])
        new = math.ceil(width * factor - 1e-9)
        if g.get("integer_factor") and new % width:
            raise GrowthError(
                f"{op}: {_norm_phrase(g)} normalises over group '{g['name']}' (width {width}), "
                f"which stays exact only if every unit is replicated equally often; factor "
                f"{factor} gives width {new}: use an integer factor, or widths= with a "
                f"multiple of {width} for this group"
            )
        mult = int(g.get("multiple_of", 1))
        new = -(-new // mult) * mult
        if new != width:
            out[str(g["name"])] = new
    return out


def _checked_widths(
    groups: Sequence[Mapping[str, Any]],
    blocked: Sequence[Mapping[str, Any]],
    widths: Mapping[str, int],
    op: str,
) -> dict[str, int]:
    """Exactly the listed groups, each width checked; the groups that change."""
    if not isinstance(widths, Mapping):
        raise GrowthError(f"{op}: widths must be a dict of group name -> new width")
    by_name = {str(g["name"]): g for g in groups}
    blocked_by_name = {str(b["name"]): b for b in blocked}
    out: dict[str, int] = {}
    for name, new in widths.items():
        if name not in by_name:
            parts = [b for n, b in blocked_by_name.items() if n.startswith(f"{name}[")]
            if name in blocked_by_name or parts:
                reasons = [blocked_by_name[name]] if name in blocked_by_name else parts
                raise GrowthError(f"{op}: {'; '.join(str(b['reason']) for b in reasons)}")
            raise GrowthError(
                f"{op}: no width group named {name!r}; the groups that can grow are: "
                f"{', '.join(sorted(by_name)) or 'none'}"
            )
        _check_width(by_name[name], name, new, op)
        if new != int(by_name[name]["width"]):
            out[name] = new
    return out


def _check_width(g: Mapping[str, Any], name: str, new: int, op: str) -> None:
    """``new`` is a width group ``g`` can grow to: an int, no smaller, fitting its constraints."""
    width = int(g["width"])
    if isinstance(new, bool) or not isinstance(new, int):
        raise GrowthError(f"{op}: the width for group {name!r} must be an int, got {new!r}")
    if new < width:
        raise GrowthError(
            f"{op}: group {name!r} has width {width}; {new} would shrink it, and net2net only grows"
        )
    mult = int(g.get("multiple_of", 1))
    if new % mult:
        because = ", ".join(repr(x) for x in g.get("multiple_of_because", [])) or "a conv"
        raise GrowthError(
            f"{op}: grouped conv {because} splits group {name!r} into {mult} blocks; use a "
            f"width that is a multiple of {mult} (e.g. {-(-new // mult) * mult})"
        )
    if g.get("integer_factor") and new % width:
        raise GrowthError(
            f"{op}: {_norm_phrase(g)} normalises over group {name!r} (width {width}), which "
            f"stays exact only if every unit is replicated equally often; use a width that "
            f"is a multiple of {width} (e.g. {-(-new // width) * width}), not {new}"
        )


def _norm_phrase(g: Mapping[str, Any]) -> str:
    names = g.get("integer_factor_because") or []
    return ", ".join(f"norm {n!r}" for n in names) or "a norm"


def _blocked_summary(blocked: Sequence[Mapping[str, Any]]) -> str:
    return "; ".join(str(b["reason"]) for b in blocked[:3])


# -- widen -------------------------------------------------------------------------------------------


def check_init(init: str, noise: float, split: str) -> InitMode:
    if init not in INIT_MODES:
        raise GrowthError(
            f"widen: unknown init {init!r}; choose one of {', '.join(INIT_MODES)} (see "
            "net2net.init_modes())"
        )
    mode = INIT_MODES[init]
    if split not in SPLITS:
        raise GrowthError(f"widen: unknown split {split!r}; choose 'equal' or 'random'")
    if split != "equal" and mode.outgoing != "split":
        raise GrowthError(
            f"widen: split={split!r} applies to init='net2net' only (init={init!r} starts new "
            "outgoing weights at zero or random); leave split='equal'"
        )
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not noise >= 0:
        raise GrowthError(f"widen: noise must be a number >= 0, got {noise!r}")
    if noise > 0 and not mode.noise:
        raise GrowthError(
            f"widen: noise applies to copied units (init='net2net' or 'copy_zero'); init={init!r} "
            "draws new incoming weights at random, so leave noise=0"
        )
    return mode


def input_spec(inputs: tuple[torch.Tensor, ...]) -> list[dict[str, Any]]:
    return [{"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")} for t in inputs]


def set_tensor(module: nn.Module, name: str, value: torch.Tensor) -> None:
    if name in module._parameters:
        old = module._parameters[name]
        module._parameters[name] = nn.Parameter(
            value, requires_grad=old.requires_grad if old is not None else True
        )
    else:
        module._buffers[name] = value


def copy_model(model: nn.Module, op: str) -> nn.Module:
    try:
        student = copy.deepcopy(model)
    except Exception as err:
        raise GrowthError(
            f"{op}: cannot copy {type(model).__name__} ({type(err).__name__}: {err}); the input "
            "model is never modified, so it must support copy.deepcopy"
        ) from err
    for p in student.parameters():
        p.grad = None
    return student


def verify(op: str, teacher: Any, student: nn.Module, inputs: tuple[torch.Tensor, ...]) -> float:
    """max |f_student(x) − f_teacher(x)| in eval mode; ``teacher`` is the teacher's output on the
    same inputs (from the traced graph's run, so the teacher is not run twice)."""
    with eval_mode(student):
        try:
            out = student(*inputs)
        except Exception as err:
            raise GrowthError(
                f"{op}: the grown model's forward failed ({type(err).__name__}: {err}); its "
                "forward probably hard-codes a width (write x.flatten(1) or x.size(1) instead of "
                "literal sizes); if it does not, net2net followed an op wrongly: please report "
                "the model"
            ) from err
    return max_abs_error(teacher, out)


def widen(
    model: nn.Module,
    example_input: Any,
    *,
    factor: float | None = None,
    widths: dict[str, int] | None = None,
    init: str = DEFAULT_INIT,
    noise: float = 0.0,
    split: str = "equal",
    seed: int = 0,
) -> Grown:
    """Net2WiderNet over the whole traced graph (see ``docs/net2net.md`` for the math).

    Every growable width group listed in ``widths`` (by name), or every one with ``factor``
    (rounded up), grows from n to q units with one mapping g: new unit ``j > n`` has a random
    source ``g(j)`` (with replacement; equally often where a LayerNorm needs it).
    ``init="random_zero"`` (the default): the new units' incoming weights are random,
    N(0, std(W)²), and their outgoing weights zero, so the function is unchanged and the new units
    differ from the start (in a group a LayerNorm normalises they are copies of ``g(j)``, with
    zero outgoing weights; ``Grown.notes`` says so). Measured, they learn under Adam and AdamW
    where the paper's copies stay copies (docs/benchmarks.md, "net2net: init modes under Adam"
    and "net2net: do a GPT's new units learn? (init modes)").
    ``init="net2net"`` (the paper): producers' rows and per-channel parameters are copied and each
    consumer's input column for unit j becomes ``W[:, g(j)] · share(j)``, with ``share = 1/count``
    (``split="equal"``) or random positive shares summing to one per source (``split="random"``).
    ``noise`` adds ``noise · std(W)`` Gaussian noise to the copies' incoming weights. Other
    ``init`` modes are listed by :func:`net2net.init_modes`. ``seed`` makes it deterministic.
    The input model is left untouched; the grown model keeps its device and dtype.
    """
    return widen_impl(
        model,
        example_input,
        factor=factor,
        widths=widths,
        init=init,
        noise=noise,
        split=split,
        seed=seed,
        check=True,
    )


def widen_head_size(
    model: nn.Module, example_input: Any, head_size: Mapping[str, int], *, seed: int = 0
) -> Grown:
    """Grow the head size of the named head groups (names from :func:`net2net.width_groups`):
    every head of group ``name`` grows from hs to ``head_size[name]`` channels, the head count and
    the stream unchanged (:func:`widen` keeps hs fixed). New q dims are zero and the old q rows
    (and bias) are multiplied by sqrt(hs'/hs) where the scale is 1/sqrt(head size) (SDPA's
    default, or computed by the forward); a constant SDPA ``scale=`` is kept and q not rescaled.
    New v dims have random rows and zero output-projection columns, new k dims random rows. The
    head-size attribute the forward reads (``self.head_dim``) is rewritten. Refused by name:
    rotary embeddings, nn.MultiheadAttention, a head size computed from the stream width or
    written as a literal, a fused qkv projection (docs/net2net.md, "Head size")."""
    return widen_head_size_impl(model, example_input, head_size, seed=seed, check=True)


def widen_head_size_impl(
    model: nn.Module, example_input: Any, sizes: Mapping[str, int], *, seed: int, check: bool
) -> Grown:
    """Every head of each named group grows to the given head size (see :mod:`._head_size`)."""
    an, plans = plan_all(model, example_input, sizes)
    student = copy_model(model, "widen")
    grown = [n for plan in plans for n in apply_head_size(student, plan, seed)]
    state = {k: v for plan in plans for k, v in state_plans(student, plan).items()}
    inputs = as_inputs(example_input)
    err = verify("widen", an.output, student, inputs) if check else float("nan")
    check_head_size_error(an.output, err)
    record: dict[str, Any] = {
        "op": "widen",
        "format": RECORD_FORMAT,
        "input": input_spec(inputs),
        "widths": {},
        "init": "random_zero",
        "noise": 0.0,
        "split": "equal",
        "seed": int(seed),
    }
    record.update(head_size_record(plans))
    names = [n for n, _ in student.named_parameters()]
    return Grown(
        model=student,
        record=record,
        max_abs_error=err,
        exact=True,
        param_sources={n: n for n in names},
        notes=[f"grew parameters {', '.join(grown)} along the head size"],
        plans=state,
    )


def widen_impl(
    model: nn.Module,
    example_input: Any,
    *,
    factor: float | None,
    widths: dict[str, int] | None,
    init: str,
    noise: float,
    split: str,
    seed: int,
    check: bool,
    expect: Mapping[str, int] | None = None,
) -> Grown:
    mode = check_init(init, noise, split)
    inputs = as_inputs(example_input)
    an = analyse(model, inputs, "widen")
    _check_expected_widths(an, expect or {})
    growable = [g for g in an.groups.values() if g.growable]
    blocked = [blocked_spec(g) for g in an.groups.values() if not g.growable]
    targets = resolve_widths([group_spec(g) for g in growable], blocked, factor, widths)
    notes = _blocked_notes(blocked) if factor is not None else []
    maps, inexact_noise = _group_maps(
        [g for g in growable if g.name in targets],
        targets,
        mode,
        noise=noise,
        split=split,
        seed=seed,
        notes=notes,
    )
    student, plans, updates = _grow_student(
        an, model, maps, noise=noise if mode.incoming == "copy" else 0.0, seed=seed
    )
    err = verify("widen", an.output, student, inputs) if check else float("nan")
    record = _widen_record(
        inputs, maps, factor=factor, init=init, noise=noise, split=split, seed=seed
    )
    record.update(updates)
    names = [n for n, _ in student.named_parameters()]
    return Grown(
        model=student,
        record=record,
        max_abs_error=err,
        exact=_exact(mode, bool(maps), noise=noise, inexact_noise=inexact_noise),
        widths={m.name: (m.old, m.new) for m in maps.values()},
        mappings={m.name: m.src.clone() for m in maps.values()},
        shares={m.name: m.share.clone() for m in maps.values()},
        new_param_names=[],
        param_sources={n: n for n in names},
        notes=notes,
        plans=plans,
    )


def _blocked_notes(blocked: Sequence[Mapping[str, Any]]) -> list[str]:
    return [
        f"kept its width: {b['reason']}"
        for b in blocked
        if "is an output of the model" not in str(b["reason"])
    ]


def _grow_student(
    an: Analysis, model: nn.Module, maps: dict[int, GroupMap], *, noise: float, seed: int
) -> tuple[nn.Module, dict[str, ParamPlan], dict[str, Any]]:
    """A copy of the model with every mapped tensor grown and every size attribute that its
    forward reads (head counts, attention widths) rewritten; and what the record adds: the
    rewritten attributes ("module.attr" → [old, new]) and the ties kept."""
    updates = attribute_updates(model, an.gm, an.state, lambda segs: _new_size(an, maps, segs))
    student = copy_model(model, "widen")
    set_attributes(student, updates)
    plans = apply_maps(an, student, maps, noise=noise, seed=seed)
    extra: dict[str, Any] = {}
    if updates:
        extra["attributes"] = {f"{p}.{a}" if p else a: [o, n] for (p, a), (o, n) in updates.items()}
    grown_ties = [t.record() for t in an.ties if f"{t.consumer}.{t.consumer_param}" in plans]
    if grown_ties:
        extra["ties"] = grown_ties
    return student, plans, extra


def _new_size(an: Analysis, maps: Mapping[int, GroupMap], segs: Segs) -> int:
    """The size of a stretch of a dim after growth."""
    total = 0
    for s in segs:
        m = maps.get(an.find(s.gid)) if s.gid is not None else None
        total += (m.new if m is not None else s.units) * s.block
    return total


def _widen_record(
    inputs: tuple[torch.Tensor, ...],
    maps: Mapping[int, GroupMap],
    *,
    factor: float | None,
    init: str,
    noise: float,
    split: str,
    seed: int,
) -> dict[str, Any]:
    """The growth record: enough to replay the widen on the base model (``net2net.replay``)."""
    record: dict[str, Any] = {
        "op": "widen",
        "format": RECORD_FORMAT,
        "input": input_spec(inputs),
        "widths": {m.name: [m.old, m.new] for m in maps.values()},
        "init": init,
        "noise": float(noise),
        "split": split,
        "seed": int(seed),
    }
    if factor is not None:
        record["factor"] = float(factor)
    return record


def _check_expected_widths(an: Analysis, expect: Mapping[str, int]) -> None:
    """A replayed record starts from the widths it was made at."""
    current = {g.name: g.width for g in an.groups.values()}
    for name, old in expect.items():
        if current.get(name) != old:
            raise GrowthError(
                f"widen: the record expects group {name!r} at width {old}, but the model has "
                f"{current.get(name, 'no such group')}; replay the records in order on the base "
                "model they were made from"
            )


def _group_maps(
    growing: Sequence[GroupInfo],
    targets: Mapping[str, int],
    mode: InitMode,
    *,
    noise: float,
    split: str,
    seed: int,
    notes: list[str],
) -> tuple[dict[int, GroupMap], bool]:
    """One mapping per growing group (by group id), and whether noise makes one inexact (a group
    that a norm normalises). Appends a note for every group whose new units must be copies."""
    maps: dict[int, GroupMap] = {}
    inexact_noise = False
    for g in growing:
        incoming = mode.incoming
        if g.balanced_by and incoming == "random":
            incoming = "copy"
            notes.append(
                f"group {g.name!r}: new units are copies, not random, because "
                f"{', '.join(g.balanced_by)} normalise(s) over it"
            )
        if g.balanced_by and noise > 0:
            inexact_noise = True
        maps[g.gid] = make_group_map(
            g.name,
            g.width,
            targets[g.name],
            blocks=g.blocks,
            balanced=bool(g.balanced_by),
            incoming=incoming,
            outgoing=mode.outgoing,
            split=split,
            seed=seed,
        )
    return maps, inexact_noise


def _exact(mode: InitMode, grew: bool, *, noise: float, inexact_noise: bool) -> bool:
    """Whether the widened model computes the same function (by construction, not measured)."""
    if not grew:
        return True
    if mode.name == "net2net":
        return noise == 0
    if mode.name == "copy_zero":
        return not inexact_noise
    return mode.outgoing != "random"


def apply_maps(
    an: Analysis,
    student: nn.Module,
    maps: dict[int, GroupMap],
    *,
    noise: float,
    seed: int,
    scale: str = "matched",
) -> dict[str, ParamPlan]:
    """Grow every tensor that a mapped group touches, in the student (a copy of the model). A
    tied parameter grows once, as its producer wants, and the norm before its consumer takes the
    outgoing split (see ``_ties``)."""
    plans: dict[str, ParamPlan] = {}
    if not maps:
        return plans
    modules = dict(student.named_modules())
    tied = {(t.consumer, t.consumer_param) for t in an.ties}
    split_in = {t.norm for t in an.ties}
    for mname, role in an.roles.items():
        out_map = axis_map(role.out, maps, an.find) if role.out is not None else None
        in_map = axis_map(role.in_, maps, an.find) if role.in_ is not None else None
        if out_map is None and in_map is None:
            continue
        module = modules[mname]
        for pname, axes in axes_of(module, role.free).items():
            if (mname, pname) in tied:
                continue
            plan = _grow_param(
                module,
                f"{mname}.{pname}" if mname else pname,
                axes,
                out=out_map if axes.out is not None else None,
                in_=in_map if axes.in_ is not None else None,
                role=role,
                gen=generator(seed, "init", mname, pname),
                noise=noise,
                scale=scale,
                split_out=mname in split_in,
            )
            if plan is not None:
                plans[plan.old_name or ""] = plan
        handler = handler_for(module)
        if handler is not None:
            handler.resize(
                module,
                out_map.new if out_map is not None else None,
                in_map.new if in_map is not None else None,
            )
    _retie(an, modules, plans)
    return plans


def _grow_param(
    module: nn.Module,
    full: str,
    axes: ParamAxes,
    *,
    out: AxisMap | None,
    in_: AxisMap | None,
    role: ModuleRoles,
    gen: torch.Generator,
    noise: float,
    scale: str,
    split_out: bool,
) -> ParamPlan | None:
    """Grow one parameter or buffer of ``module`` in place; ``split_out``: also multiply its
    units by their outgoing share (the norm before a tied consumer)."""
    pname = full.rsplit(".", 1)[-1]
    tensor: torch.Tensor | None = module._parameters.get(pname)
    if tensor is None:
        tensor = module._buffers.get(pname)
    if tensor is None or (out is None and in_ is None):
        return None
    new = grow_tensor(
        tensor,
        axes,
        out=out,
        out_kind=role.out_kind,
        in_=in_,
        in_groups=role.in_groups,
        noise=noise,
        gen=gen,
        scale=scale,
    )
    if split_out and out is not None and axes.out is not None:
        shape = [1] * new.dim()
        shape[axes.out] = -1
        new = new * out.share.to(device=new.device, dtype=new.dtype).view(shape)
    set_tensor(module, pname, new)
    return ParamPlan(full, axes, out, role.out_kind, in_, role.in_groups)


def _retie(an: Analysis, modules: Mapping[str, nn.Module], plans: dict[str, ParamPlan]) -> None:
    """Point each tied consumer at its producer's grown parameter: still one tensor."""
    for t in an.ties:
        grown = modules[t.producer]._parameters[t.producer_param]
        modules[t.consumer]._parameters[t.consumer_param] = grown
        source = plans.get(f"{t.producer}.{t.producer_param}")
        if source is not None:
            plans[f"{t.consumer}.{t.consumer_param}"] = source
