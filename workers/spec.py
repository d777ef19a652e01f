"""Validated specs for what the workers build and train: the task, the model, the optimizer.

These are the pieces of a job spec that the workers need; the service embeds them in its ``JobSpec``.
Every model is ``extra="forbid"`` so that an unknown key is an error, not a silent default.
"""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_INPUT_ELEMENTS = 1 << 20


class TaskSpec(BaseModel):
    """What is learned: the per-sample input shape and the target."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["classification", "regression"] = "classification"
    input_shape: tuple[int, ...] = Field(
        min_length=1,
        max_length=4,
        description="Per-sample shape: (features,), (C, L) or (C, H, W).",
    )
    num_classes: int | None = Field(default=None, ge=2, le=1_000_000)
    num_outputs: int | None = Field(default=None, ge=1, le=1_000_000)

    @model_validator(mode="after")
    def _target_fits_kind(self) -> Self:
        errors = []
        if any(d < 1 for d in self.input_shape):
            errors.append(f"input_shape {list(self.input_shape)} has a dimension below 1")
        elements = 1
        for d in self.input_shape:
            elements *= d
        if elements > MAX_INPUT_ELEMENTS:
            errors.append(
                f"input_shape has {elements} elements per sample (max {MAX_INPUT_ELEMENTS})"
            )
        if self.kind == "classification":
            if self.num_classes is None:
                errors.append("classification needs 'num_classes' (at least 2)")
            if self.num_outputs is not None:
                errors.append("'num_outputs' is for regression; classification uses 'num_classes'")
        else:
            if self.num_outputs is None:
                errors.append("regression needs 'num_outputs' (at least 1)")
            if self.num_classes is not None:
                errors.append("'num_classes' is for classification; regression uses 'num_outputs'")
        if errors:
            raise ValueError("; ".join(errors))
        return self

    @property
    def output_dim(self) -> int:
        out = self.num_classes if self.kind == "classification" else self.num_outputs
        assert out is not None
        return out

    @property
    def sample_elements(self) -> int:
        n = 1
        for d in self.input_shape:
            n *= d
        return n

    @property
    def metric_name(self) -> str:
        return "accuracy" if self.kind == "classification" else "mse"


class ModelSpec(BaseModel):
    """A model family and its options, e.g. ``{"family": "mlp", "hidden": [64, 64]}``.

    The options are validated by the family's own options model (see ``workers.models``), which is
    where unknown keys are refused; families come only from the built-in registry or from installed
    ``lifelong.models`` entry points, never from code in a request.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    family: str = Field(min_length=1, max_length=64, examples=["mlp", "cnn", "resnet"])

    def options(self) -> dict[str, Any]:
        """The family-specific options (every key but ``family``)."""
        return dict(self.model_extra or {})


class OptimizerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(default=1e-3, gt=0.0, le=10.0)
    weight_decay: float = Field(default=0.0, ge=0.0, le=1.0)
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0, description="sgd only")
    betas: tuple[float, float] = (0.9, 0.999)

    @model_validator(mode="after")
    def _betas_in_range(self) -> Self:
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas {list(self.betas)} must each be in [0, 1)")
        return self


class BudgetSpec(BaseModel):
    """Compute limits; each one unset (None) is no limit. Busy seconds count training time only
    (not the time spent waiting for data, converged or paused)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int | None = Field(default=None, ge=1, description="Optimizer steps.")
    samples: int | None = Field(default=None, ge=1, description="Training samples consumed.")
    flops: float | None = Field(
        default=None, gt=0, description="Estimated FLOPs (training and validation)."
    )
    seconds: float | None = Field(
        default=None, gt=0, description="Busy wall-clock seconds (training, not waiting)."
    )

    @property
    def limited(self) -> bool:
        return any(v is not None for v in (self.steps, self.samples, self.flops, self.seconds))


WakeFrom = Literal["best", "last"]
PatienceUnit = Literal["observations", "samples"]


class ComputeSpec(BaseModel):
    """When a job stops spending compute: convergence on the data it has, and budgets.

    A job has converged on its data when its validation loss has not improved by more than
    ``min_improvement`` (relative to the best) for ``patience`` observations (or samples seen),
    and no new data has arrived since the best. With ``idle_when_converged`` it then waits, using
    no compute, until new data arrives (or a resume or grow command), and trains on from the best
    weights or the last ones (``wake_from``). See docs/workers.md, "Converged: compute that
    follows the data".
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    idle_when_converged: bool = Field(
        default=True, description="False: train without end on the data it has (no idling)."
    )
    patience: int = Field(
        default=10,
        ge=1,
        description="How long without a validation improvement counts as converged, in "
        "'patience_unit's.",
    )
    patience_unit: PatienceUnit = Field(
        default="observations",
        description="'observations' (one every observe_every steps) or 'samples' seen.",
    )
    min_improvement: float = Field(
        default=0.002,
        ge=0.0,
        lt=1.0,
        description="A validation loss below best × (1 - min_improvement) is an improvement.",
    )
    wake_from: WakeFrom = Field(
        default="last",
        description="The weights a converged job holds and trains on from: 'last', or 'best' "
        "(those of the best validation loss since the data last changed, with their optimizer "
        "state; a copy of both is kept). Measured on the clock-driven MNIST-1D stream "
        "(bench/idle.py, docs/benchmarks.md): 'last' ended 0.4 points higher and averaged 0.7 "
        "points higher over the stages, without the copy.",
    )
    budget_per_version: BudgetSpec = Field(
        default_factory=BudgetSpec,
        description="Limits per data version: when spent, the job waits for new data, as when "
        "converged.",
    )
    budget_total: BudgetSpec = Field(
        default_factory=BudgetSpec,
        description="Limits over the job's life: when spent, the job stops.",
    )
    precision: Literal["auto", "bf16", "fp32"] = Field(
        default="auto",
        description="The forward pass's precision (workers.device): 'auto' is bf16 autocast on a "
        "GPU and fp32 elsewhere; 'bf16' and 'fp32' force it. Weights, gradients and optimizer "
        "state stay fp32.",
    )
