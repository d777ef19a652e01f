"""The values that cross between the workers and the growth controller.

Workers produce an :class:`Observation` every few steps; the controller answers with a
:class:`Decision`, which may carry a :class:`GrowthOp` for the workers to apply with ``net2net``. All
three are JSON-serialisable pydantic models, because they travel between processes (Ray, Redis) and
are shown to users in the event stream and in MLflow.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

GrowthKind = Literal["widen", "deepen", "shrink_perturb", "add_classes"]


class Observation(BaseModel):
    """What rank 0 reports about training, every ``observe_every`` steps."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    step: int = Field(
        ge=0, description="Optimizer steps since the job started, across generations."
    )
    generation: int = Field(ge=0, description="0 for the base model, +1 per growth.")
    generation_step: int = Field(ge=0, description="Optimizer steps since this generation began.")
    samples_seen: int = Field(ge=0, description="Training samples consumed since the job started.")
    passes: float = Field(
        ge=0, description="Passes over the training set seen so far (fractional)."
    )
    dataset_size: int = Field(ge=0, description="Training samples in the manifest snapshot.")
    val_size: int = Field(ge=0, default=0, description="Validation samples in the snapshot.")
    dataset_version: int = Field(ge=0, default=0)
    train_loss: float = Field(description="Smoothed (EMA) training loss.")
    val_loss: float | None = None
    val_metric: float | None = None
    metric_name: str = Field(
        default="accuracy",
        description="'accuracy' (higher is better), 'mse' or 'perplexity' (lower is better).",
    )
    data_unit: Literal["samples", "tokens"] = Field(
        default="samples",
        description="What samples_seen, dataset_size and val_size count: 'tokens' for a "
        "language-modelling job.",
    )
    param_count: int = Field(ge=0)
    throughput: float = Field(ge=0, default=0.0, description="Training samples per second.")
    wall_time: float = Field(default=0.0, description="Unix time of the observation.")
    summary: dict[str, Any] | None = Field(
        default=None,
        description="net2net.summarize() of the current model: width groups, parameter dims, "
        "deepen candidates. Lets the controller predict parameter counts without the model.",
    )
    group_signals: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="Per width group, named saturation signals (measured by workers.signals).",
    )
    compute: dict[str, Any] = Field(
        default_factory=dict,
        description="Compute spent so far (workers.compute.ComputeMeter.snapshot): steps, samples, "
        "flops, busy_s, elapsed_s, duty_cycle, per_generation, per_version. Not kept in the "
        "controller's history.",
    )
    slices: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="Per slice of the validation set (the samples of one data version, merged "
        "with the next until large enough; workers.slices): loss, metric, best metric and "
        "samples, for at most 8 slices (the newest, the oldest, the most forgotten, others "
        "spread evenly).",
    )
    slice_count: int = Field(default=0, ge=0, description="Slices in the validation set.")
    forgetting: float | None = Field(
        default=None, description="The largest drop of an old slice's metric since its best."
    )
    average_forgetting: float | None = Field(
        default=None, description="The mean drop of the old slices' metric since their best."
    )
    backward_transfer: float | None = Field(
        default=None,
        description="Mean change of the old slices' metric since each was the newest "
        "(Lopez-Paz and Ranzato, 2017; negative: forgetting).",
    )
    drift: float | None = Field(
        default=None,
        description="The newest slice's validation loss over the older slices' (1: as hard as "
        "the history; above: new data the model has not learned yet).",
    )

    @property
    def higher_is_better(self) -> bool:
        """Whether a larger ``val_metric`` is better: accuracy only (mse and perplexity fall)."""
        return self.metric_name == "accuracy"


class GrowthOp(BaseModel):
    """One growth transform, in the vocabulary of ``net2net`` (plus shrink-and-perturb)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    op: GrowthKind
    factor: float | None = Field(
        default=None,
        gt=1.0,
        allow_inf_nan=False,
        description="widen: every group ×factor.",
    )
    widths: dict[str, Annotated[int, Field(ge=1)]] | None = Field(
        default=None, description="widen: group name → width."
    )
    init: str = Field(default="net2net", description="widen: how new units start (net2net init=).")
    noise: float = Field(default=0.0, ge=0.0)
    split: Literal["equal", "random"] = "equal"
    after: str | None = Field(default=None, description="deepen: module to insert after.")
    style: Literal["auto", "identity", "residual", "block", "stack"] = Field(
        default="auto",
        description="deepen: net2net.deepen(style=...). 'auto': a whole block after a block "
        "that a copy with zeroed output projections keeps exact (a pre-norm transformer block), "
        "an identity layer elsewhere; 'block', 'identity', 'residual', or 'stack' (a plain copy "
        "of the block: not exact).",
    )
    shrink: float = Field(default=1.0, gt=0.0, le=1.0, description="shrink_perturb: θ ← λθ + σε.")
    perturb: float = Field(default=0.0, ge=0.0)
    classes: int | None = Field(
        default=None, ge=2, description="add_classes: the head's new number of outputs."
    )
    seed: int = 0

    @model_validator(mode="after")
    def _arguments_fit_the_op(self) -> Self:
        errors = []
        if self.op == "widen" and (self.factor is None) == (self.widths is None):
            errors.append("widen needs exactly one of 'factor' or 'widths'")
        if self.op == "widen" and self.widths is not None and not self.widths:
            errors.append("widen 'widths' must name at least one group")
        if self.op == "deepen" and not self.after:
            errors.append("deepen needs 'after', the name of the module to insert after")
        if (self.op == "add_classes") != (self.classes is not None):
            errors.append("'classes' is for add_classes, and add_classes needs it")
        if self.op == "shrink_perturb" and self.shrink == 1.0 and self.perturb == 0.0:
            errors.append("shrink_perturb with shrink=1 and perturb=0 does nothing")
        if errors:
            raise ValueError("; ".join(errors))
        return self

    def widen_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``net2net.widen`` for this op:
        ``net2net.widen(model, example, **op.widen_kwargs())``. Raises ValueError for another op."""
        if self.op != "widen":
            raise ValueError(f"widen_kwargs: this is a {self.op!r} op, not a widen")
        return {
            "factor": self.factor,
            "widths": None if self.widths is None else dict(self.widths),
            "init": self.init,
            "noise": self.noise,
            "split": self.split,
            "seed": self.seed,
        }


class GrowthRequest(BaseModel):
    """A manual growth queued in the controller and not yet decided (see ``Controller.request``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, description="Names the request in the decision that answers it.")
    op: GrowthOp | None = Field(
        default=None, description="None: the controller chooses what and where by its strategy."
    )
    reason: str = Field(default="requested", description="Quoted in the decision's reason.")


class Decision(BaseModel):
    """The controller's answer to an observation: grow (with ``op``) or not, and why."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    step: int = Field(ge=0)
    op: GrowthOp | None = Field(default=None, description="None: no growth now.")
    policy: str = Field(description="What decided: a policy name, a guard, or 'manual'.")
    reason: str = Field(description="Human-readable, with the numbers that led to it.")
    numbers: dict[str, float | int | str] = Field(
        default_factory=dict, description="The same numbers, machine-readable."
    )
    notable: bool = Field(
        default=True,
        description="Worth an event: a growth, a refusal, or a change of state. Routine "
        "'nothing to do' answers are not notable.",
    )
    request_id: str | None = Field(
        default=None,
        description="The id of the queued request this decision answers (a manual growth or a "
        "manual refusal); None for every other decision.",
    )

    @property
    def grows(self) -> bool:
        return self.op is not None
