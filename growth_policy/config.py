"""The growth-policy section of a job spec: which policies decide, how much to grow, and the guards.

Every field has a default that works for the demo (a small classifier fed in about six stages over a
few thousand steps). The defaults that shape learning (the data-scaling coefficient, the policies,
shrink-and-perturb, the init) were chosen by measurement on the stream benchmark
(``bench/stream.py``; figures and reasons in ``docs/learning.md`` and ``docs/growth_policy.md``),
and each one lives in exactly one place here.

Unknown keys are rejected everywhere (``extra="forbid"``) and every cross-field problem is collected
into one error message, so that a bad job spec fails before anything starts and says what to change.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from growth_policy._registry import registered_policies

Strategy = Literal["widen", "deepen", "alternate", "auto"]
WidenMode = Literal["factor", "target", "saturated"]
DeepenWhere = Literal["last", "first"]
DeepenStyle = Literal["identity", "residual", "block", "auto"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PlateauConfig(_Section):
    """Underfitting detector: the training loss has stopped improving and the gap is small."""

    window_steps: int = Field(
        default=300,
        ge=1,
        description="Compare the smoothed train loss now with the one this many steps ago "
        "(within the current generation).",
    )
    min_improvement: float = Field(
        default=0.01,
        ge=0.0,
        lt=1.0,
        description="A plateau is a relative improvement of the train loss below this over the window.",
    )
    max_gap: float = Field(
        default=0.5,
        ge=0.0,
        description="Largest relative generalisation gap (val_loss - train_loss) / train_loss that "
        "still counts as underfitting; above it the model is overfitting and waits for data.",
    )
    max_data_growth: float = Field(
        default=0.10,
        ge=0.0,
        description="The window restarts when the dataset grew by more than this fraction inside "
        "it: new data moves the loss for reasons that are not capacity.",
    )


class DataScalingConfig(_Section):
    """Capacity follows data: target parameters = coefficient × dataset_size ** exponent (with
    ``coefficient_per_token`` where the data is counted in tokens)."""

    coefficient: float = Field(
        default=3.0, gt=0.0, description="Target parameters for one sample (at exponent 1)."
    )
    coefficient_per_token: float = Field(
        default=2.0,
        gt=0.0,
        description="Language modelling, whose data is counted in tokens: target parameters for "
        "one training token (at exponent 1), in place of 'coefficient'. 2 measured on the "
        "Shakespeare stream (docs/benchmarks.md, language model, the sweep rows: 1, 2, 3, 4, one "
        "seed each, 3 also three): 1 grows too late (final loss 2.205), 2 is the largest that "
        "stays within 60% of the fixed large model's FLOPs (3 costs 80%, 4 118%).",
    )
    exponent: float = Field(
        default=1.0, gt=0.0, le=2.0, description="How fast the target grows with the data."
    )
    trigger_ratio: float = Field(
        default=1.5,
        gt=1.0,
        description="Grow when the target is at least this many times the current parameters.",
    )


class DriftConfig(_Section):
    """New data the model does not learn: the newest slice of the validation set stays much harder
    than the history (``Observation.drift``, workers.slices) and has stopped getting easier."""

    min_drift: float = Field(
        default=1.5,
        gt=1.0,
        description="Grow when the newest slice's validation loss is at least this many times the "
        "older slices' (at every observation of the window).",
    )
    window_observations: int = Field(
        default=4,
        ge=2,
        description="Observations of this generation on this data version that the drift must "
        "hold for.",
    )
    min_improvement: float = Field(
        default=0.05,
        ge=0.0,
        lt=1.0,
        description="The drift has stopped falling when it fell by less than this fraction over "
        "the window.",
    )


class ScheduleConfig(_Section):
    """Grow at given dataset sizes or steps: by the k-th threshold, at least k growths."""

    at_dataset_sizes: list[int] = Field(default_factory=list)
    at_steps: list[int] = Field(default_factory=list)


class WidenConfig(_Section):
    """How much to widen, which groups, and how the new units start (passed to ``net2net.widen``)."""

    mode: WidenMode = Field(
        default="target",
        description="'factor': every group ×factor; 'target': the factor that approaches the "
        "data-scaling target (×factor when there is none); 'saturated': only the groups whose "
        "saturation signal crosses the threshold, ×factor.",
    )
    factor: float = Field(default=2.0, gt=1.0)
    min_factor: float = Field(
        default=1.25, gt=1.0, description="A smaller growth is not worth a generation."
    )
    max_factor: float = Field(
        default=4.0, gt=1.0, description="Largest factor one growth may apply to a group."
    )
    max_width: int | None = Field(
        default=None, ge=1, description="No group grows beyond this width (None: no limit)."
    )
    init: str = Field(
        default="random_zero",
        min_length=1,
        description="net2net.widen(init=...): how new units start. 'random_zero' (random incoming, "
        "zero outgoing weights) is exact and its units differ from the start; the paper's "
        "'net2net' copies learn nothing under Adam (docs/net2net.md, init modes).",
    )
    noise: float = Field(default=0.0, ge=0.0, description="net2net.widen(noise=...).")
    split: Literal["equal", "random"] = "equal"


class DeepenConfig(_Section):
    """Where to insert a layer, among ``summary['deepen_candidates']``."""

    where: DeepenWhere = Field(
        default="last",
        description="'last': after the deepest candidate (next to the head); 'first': after the "
        "shallowest.",
    )
    style: DeepenStyle = Field(
        default="auto",
        description="'identity' (Net2DeeperNet), 'residual' (zero-initialised branch), 'block' "
        "(a copy of a whole block whose output projections start at zero: transformers), or "
        "'auto': a block where the model has blocks that deepen exactly, else identity where the "
        "candidate says it is exact and residual elsewhere.",
    )


class SaturationConfig(_Section):
    """Which per-group signal (``Observation.group_signals``, measured by ``workers.signals``)
    marks a group as saturated."""

    signal: str = Field(default="active_fraction", min_length=1)
    threshold: float = Field(
        default=0.9, ge=0.0, description="A group is saturated when its signal is at least this."
    )


class GuardsConfig(_Section):
    """Limits that every automatic growth must pass. Manual growth passes only the hard ones."""

    warmup_passes: float = Field(
        default=1.0,
        ge=0.0,
        description="No automatic growth before this many passes over the first dataset seen.",
    )
    cooldown_steps: int = Field(default=300, ge=0, description="Steps after a growth.")
    min_generation_steps: int = Field(
        default=100, ge=0, description="Steps a generation trains before it may grow."
    )
    max_params: int = Field(default=10_000_000, ge=1, description="Hard limit, manual included.")
    max_generations: int = Field(
        default=20,
        ge=0,
        description="Hard limit, manual included. Shrink-and-perturb opens generations too (one "
        "per doubling of the data), so a six-stage stream uses about 11.",
    )
    apply_timeout_steps: int = Field(
        default=500,
        ge=1,
        description="A decided growth that has not shown up as a new generation after this many "
        "steps counts as failed; the cooldown then starts anyway, so a failing growth is not "
        "retried at every observation.",
    )
    max_gap: float | None = Field(
        default=None,
        ge=0.0,
        description="If set, no automatic growth while (val_loss - train_loss) / train_loss "
        "exceeds it. Off by default: measured, wider is better at every dataset size, so "
        "data-driven growth need not wait for the gap to close (plateau has its own gap test).",
    )
    regrow_on_same_data: Literal["never", "underfitting", "always"] = Field(
        default="underfitting",
        description="Whether a policy may grow the model again on a training set that has not "
        "grown since the last growth: 'underfitting' only when the model plainly underfits (the "
        "plateau test: the training loss has stopped improving and the generalisation gap is "
        "small, so the loss plateaued high); 'never'; 'always' (the behaviour before this rule). "
        "Manual growth is not subject to it.",
    )
    max_params_over_target: float | None = Field(
        default=2.0,
        gt=0.0,
        description="With data_scaling on, automatic growth stops at this multiple of the "
        "data-scaling target: growth only as far as the data pays for. None: no cap.",
    )


class ShrinkPerturbConfig(_Section):
    """Shrink and perturb (Ash & Adams, NeurIPS 2020) when much new data has arrived.

    An automatic action: with ``policies=["manual"]`` it never happens by itself either.

    A warm-started network generalises worse than a fresh one trained on the same data; the remedy
    is ``θ ← shrink·θ + perturb·ε`` (ε ~ N(0, 1)) when the data grows, keeping what was learned
    while restoring some of a fresh network's plasticity. It changes no size and is not exact.
    """

    enabled: bool = Field(
        default=True,
        description="On by default: on the MNIST-1D stream it raised the grown model's final "
        "accuracy by about 3.5 points at no extra compute (docs/learning.md). Off by default for "
        "language modelling (TASK_DEFAULTS): on the Shakespeare stream each one raised the "
        "validation loss by 0.18-0.27 nats, and the growth defaults before ended at 2.365 with "
        "it against 2.212 without it (docs/benchmarks.md, language model).",
    )
    min_data_growth: float = Field(
        default=1.0,
        gt=0.0,
        description="Apply when the dataset has grown by at least this fraction since the last "
        "shrink-and-perturb (or since the first data seen): 1.0 = doubled.",
    )
    shrink: float = Field(default=0.8, gt=0.0, le=1.0, description="λ in θ ← λθ + σε.")
    perturb: float = Field(default=0.01, ge=0.0, description="σ in θ ← λθ + σε.")

    @model_validator(mode="after")
    def _does_something(self) -> Self:
        if self.shrink == 1.0 and self.perturb == 0.0:
            raise ValueError("shrink_perturb: shrink=1 and perturb=0 would change nothing")
        return self


class MemoryConfig(_Section):
    """Estimate of training memory after a growth, checked against a budget (hard limit)."""

    budget_gb: float | None = Field(
        default=None, gt=0.0, description="Memory per worker in GiB; None: not checked."
    )
    batch_size: int = Field(default=128, ge=1, description="Per-worker batch size.")
    bytes_per_value: int = Field(default=4, ge=1, description="4 for float32.")
    optimizer_slots: int = Field(
        default=2, ge=0, description="Values of optimizer state per parameter (Adam: 2)."
    )
    activation_factor: float = Field(
        default=4.0,
        gt=0.0,
        description="Stored activation values per unit per sample (pre/post activation, norm, "
        "gradient).",
    )


def _init_errors(w: WidenConfig) -> list[str]:
    """Check ``init`` and ``noise`` against net2net's modes."""
    import net2net  # here, not above: importing growth_policy must not load torch

    modes = net2net.init_modes()
    if w.init not in modes:
        return [f"widen.init: unknown mode {w.init!r}; net2net has {', '.join(sorted(modes))}"]
    if w.noise > 0 and not modes[w.init].get("noise", True):
        return [f"widen.noise: init {w.init!r} takes no noise; set noise to 0 or use another init"]
    return []


class GrowthPolicyConfig(BaseModel):
    """The ``growth`` section of a job spec."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    policies: list[str] = Field(
        default_factory=lambda: ["data_scaling"],
        description="Policies combined any-of, in this order. Manual requests are always "
        "accepted; ['manual'] alone means no automatic growth. Adding 'plateau' grows further "
        "when training stalls: on the MNIST-1D stream +1.3 points for 15-50% more compute.",
    )
    strategy: Strategy = Field(
        default="auto",
        description="'widen', 'deepen', 'alternate' (widen first), or 'auto': widen, and deepen "
        "only where widening cannot go on (width limits, constraints, max params).",
    )
    plateau: PlateauConfig = Field(default_factory=PlateauConfig)
    data_scaling: DataScalingConfig = Field(default_factory=DataScalingConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)
    widen: WidenConfig = Field(default_factory=WidenConfig)
    deepen: DeepenConfig = Field(default_factory=DeepenConfig)
    saturation: SaturationConfig = Field(default_factory=SaturationConfig)
    guards: GuardsConfig = Field(default_factory=GuardsConfig)
    memory: MemoryConfig = Field(default_factory=MemoryConfig)
    shrink_perturb: ShrinkPerturbConfig = Field(default_factory=ShrinkPerturbConfig)
    history_size: int = Field(
        default=256, ge=2, description="Observations kept (and checkpointed) by the controller."
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        errors: list[str] = []
        known = registered_policies()
        unknown = [name for name in self.policies if name not in known]
        if unknown:
            errors.append(
                f"policies: unknown {', '.join(map(repr, unknown))}; known: {', '.join(known)}"
            )
        if not self.policies:
            errors.append("policies: name at least one (['manual'] for manual growth only)")
        if len(set(self.policies)) != len(self.policies):
            errors.append("policies: each policy may appear once")
        w = self.widen
        if not w.min_factor <= w.factor <= w.max_factor:
            errors.append(
                f"widen: need min_factor <= factor <= max_factor, got "
                f"{w.min_factor} <= {w.factor} <= {w.max_factor}"
            )
        s = self.schedule
        for name, values in (("at_dataset_sizes", s.at_dataset_sizes), ("at_steps", s.at_steps)):
            if any(v < 0 for v in values):
                errors.append(f"schedule.{name}: values must be >= 0")
            if values != sorted(set(values)):
                errors.append(f"schedule.{name}: values must be increasing, without repeats")
        errors.extend(_init_errors(w))
        if "schedule" in self.policies and not (s.at_dataset_sizes or s.at_steps):
            errors.append(
                "schedule: the 'schedule' policy needs at_dataset_sizes or at_steps; "
                "add thresholds or remove it from policies"
            )
        if errors:
            raise ValueError("invalid growth policy: " + "; ".join(errors))
        return self


# Defaults that differ by the job's task kind (``TaskSpec.kind``), laid under whatever the job's
# ``growth`` section sets, so that a job can still set every one of them. Measured on the
# Shakespeare stream (``bench/lm_stream.py``, docs/benchmarks.md, section "Language model"):
# - shrink-and-perturb raised a language model's validation loss by 0.18-0.27 nats each time, and
#   the defaults before ended at 2.365 with it against 2.212 without it;
# - a transformer gains from depth as much as from width: widening and deepening (a whole block) in
#   turn, with a cooldown of 100 steps instead of 300 so that a stream that doubles its text every
#   150 steps can grow at every stage (with 300 the controller let every other doubling pass).
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "language_modeling": {
        "shrink_perturb": {"enabled": False},
        "strategy": "alternate",
        "guards": {"cooldown_steps": 100},
    },
}


def _merged(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` laid on ``base``, section by section (``over`` wins)."""
    out = dict(base)
    for key, value in over.items():
        below = out.get(key)
        if isinstance(value, Mapping) and isinstance(below, Mapping):
            out[key] = _merged(below, value)
        else:
            out[key] = value
    return out


def with_task_defaults(kind: str, growth: Mapping[str, Any] | None) -> dict[str, Any]:
    """The raw ``growth`` section of a job of task ``kind``, with that kind's defaults
    (``TASK_DEFAULTS``) under what it sets: what a job spec names always wins."""
    return _merged(TASK_DEFAULTS.get(kind, {}), growth or {})


def growth_config_for_task(
    kind: str, growth: Mapping[str, Any] | None = None
) -> GrowthPolicyConfig:
    """The validated growth policy of a job of task ``kind`` whose spec sets ``growth``."""
    return GrowthPolicyConfig.model_validate(with_task_defaults(kind, growth))
