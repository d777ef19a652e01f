"""The model's shape as the controller sees it: read from ``net2net.summarize()``, without the model.

The summary is JSON. What this module reads from it:

- ``groups``: the width groups that can grow: ``name``, ``width``, the module names
  (``producers``, ``norms``, ``consumers``), ``integer_factor`` (a LayerNorm normalises over the
  group: it may only grow by whole factors) and ``multiple_of`` (grouped convs). An optional
  ``elements_per_unit`` gives the activation values one unit holds per sample (H·W for a conv
  channel; 1 when absent) for the memory estimate.
- ``params``: every parameter tensor's ``dims``: an integer, or
  ``{"terms": [[group | null, units, block], ...], "div": d}`` meaning
  ``(Σ width(group)·block) // d`` (``null``: a fixed stretch of ``units·block``). So a Linear after
  ``cat(a, b)`` has ``in_features = a + b``, a conv map flattened into a Linear has
  ``[[c, C, H·W]]``, and a grouped conv divides by its groups. For hand-written summaries (tests)
  a group name, ``{"group": name, "scale": k}`` or a list (a sum) also work.
- ``deepen_candidates``: ``after`` (the module to insert after), ``kind``, ``width``,
  ``identity_exact`` and ``added_params`` (parameters each style adds; None where not exact).

From that, :meth:`ModelShape.count` gives the planner the exact parameter count at any widths (the
same figure as ``net2net.predict_param_count``, the public prediction, which needs torch),
:func:`deepen_param_count` what a deepen adds (exact when the summary gives ``added_params``), and
:func:`estimate_memory_bytes` the training memory.
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
    """``(constant + Σ block × width[group]) // div``."""

    constant: int = 0
    terms: tuple[tuple[str, int], ...] = ()
    div: int = 1

    def value(self, widths: Mapping[str, int]) -> int:
        return (self.constant + sum(block * widths[g] for g, block in self.terms)) // self.div

    def __add__(self, other: Dim) -> Dim:
        if self.div != 1 or other.div != 1:
            raise SummaryError("cannot add dims that divide")
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
    producers: tuple[str, ...] = ()
    consumers: tuple[str, ...] = ()


@dataclass(frozen=True)
class ParamShape:
    name: str
    dims: tuple[Dim, ...]


@dataclass(frozen=True)
class DeepenCandidate:
    """Where a layer can go: ``added`` is the parameters each style adds (None: not exact there)."""

    after: str
    kind: str = ""
    width: int = 0
    exact_identity: bool | None = None
    added: tuple[tuple[str, int | None], ...] = ()

    def added_params(self, style: str) -> int | None:
        return dict(self.added).get(style)


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

    def deepen_sites(self) -> tuple[DeepenCandidate, ...]:
        """One place to deepen per width group, in graph order: where a new layer sits after the
        group's producer and everything that follows it (norm, activation, pooling) and before
        its first consumer, so that it sees the units as the next layer does.

        Candidates are in module order; a site is the last candidate of the group's width after
        its producers and before its first consumer. Groups whose producers are not candidates
        have none. When no group has a site (unusual graphs), every candidate of a group's width.
        """
        order = {c.after: i for i, c in enumerate(self.deepen_candidates)}
        sites: list[DeepenCandidate] = []
        for g in self.groups:
            starts = [order[p] for p in g.producers if p in order]
            if not starts:
                continue
            lo = max(starts)
            hi = min((order[c] for c in g.consumers if c in order and order[c] > lo), default=None)
            inside = [
                c
                for i, c in enumerate(self.deepen_candidates)
                if i >= lo and (hi is None or i < hi) and c.width == g.width
            ]
            if inside and inside[-1] not in sites:
                sites.append(inside[-1])
        if sites:
            return tuple(sites)
        widths = {g.width for g in self.groups}
        return tuple(c for c in self.deepen_candidates if c.width in widths)

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


def _dim(x: Any, groups: Mapping[str, GroupShape], where: str) -> Dim:
    """One dim: net2net's ``{"terms": [[group|null, units, block], ...], "div": d}``, or the
    shorthand: an integer, a group name, ``{"group": name, "scale": k}``, or a list (a sum)."""
    if isinstance(x, bool):
        raise SummaryError(f"{where}: a dim cannot be {x!r}")
    if isinstance(x, int | float):
        return Dim(constant=_as_int(x, where))
    if isinstance(x, str):
        if x not in groups:
            raise SummaryError(f"{where}: dim refers to unknown group {x!r}")
        return Dim(terms=((x, 1),))
    if isinstance(x, list | tuple):
        if not x:
            raise SummaryError(f"{where}: an empty sum")
        total = Dim()
        for part in x:
            total = total + _dim(part, groups, where)
        return total
    if isinstance(x, dict) and isinstance(x.get("terms"), list):
        return _terms_dim(x, groups, where)
    if isinstance(x, dict) and isinstance(x.get("group"), str):
        ref = x["group"]
        if ref not in groups:
            raise SummaryError(f"{where}: dim refers to unknown group {ref!r}")
        return Dim(terms=((ref, _as_int(x.get("scale", 1), where)),))
    raise SummaryError(f"{where}: cannot read dim {x!r}")


def _terms_dim(x: Mapping[str, Any], groups: Mapping[str, GroupShape], where: str) -> Dim:
    """net2net's ``{"terms": [[group|null, units, block], ...], "div": d}``."""
    constant, terms = 0, []
    for t in x["terms"]:
        if not (isinstance(t, list | tuple) and len(t) == 3):
            raise SummaryError(f"{where}: a term is [group|null, units, block], got {t!r}")
        name, units, block = t[0], _as_int(t[1], where), _as_int(t[2], where)
        if isinstance(name, str) and name in groups:
            terms.append((name, block))
        else:  # fixed size, or a group that cannot grow: constant
            constant += units * block
    div = _as_int(x.get("div", 1), where)
    if div < 1:
        raise SummaryError(f"{where}: div must be >= 1, got {div}")
    return Dim(constant, tuple(terms), div)


def _names(values: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in values or ())


def parse_summary(summary: Mapping[str, Any]) -> ModelShape:
    """Read a ``net2net.summarize()`` dict; :class:`SummaryError` says what it could not read."""
    groups = _groups(summary.get("groups"))
    params = _params(summary.get("params"), groups)
    candidates = _candidates(summary.get("deepen_candidates") or ())
    total = summary.get("param_count")
    return ModelShape(
        groups=tuple(groups.values()),
        params=tuple(params),
        deepen_candidates=tuple(candidates),
        param_count=None if total is None else _as_int(total, "summary.param_count"),
    )


def _groups(raw_groups: Any) -> dict[str, GroupShape]:
    """``summary["groups"]``, by name."""
    if not isinstance(raw_groups, list):
        raise SummaryError("summary: 'groups' must be a list of width groups")
    groups: dict[str, GroupShape] = {}
    for i, g in enumerate(raw_groups):
        where = f"summary.groups[{i}]"
        if not isinstance(g, dict) or not isinstance(g.get("name"), str):
            raise SummaryError(f"{where}: needs a 'name'")
        constraints = _names(g.get("constraints")) + _names(g.get("integer_factor_because"))
        integer = bool(g.get("integer_factor")) or any("integer" in c.lower() for c in constraints)
        modules = _names(g.get("modules")) or tuple(
            dict.fromkeys(
                _names(g.get("producers")) + _names(g.get("norms")) + _names(g.get("consumers"))
            )
        )
        groups[g["name"]] = GroupShape(
            name=g["name"],
            width=_as_int(g.get("width"), f"{where}.width"),
            modules=modules,
            constraints=constraints,
            integer_factors=integer,
            elements_per_unit=_as_int(g.get("elements_per_unit", 1), f"{where}.elements_per_unit"),
            multiple_of=max(1, _as_int(g.get("multiple_of", 1), f"{where}.multiple_of")),
            producers=_names(g.get("producers")),
            consumers=_names(g.get("consumers")),
        )
    return groups


def _params(raw_params: Any, groups: Mapping[str, GroupShape]) -> list[ParamShape]:
    """``summary["params"]``: a list of ``{"name", "dims"}``, or (hand-written) name → dims."""
    items: list[tuple[str, Any]]
    if isinstance(raw_params, dict):
        items = [(str(k), v) for k, v in raw_params.items()]
    elif isinstance(raw_params, list):
        items = []
        for i, p in enumerate(raw_params):
            if not isinstance(p, dict):
                raise SummaryError(f"summary.params[{i}]: expected an object")
            items.append((str(p.get("name", f"#{i}")), p.get("dims")))
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
    return params


def _candidates(raw: Iterable[Any]) -> list[DeepenCandidate]:
    """``summary["deepen_candidates"]``, in module order."""
    candidates = []
    for i, c in enumerate(raw):
        where = f"summary.deepen_candidates[{i}]"
        if not isinstance(c, dict) or not isinstance(c.get("after"), str):
            raise SummaryError(f"{where}: needs 'after'")
        exact = c.get("identity_exact", c.get("exact"))
        added = c.get("added_params") or {}
        if not isinstance(added, dict):
            raise SummaryError(f"{where}.added_params: expected an object")
        candidates.append(
            DeepenCandidate(
                after=c["after"],
                kind=str(c.get("kind", "")),
                width=_as_int(c.get("width", 0), f"{where}.width"),
                exact_identity=None if exact is None else bool(exact),
                added=tuple(
                    (str(k), None if v is None else _as_int(v, f"{where}.added_params"))
                    for k, v in added.items()
                ),
            )
        )
    return candidates


def deepen_param_count(candidate: DeepenCandidate, style: str = "auto") -> int:
    """Parameters a deepen adds: the summary's figure for the style, else a square Linear.
    ``"auto"`` resolves as ``net2net.deepen``'s default does: a copy of the block where the
    summary gives an exact one (``added_params["block"]``), else an identity layer."""
    if style == "auto":
        style = "block" if candidate.added_params("block") is not None else "identity"
    n = candidate.added_params(style)
    if n is not None:
        return n
    return candidate.width * candidate.width + candidate.width


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
