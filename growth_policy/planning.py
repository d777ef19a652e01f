"""What and where to grow: turn "grow now" into a :class:`~growth_policy.types.GrowthOp` that fits.

Pure functions of the observation, the model's shape (from its ``net2net.summarize()``), the config
and the limits. Each returns a :class:`Plan`: an op with the parameter counts before and after and a
description for the reason, or no op with the refusal and its numbers.

Limits. ``max_params`` and the memory budget are hard: a manual op that breaks them is refused.
For automatic growth the data cap (``max_params_over_target`` × the data-scaling target) applies
too, and a widen that would break any limit is shrunk to the largest factor that fits, as long as
that is at least ``min_factor``; below that it is refused, with the numbers of the growth it wanted.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from growth_policy._format import count, gib, num
from growth_policy.config import GrowthPolicyConfig
from growth_policy.shape import (
    DeepenCandidate,
    ModelShape,
    activation_units,
    deepen_param_count,
    estimate_memory_bytes,
)
from growth_policy.types import GrowthOp, Observation

Numbers = dict[str, float | int | str]
_ParamsAt = Callable[[float], int]  # factor -> parameters (or activation units) after widening


@dataclass(frozen=True)
class Limits:
    """What a growth may not exceed. ``cap_params`` is the soft data cap (automatic growth only)."""

    max_params: int
    memory_budget_bytes: int | None = None
    cap_params: int | None = None

    @classmethod
    def from_config(cls, config: GrowthPolicyConfig, *, cap_params: int | None = None) -> Limits:
        budget = config.memory.budget_gb
        return cls(
            max_params=config.guards.max_params,
            memory_budget_bytes=None if budget is None else int(budget * 2**30),
            cap_params=cap_params,
        )


@dataclass(frozen=True)
class Plan:
    """An op that fits (``op`` set), or a refusal (``op`` None, ``state`` says which)."""

    op: GrowthOp | None
    state: str
    description: str
    params_before: int
    params_after: int
    numbers: Numbers = field(default_factory=dict)


def _memory(config: GrowthPolicyConfig, params: int, units: int) -> int:
    m = config.memory
    return estimate_memory_bytes(
        params,
        units,
        batch_size=m.batch_size,
        bytes_per_value=m.bytes_per_value,
        optimizer_slots=m.optimizer_slots,
        activation_factor=m.activation_factor,
    )


def _violation(
    config: GrowthPolicyConfig, limits: Limits, before: int, after: int, units: int
) -> tuple[str, str, Numbers] | None:
    """The first limit that ``after`` parameters (and ``units`` activation units) break, if any."""
    if after > limits.max_params:
        return (
            "max_params",
            f"max params {count(limits.max_params)} would be exceeded: "
            f"{count(before)} → {count(after)}",
            {"max_params": limits.max_params},
        )
    if limits.memory_budget_bytes is not None:
        need = _memory(config, after, units)
        if need > limits.memory_budget_bytes:
            return (
                "memory",
                f"memory budget {gib(limits.memory_budget_bytes)} would be exceeded: "
                f"{count(before)} → {count(after)} parameters need about {gib(need)} to train",
                {"memory_bytes": need, "memory_budget_bytes": limits.memory_budget_bytes},
            )
    if limits.cap_params is not None and after > limits.cap_params:
        return (
            "data_cap",
            f"the data pays for at most {count(limits.cap_params)} parameters "
            f"({num(config.guards.max_params_over_target or 0)} × the data-scaling target): "
            f"{count(before)} → {count(after)} would overshoot",
            {"cap_params": limits.cap_params},
        )
    return None


def _refuse(state: str, text: str, before: int, after: int, numbers: Numbers) -> Plan:
    return Plan(None, state, text, before, after, {"params_before": before, **numbers})


def growth_op_from_request(args: Mapping[str, Any], config: GrowthPolicyConfig) -> GrowthOp | None:
    """The op of a grow request (a JSON object with GrowthOp's fields); None for an empty one,
    which lets the controller choose what and where.

    What a widen request leaves unsaid (``init``, ``noise``, ``split``) comes from the job's
    ``growth.widen`` config, not from GrowthOp's defaults: the paper's exact copies
    (``init="net2net"``) learn nothing new under Adam. Raises ValueError (pydantic's
    ValidationError) for an invalid op.
    """
    if not args:
        return None
    return GrowthOp.model_validate(_with_widen_config(args, config))


def _with_widen_config(args: Mapping[str, Any], config: GrowthPolicyConfig) -> dict[str, Any]:
    """``args`` with the job's widen settings filled in where a widen leaves them unsaid."""
    if args.get("op") != "widen":
        return dict(args)
    w = config.widen
    return {"init": w.init, "noise": w.noise, "split": w.split, **args}


def _widen_op(
    config: GrowthPolicyConfig, factor: float | None, widths: dict[str, int] | None
) -> GrowthOp:
    return GrowthOp.model_validate(
        _with_widen_config({"op": "widen", "factor": factor, "widths": widths}, config)
    )


def saturated_groups(
    shape: ModelShape, signals: Mapping[str, Mapping[str, float]], config: GrowthPolicyConfig
) -> tuple[list[str], Numbers]:
    """Groups whose configured saturation signal is at least the threshold, and the signal values."""
    sat = config.saturation
    values: Numbers = {}
    chosen = []
    for g in shape.groups:
        v = signals.get(g.name, {}).get(sat.signal)
        if v is None:
            continue
        values[f"{sat.signal}[{g.name}]"] = v
        if v >= sat.threshold:
            chosen.append(g.name)
    return chosen, values


def plan_widen(
    obs: Observation,
    shape: ModelShape | None,
    config: GrowthPolicyConfig,
    limits: Limits,
    *,
    target_params: int | None = None,
    signals: Mapping[str, Mapping[str, float]] | None = None,
) -> Plan:
    """Widen by the configured mode, within the limits (shrinking the factor to fit if it may)."""
    cfg = config.widen
    before = obs.param_count
    if shape is None:
        return _plan_widen_blind(obs, config, limits, target_params)
    eligible, note, extra, refusal = _eligible_groups(before, shape, config, signals or {})
    if refusal is not None:
        return refusal
    w = _Widening(shape, eligible, cfg.max_width, before, shape.count())
    desired = cfg.factor
    if cfg.mode == "target" and target_params is not None and target_params > before:
        desired = _smallest_factor_reaching(w.params, target_params, cfg.min_factor, cfg.max_factor)
    factor, refusal = _fit(config, limits, desired, params=w.params, units=w.units, before=before)
    if refusal is not None:
        return refusal
    changed = {g: x for g, x in w.widths(factor).items() if x != shape.group(g).width}
    if not changed:
        return _refuse("no_change", "widening would change no width", before, before, {})
    after = w.params(factor)
    uniform = len(eligible) == len(shape.groups) and changed == _net2net_factor_widths(
        shape, factor
    )
    op = _widen_op(config, factor, None) if uniform else _widen_op(config, None, changed)
    what = _widen_text(shape, changed, factor if uniform else None, note)
    if factor < desired:
        what += f" (×{num(desired)} capped to fit)"
    numbers: Numbers = {
        "factor": factor,
        "desired_factor": desired,
        "params_before": before,
        "params_after": after,
        "groups_widened": len(changed),
        **extra,
    }
    if target_params is not None:
        numbers["target_params"] = target_params
    return Plan(
        op, "widen", f"{what}, {count(before)} → {count(after)} parameters", before, after, numbers
    )


def _eligible_groups(
    before: int,
    shape: ModelShape,
    config: GrowthPolicyConfig,
    signals: Mapping[str, Mapping[str, float]],
) -> tuple[list[str], str, Numbers, Plan | None]:
    """The groups the widen mode picks, below ``max_width``; a note for the reason, the signal
    values it read, and the refusal when no group is left."""
    cfg = config.widen
    eligible = [g.name for g in shape.groups]
    note = ""
    extra: Numbers = {}
    if not eligible:
        refusal = _refuse(
            "no_groups", "the model has no width group that can grow", before, before, {}
        )
        return eligible, note, extra, refusal
    if cfg.mode == "saturated":
        if not any(g in signals for g in eligible):
            note = f"no {config.saturation.signal} signals reported, so all groups"
        else:
            eligible, extra = saturated_groups(shape, signals, config)
            if not eligible:
                top = max((float(v) for v in extra.values()), default=0.0)
                refusal = _refuse(
                    "not_saturated",
                    f"no width group is saturated: highest {config.saturation.signal} "
                    f"{num(top)} < {num(config.saturation.threshold)}",
                    before,
                    before,
                    extra,
                )
                return eligible, note, extra, refusal
    if cfg.max_width is not None:
        eligible = [g for g in eligible if shape.group(g).width < cfg.max_width]
        if not eligible:
            refusal = _refuse(
                "max_width",
                f"every width group that could grow is at the width limit {cfg.max_width}",
                before,
                before,
                {"max_width": cfg.max_width},
            )
            return eligible, note, extra, refusal
    return eligible, note, extra, None


@dataclass(frozen=True)
class _Widening:
    """What widening ``groups`` ×f gives: widths (capped at ``max_width``), parameters after
    (``before`` adjusted by the exact change from ``base``, the shape's count), activation units."""

    shape: ModelShape
    groups: list[str]
    max_width: int | None
    before: int
    base: int

    def widths(self, f: float) -> dict[str, int]:
        out = self.shape.widths_for_factor(f, self.groups)
        if self.max_width is not None:
            out = {g: min(w, self.max_width) for g, w in out.items()}
        return out

    def params(self, f: float) -> int:
        return self.before + self.shape.count(self.widths(f)) - self.base

    def units(self, f: float) -> int:
        return activation_units(self.shape, self.widths(f))


def _widen_text(
    shape: ModelShape, changed: Mapping[str, int], factor: float | None, note: str
) -> str:
    """'widening all groups ×f' (``factor``: a uniform widen) or the groups and their widths."""
    if factor is not None:
        what = f"widening all groups ×{num(factor)}"
    else:
        listed = ", ".join(f"{g} {shape.group(g).width}→{w}" for g, w in changed.items())
        what = f"widening {len(changed)} of {len(shape.groups)} groups ({listed})"
    return f"{what} ({note})" if note else what


def _net2net_factor_widths(shape: ModelShape, factor: float) -> dict[str, int] | None:
    """What ``net2net.widen(factor=…)`` would do (changed groups only); None where it refuses
    (a non-integer factor on an integer-factor group): then the plan names ``widths`` instead."""
    out: dict[str, int] = {}
    for g in shape.groups:
        new = math.ceil(g.width * factor - 1e-9)
        if g.integer_factors and new % g.width:
            return None
        new = -(-new // g.multiple_of) * g.multiple_of
        if new != g.width:
            out[g.name] = new
    return out


def _smallest_factor_reaching(params: _ParamsAt, target: int, lo: float, hi: float) -> float:
    if params(lo) >= target:
        return lo
    if params(hi) < target:
        return hi
    a, b = lo, hi
    for _ in range(40):
        mid = 0.5 * (a + b)
        if params(mid) >= target:
            b = mid
        else:
            a = mid
    return min(hi, math.ceil(b * 100 - 1e-9) / 100)


def _fit(
    config: GrowthPolicyConfig,
    limits: Limits,
    desired: float,
    *,
    params: _ParamsAt,
    units: _ParamsAt,
    before: int,
) -> tuple[float, Plan | None]:
    """The desired factor if it fits, else the largest that fits and is >= min_factor."""
    broken = _violation(config, limits, before, params(desired), units(desired))
    if broken is None:
        return desired, None
    lo = config.widen.min_factor
    if lo >= desired or _violation(config, limits, before, params(lo), units(lo)) is not None:
        state, text, numbers = broken
        return desired, _refuse(
            state,
            text,
            before,
            params(desired),
            {**numbers, "params_after": params(desired), "desired_factor": desired},
        )
    a, b = lo, desired
    for _ in range(40):
        mid = 0.5 * (a + b)
        if _violation(config, limits, before, params(mid), units(mid)) is None:
            a = mid
        else:
            b = mid
    f = max(lo, math.floor(a * 100 + 1e-9) / 100)
    return f, None


def _plan_widen_blind(
    obs: Observation, config: GrowthPolicyConfig, limits: Limits, target_params: int | None
) -> Plan:
    """Without a summary: every group ×factor, parameters estimated as P × factor²."""
    cfg = config.widen
    before = obs.param_count

    def params(f: float) -> int:
        return math.ceil(before * f * f)

    def units(f: float) -> int:
        return 0

    desired = cfg.factor
    if cfg.mode == "target" and target_params is not None and target_params > before > 0:
        desired = min(cfg.max_factor, max(cfg.min_factor, math.sqrt(target_params / before)))
        desired = math.ceil(desired * 100 - 1e-9) / 100
    factor, refusal = _fit(config, limits, desired, params=params, units=units, before=before)
    if refusal is not None:
        return refusal
    after = params(factor)
    text = (
        f"widening all groups ×{num(factor)} (no model summary: sizes estimated), "
        f"{count(before)} → ≈{count(after)} parameters"
    )
    numbers: Numbers = {
        "factor": factor,
        "desired_factor": desired,
        "params_before": before,
        "params_after": after,
        "estimated": 1,
    }
    return Plan(_widen_op(config, factor, None), "widen", text, before, after, numbers)


def choose_deepen_candidate(
    shape: ModelShape, config: GrowthPolicyConfig
) -> DeepenCandidate | None:
    """The documented rule: among :meth:`ModelShape.deepen_sites` (one per width group, after
    its activation), the deepest ('last', next to the head) or the shallowest ('first'). A model
    of blocks that deepen exactly (a transformer's pre-norm blocks) grows by a whole block instead:
    after its last block or its first (``deepen.style`` 'auto' or 'block')."""
    if config.deepen.style in ("auto", "block"):
        blocks = [c for c in shape.deepen_candidates if c.added_params("block") is not None]
        if blocks:
            return blocks[-1 if config.deepen.where == "last" else 0]
    sites = shape.deepen_sites()
    if not sites:
        return None
    return sites[-1 if config.deepen.where == "last" else 0]


def plan_deepen(
    obs: Observation, shape: ModelShape | None, config: GrowthPolicyConfig, limits: Limits
) -> Plan:
    """Insert one layer at the candidate the rule picks, if it fits the limits."""
    before = obs.param_count
    if shape is None:
        return _refuse(
            "no_summary",
            "no model summary in the observations, so there is nowhere known to deepen",
            before,
            before,
            {},
        )
    cand = choose_deepen_candidate(shape, config)
    if cand is None:
        return _refuse(
            "no_candidates", "the model has no place to insert a layer", before, before, {}
        )
    style = config.deepen.style
    if style == "auto" and cand.added_params("block") is not None:
        style = "block"
    elif style == "auto":
        style = "identity" if cand.exact_identity else "residual"
    elif style == "block" and cand.added_params("block") is None:
        return _refuse(
            "not_exact",
            f"no whole block deepens exactly after {cand.after}; set deepen.style to 'auto'",
            before,
            before,
            {},
        )
    elif style == "identity" and cand.exact_identity is False:
        return _refuse(
            "not_exact",
            f"an identity layer is not exact after {cand.after}; set deepen.style to "
            "'residual' or 'auto'",
            before,
            before,
            {},
        )
    added = deepen_param_count(cand, style)
    after = before + added
    units = activation_units(shape) + cand.width
    broken = _violation(config, limits, before, after, units)
    if broken is not None:
        state, text, limit_numbers = broken
        return _refuse(state, text, before, after, {**limit_numbers, "params_after": after})
    op = GrowthOp(op="deepen", after=cand.after, style=style)
    text = (
        f"deepening after {cand.after} ({style} {cand.kind or 'layer'}, width {cand.width}), "
        f"{count(before)} → {count(after)} parameters"
    )
    numbers: Numbers = {"params_before": before, "params_after": after, "after": cand.after}
    return Plan(op, "deepen", text, before, after, numbers)


def check_op(
    obs: Observation,
    shape: ModelShape | None,
    op: GrowthOp,
    config: GrowthPolicyConfig,
    limits: Limits,
) -> Plan:
    """A given (manual) op against the hard limits; it is applied as given or refused."""
    before = obs.param_count
    if op.op == "shrink_perturb":
        size: _Size | Plan = _Size(before)
    elif op.op == "deepen":
        size = _deepen_size(before, shape, op)
    else:
        size = _widen_size(before, shape, op)
    if isinstance(size, Plan):
        return size
    after = size.params
    broken = _violation(
        config, Limits(limits.max_params, limits.memory_budget_bytes), before, after, size.units
    )
    if broken is not None:
        state, text, limit_numbers = broken
        return _refuse(state, text, before, after, {**limit_numbers, "params_after": after})
    approx = "≈" if size.estimated else ""
    text = f"{_describe(op)}, {count(before)} → {approx}{count(after)} parameters"
    numbers: Numbers = {"params_before": before, "params_after": after}
    if size.estimated:
        numbers["estimated"] = 1
    return Plan(op, op.op, text, before, after, numbers)


@dataclass(frozen=True)
class _Size:
    """A model's size after an op: parameters, activation units, and whether it is estimated."""

    params: int
    units: int = 0
    estimated: bool = False


def _deepen_size(before: int, shape: ModelShape | None, op: GrowthOp) -> _Size | Plan:
    """The size after a given deepen, or its refusal (an unknown or inexact place)."""
    cand = None
    if shape is not None:
        cand = next((c for c in shape.deepen_candidates if c.after == op.after), None)
    if shape is not None and cand is None and shape.deepen_candidates:
        known = ", ".join(c.after for c in shape.deepen_candidates)
        return _refuse(
            "unknown_target",
            f"cannot deepen after {op.after!r}: candidates are {known}",
            before,
            before,
            {},
        )
    if cand is not None and op.style == "identity" and cand.exact_identity is False:
        return _refuse(
            "not_exact",
            f"an identity layer is not exact after {op.after}; use style 'residual'",
            before,
            before,
            {},
        )
    if cand is None:
        return _Size(before, estimated=True)
    units = activation_units(shape) + cand.width if shape is not None else 0
    return _Size(before + deepen_param_count(cand, op.style), units)


def _widen_size(before: int, shape: ModelShape | None, op: GrowthOp) -> _Size | Plan:
    """The size after a given widen (estimated as P × factor² without a shape), or its refusal
    (unknown groups)."""
    if shape is None:
        f = op.factor if op.factor is not None else 2.0
        return _Size(math.ceil(before * f * f), estimated=True)
    if op.widths is not None:
        unknown = sorted(set(op.widths) - set(shape.widths))
        if unknown:
            return _refuse(
                "unknown_target",
                f"unknown width groups {', '.join(unknown)}; groups: {', '.join(shape.widths)}",
                before,
                before,
                {},
            )
        new = dict(op.widths)
    else:
        assert op.factor is not None
        new = shape.widths_for_factor(op.factor)
    return _Size(before + shape.count(new) - shape.count(), activation_units(shape, new))


def _describe(op: GrowthOp) -> str:
    if op.op == "widen":
        if op.factor is not None:
            return f"widening all groups ×{num(op.factor)}"
        assert op.widths is not None
        return "widening " + ", ".join(f"{g} to {w}" for g, w in op.widths.items())
    if op.op == "deepen":
        return f"deepening after {op.after} ({op.style})"
    return f"shrink and perturb (shrink {num(op.shrink)}, perturb {num(op.perturb)})"
