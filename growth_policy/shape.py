"""The model's shape as the controller sees it: read from ``net2net.summarize()``, without the model.

The summary is JSON. What this module reads from it:

- ``groups``: ``[{"name", "width", "modules", "constraints"}]``, the width groups that can grow. A
  constraint that mentions "integer" (such as 'LayerNorm needs integer factors'), or
  ``"integer_factor": true``, means the group may only grow by whole factors; ``"multiple_of": k``
  that a new width must be a multiple of k (grouped convs). An optional ``"elements_per_unit"`` (or ``"spatial"``) gives the
  activation values one unit holds per sample (H·W for a conv channel; 1 by default).
- ``params``: ``[{"name", "dims"}]`` (or a mapping name → dims), each dim an integer, a group name, a
  ``{"group": name, "scale": k}`` reference, or a sum of those (a list, or ``{"sum": [...]}``),
  so that ``Linear(cat(a, b))`` has ``in_features = a + b`` and a conv feature map flattened into a
  Linear has ``{"group": c, "scale": H·W}``.
- ``deepen_candidates``: ``[{"after", "kind", "width", "exact"}]``, where a layer may be inserted;
  ``exact`` says whether an identity layer is exact there (ReLU-like activation). An optional
  ``"params"`` gives the parameter count of the inserted layer.

From that, :func:`predict_param_count` gives the exact parameter count after a widen, and an
estimate after a deepen, and :func:`estimate_memory_bytes` the training memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


class SummaryError(ValueError):
    """The summary does not have the shape this module reads."""


@dataclass(frozen=True)
class Dim:
    """``constant + Σ scale × width[group]``."""

    constant: float = 0.0
    terms: tuple[tuple[str, float], ...] = ()

    def value(self, widths: Mapping[str, int]) -> int:
        v = self.constant + sum(scale * widths[g] for g, scale in self.terms)
        return round(v)

    def __add__(self, other: Dim) -> Dim:
        return Dim(self.constant + other.constant, self.terms + other.terms)


@dataclass(frozen=True)
class GroupShape:
    name: str
    width: int
    modules: tuple[str, ...] = ()
    constraints: tuple[str, ...] = ()
    integer_factors: bool = False
    elements_per_unit: int = 1
    multiple_of: int = 1


@dataclass(frozen=True)
class ParamShape:
    name: str
    dims: tuple[Dim, ...]


@dataclass(frozen=True)
class DeepenCandidate:
    after: str
    kind: str = ""
    width: int = 0
    exact_identity: bool | None = None
    params: int | None = None


@dataclass(frozen=True)
class ModelShape:
    """Width groups, parameter dims and deepen candidates of one model generation."""

    groups: tuple[GroupShape, ...]
    params: tuple[ParamShape, ...]
    deepen_candidates: tuple[DeepenCandidate, ...] = ()
    param_count: int | None = None

    @property
    def widths(self) -> dict[str, int]:
        return {g.name: g.width for g in self.groups}

    def group(self, name: str) -> GroupShape:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(f"no width group {name!r}; groups: {', '.join(self.widths) or 'none'}")

    def count(self, widths: Mapping[str, int] | None = None) -> int:
        """Parameters at the given widths (the current ones by default)."""
        w = {**self.widths, **(widths or {})}
        return sum(math.prod(d.value(w) for d in p.dims) for p in self.params)

    def widths_for_factor(
        self, factor: float, groups: Iterable[str] | None = None
    ) -> dict[str, int]:
        """Each named group (all by default) ×factor rounded up (to its ``multiple_of``);
        integer-factor groups by the factor rounded up to a whole number."""
        names = set(self.widths) if groups is None else set(groups)
        out: dict[str, int] = {}
        for g in self.groups:
            if g.name not in names:
                continue
            f = float(math.ceil(factor - 1e-9)) if g.integer_factors else factor
            w = math.ceil(g.width * f - 1e-9)
            out[g.name] = -(-w // g.multiple_of) * g.multiple_of
        return out


def _as_int(x: Any, what: str) -> int:
    if isinstance(x, bool) or not isinstance(x, int | float) or x != int(x):
        raise SummaryError(f"{what}: expected an integer, got {x!r}")
    return int(x)


_SCALE_KEYS = ("scale", "coef", "coefficient", "multiplier", "per_unit", "factor")


def _dim(x: Any, groups: Mapping[str, GroupShape], where: str) -> Dim:
    if isinstance(x, bool):
        raise SummaryError(f"{where}: a dim cannot be {x!r}")
    if isinstance(x, int | float):
        return Dim(constant=float(_as_int(x, where)))
    if isinstance(x, str):
        if x not in groups:
            raise SummaryError(f"{where}: dim refers to unknown group {x!r}")
        return Dim(terms=((x, 1.0),))
    if isinstance(x, list | tuple):
        if not x:
            raise SummaryError(f"{where}: an empty sum")
        total = Dim()
        for part in x:
            total = total + _dim(part, groups, where)
        return total
    if isinstance(x, dict):
        if "sum" in x or "terms" in x:
            return _dim(x.get("sum", x.get("terms")), groups, where)
        ref = x.get("group", x.get("ref"))
        if isinstance(ref, str):
            scale = next((x[k] for k in _SCALE_KEYS if k in x), 1)
            offset = x.get("offset", x.get("constant", 0))
            if not isinstance(scale, int | float) or not isinstance(offset, int | float):
                raise SummaryError(f"{where}: bad scale or offset in {x!r}")
            if ref not in groups:
                raise SummaryError(f"{where}: dim refers to unknown group {ref!r}")
            return Dim(float(offset), ((ref, float(scale)),))
        if "value" in x or "const" in x:
            return Dim(constant=float(_as_int(x.get("value", x.get("const")), where)))
    raise SummaryError(f"{where}: cannot read dim {x!r}")


def _first(d: Mapping[str, Any], *keys: str) -> Any:
    for k in keys:
        if k in d:
            return d[k]
    return None


def parse_summary(summary: Mapping[str, Any]) -> ModelShape:
    """Read a ``net2net.summarize()`` dict; :class:`SummaryError` says what it could not read."""
    raw_groups = _first(summary, "groups", "width_groups")
    if not isinstance(raw_groups, list):
        raise SummaryError("summary: 'groups' must be a list of width groups")
    groups: dict[str, GroupShape] = {}
    for i, g in enumerate(raw_groups):
        if not isinstance(g, dict) or not isinstance(g.get("name"), str):
            raise SummaryError(f"summary.groups[{i}]: needs a 'name'")
        constraints = tuple(str(c) for c in g.get("constraints") or ())
        integer = bool(
            g.get("integer_factors") or g.get("integer_factor") or g.get("integer_factor_norms")
        ) or any("integer" in c.lower() for c in constraints)
        multiple = g.get("multiple_of", 1)
        per_unit = _first(g, "elements_per_unit", "spatial", "activation_size")
        groups[g["name"]] = GroupShape(
            name=g["name"],
            width=_as_int(g.get("width"), f"summary.groups[{i}].width"),
            modules=tuple(str(m) for m in g.get("modules") or ()),
            constraints=constraints,
            integer_factors=integer,
            elements_per_unit=_as_int(per_unit, f"summary.groups[{i}].elements_per_unit")
            if per_unit is not None
            else 1,
            multiple_of=max(1, _as_int(multiple, f"summary.groups[{i}].multiple_of")),
        )
    raw_params = _first(summary, "params", "parameters", "tensors")
    items: list[tuple[str, Any]]
    if isinstance(raw_params, dict):
        items = [(str(k), v) for k, v in raw_params.items()]
    elif isinstance(raw_params, list):
        items = []
        for i, p in enumerate(raw_params):
            if not isinstance(p, dict):
                raise SummaryError(f"summary.params[{i}]: expected an object")
            items.append((str(p.get("name", f"#{i}")), _first(p, "dims", "shape")))
    else:
        raise SummaryError("summary: 'params' must list every parameter tensor's dims")
    params = []
    for name, raw in items:
        dims = raw["dims"] if isinstance(raw, dict) and "dims" in raw else raw
        if not isinstance(dims, list | tuple):
            raise SummaryError(f"summary.params[{name!r}]: 'dims' must be a list")
        params.append(
            ParamShape(name, tuple(_dim(d, groups, f"summary.params[{name!r}]") for d in dims))
        )
    candidates = []
    for i, c in enumerate(_first(summary, "deepen_candidates", "deepen") or ()):
        if not isinstance(c, dict):
            raise SummaryError(f"summary.deepen_candidates[{i}]: expected an object")
        after = _first(c, "after", "module", "name")
        if not isinstance(after, str):
            raise SummaryError(f"summary.deepen_candidates[{i}]: needs 'after'")
        exact = _first(c, "exact", "exact_identity", "exactness")
        if isinstance(exact, dict):
            exact = exact.get("identity")
        if isinstance(exact, str):
            exact = exact.lower() in ("exact", "identity", "true", "yes")
        n = c.get("params")
        candidates.append(
            DeepenCandidate(
                after=after,
                kind=str(c.get("kind", "")),
                width=_as_int(c.get("width", 0), f"summary.deepen_candidates[{i}].width"),
                exact_identity=None if exact is None else bool(exact),
                params=None if n is None else _as_int(n, f"summary.deepen_candidates[{i}].params"),
            )
        )
    total = summary.get("param_count")
    return ModelShape(
        groups=tuple(groups.values()),
        params=tuple(params),
        deepen_candidates=tuple(candidates),
        param_count=None if total is None else _as_int(total, "summary.param_count"),
    )


def deepen_param_count(candidate: DeepenCandidate) -> int:
    """Parameters a deepen adds: the candidate's own figure, else a square layer with bias."""
    if candidate.params is not None:
        return candidate.params
    return candidate.width * candidate.width + candidate.width


def predict_param_count(
    shape: ModelShape | Mapping[str, Any],
    *,
    factor: float | None = None,
    widths: Mapping[str, int] | None = None,
    deepen_after: str | None = None,
) -> int:
    """Parameter count after ``widen(factor=…)``, ``widen(widths=…)`` or ``deepen(after=…)``.

    Exact for widening: every tensor's dims are evaluated at the new widths. For deepening it uses
    the candidate's ``params`` when the summary gives it, else ``width² + width`` (a square Linear).
    """
    s = shape if isinstance(shape, ModelShape) else parse_summary(shape)
    chosen = sum(x is not None for x in (factor, widths, deepen_after))
    if chosen != 1:
        raise ValueError("give exactly one of factor, widths, deepen_after")
    if deepen_after is not None:
        for c in s.deepen_candidates:
            if c.after == deepen_after:
                return s.count() + deepen_param_count(c)
        raise KeyError(f"{deepen_after!r} is not a deepen candidate")
    if factor is not None:
        return s.count(s.widths_for_factor(factor))
    assert widths is not None
    unknown = sorted(set(widths) - set(s.widths))
    if unknown:
        raise KeyError(f"unknown width groups {unknown}; groups: {', '.join(s.widths)}")
    return s.count(widths)


def estimate_memory_bytes(
    param_count: int,
    activation_units: int,
    *,
    batch_size: int,
    bytes_per_value: int = 4,
    optimizer_slots: int = 2,
    activation_factor: float = 4.0,
) -> int:
    """Training memory: weights + gradients + optimizer state + stored activations.

    ``param_count × (2 + optimizer_slots) × bytes`` plus
    ``batch_size × activation_units × activation_factor × bytes``, where ``activation_units`` is the
    sum over width groups of width × elements per unit. An estimate: it leaves out the input, the
    head and the framework's workspace, which is why the budget should keep a margin.
    """
    weights = param_count * (2 + optimizer_slots) * bytes_per_value
    acts = batch_size * activation_units * activation_factor * bytes_per_value
    return int(weights + acts)


def activation_units(shape: ModelShape, widths: Mapping[str, int] | None = None) -> int:
    w = {**shape.widths, **(widths or {})}
    return sum(w[g.name] * g.elements_per_unit for g in shape.groups)
