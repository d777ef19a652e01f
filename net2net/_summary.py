"""What a growth controller needs to know about a model, as plain JSON data, so that it can plan
(and predict parameter counts exactly) in another process, without the model."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import nn

from ._deepen import AUTO, STYLES, build_block, plan_deepen
from ._deepen_block import BLOCK_STYLES, plan_block
from ._errors import GrowthError
from ._graph import Analysis, analyse, as_inputs
from ._handlers import axes_of
from ._layout import Segs
from ._widen import RECORD_FORMAT, blocked_spec, group_spec, input_spec, resolve_widths


def count_params(model: nn.Module) -> int:
    """Number of parameter elements (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters())


def _terms(an: Analysis, segs: Segs) -> list[list[Any]]:
    out: list[list[Any]] = []
    for s in segs:
        name = an.group(s.gid).name if s.gid is not None else None
        out.append([name, s.units, s.block])
    return out


def _param_dims(an: Analysis) -> list[dict[str, Any]]:
    """Every parameter's dims: an int, or {"terms": [[group|null, units, block], ...], "div": d}
    meaning sum(width(group)·block) // d."""
    special: dict[str, dict[int, dict[str, Any]]] = {}
    modules = dict(an.model.named_modules())
    for mname, role in an.roles.items():
        module = modules[mname]
        for pname, axes in axes_of(module, role.free).items():
            dims: dict[int, dict[str, Any]] = {}
            if axes.out is not None and role.out is not None:
                dims[axes.out] = {"terms": _terms(an, role.out), "div": 1}
            if axes.in_ is not None and role.in_ is not None:
                dims[axes.in_] = {"terms": _terms(an, role.in_), "div": role.in_groups}
            if dims:
                special[f"{mname}.{pname}" if mname else pname] = dims
    params = []
    for name, p in an.model.named_parameters():
        spec = special.get(name, {})
        params.append({"name": name, "dims": [spec.get(i, int(n)) for i, n in enumerate(p.shape)]})
    return params


def _deepen_candidates(an: Analysis) -> list[dict[str, Any]]:
    out = []
    for name, _ in an.model.named_modules():
        if not name:
            continue
        try:
            plan = plan_deepen(an, name, "summarize")
        except GrowthError:
            continue
        added: dict[str, int | None] = {}
        for style in STYLES:
            if style == "identity" and not plan.identity_exact:
                added[style] = None
            else:
                block = build_block(plan, style, "meta")
                added[style] = sum(p.numel() for p in block.parameters())
        added.update(_block_added(an, name))
        out.append(
            {
                "after": name,
                "kind": plan.kind,
                "width": plan.width,
                "identity_exact": plan.identity_exact,
                "residual_exact": True,
                "batch_norm": plan.batch_norm is not None,
                "added_params": added,
            }
        )
    return out


def _block_added(an: Analysis, name: str) -> dict[str, int | None]:
    """The parameters style="block" and "stack" add after ``name`` (a copy of it; None where
    "block" is not exact), or nothing when ``name`` is not a block of a list."""
    try:
        plan = plan_block(an, name, "summarize")
    except GrowthError:
        return {}
    n = sum(p.numel() for p in an.model.get_submodule(name).parameters())
    return {"block": n if plan.refusal is None else None, "stack": n}


def summarize(model: nn.Module, example_input: Any) -> dict[str, Any]:
    """A JSON-serialisable description of ``model`` for planning growth without the model.

    ``groups``: the growable width groups with their constraints (``multiple_of``,
    ``integer_factor``); ``blocked_groups``: the others, with the reason; ``params``: every
    parameter's dims as a constant or as group references, so that :func:`predict_param_count`
    is exact; ``deepen_candidates``: modules after which :func:`net2net.deepen` can insert a
    layer, with its kind, width, whether style="identity" is exact there, and the parameters each
    style adds; ``param_count``: :func:`count_params` of the model.
    """
    inputs = as_inputs(example_input)
    an = analyse(model, inputs, "summarize")
    return {
        "format": RECORD_FORMAT,
        "input": input_spec(inputs),
        "param_count": count_params(model),
        "groups": [group_spec(g) for g in an.groups.values() if g.growable],
        "blocked_groups": [blocked_spec(g) for g in an.groups.values() if not g.growable],
        "params": _param_dims(an),
        "deepen_candidates": _deepen_candidates(an),
    }


def _dim_size(dim: Any, widths: Mapping[str, int]) -> int:
    if isinstance(dim, int):
        return dim
    total = 0
    for name, units, block in dim["terms"]:
        n = widths.get(name, units) if name is not None else units
        total += int(n) * int(block)
    return total // int(dim["div"])


def predict_param_count(
    summary: Mapping[str, Any],
    *,
    factor: float | None = None,
    widths: Mapping[str, int] | None = None,
    deepen_after: str | None = None,
    style: str = AUTO,
) -> int:
    """The exact parameter count after ``widen(factor=…)``/``widen(widths=…)`` or after
    ``deepen(after=deepen_after, style=…)``, from a :func:`summarize` result alone. Raises
    :class:`GrowthError` exactly where the op would refuse for width constraints. ``style="auto"``
    resolves as deepen's default does: "block" where the candidate's ``added_params`` give an
    exact block, else "identity"."""
    if deepen_after is not None:
        if factor is not None or widths is not None:
            raise GrowthError(
                "predict_param_count: predict one op at a time (deepen_after= or factor=/widths=)"
            )
        if style not in (AUTO, *STYLES, *BLOCK_STYLES):
            raise GrowthError(f"predict_param_count: unknown style {style!r}")
        for cand in summary["deepen_candidates"]:
            if cand["after"] == deepen_after:
                if style == AUTO:
                    exact_block = cand["added_params"].get("block") is not None
                    style = "block" if exact_block else "identity"
                if style not in cand["added_params"]:
                    raise GrowthError(
                        f"predict_param_count: {deepen_after!r} is not a block of an "
                        f"nn.ModuleList or nn.Sequential, so style={style!r} does not apply"
                    )
                added = cand["added_params"][style]
                if added is None:
                    other = "'residual'" if style == "identity" else "'stack' (not exact)"
                    raise GrowthError(
                        f"predict_param_count: style={style!r} is not exact after "
                        f"{deepen_after!r}; use style={other}"
                    )
                return int(summary["param_count"]) + int(added)
        raise GrowthError(
            f"predict_param_count: {deepen_after!r} is not a deepen candidate of this summary"
        )
    targets = resolve_widths(
        list(summary["groups"]),
        list(summary["blocked_groups"]),
        factor,
        widths,
        "predict_param_count",
    )
    return sum(math.prod(_dim_size(d, targets) for d in p["dims"]) for p in summary["params"])
