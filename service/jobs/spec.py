"""The job spec, and its validation with every problem collected into one answer.

A spec is checked in two layers, and both always run, so that one answer lists every problem:

1. structure: pydantic models with ``extra="forbid"`` (the task, model, optimizer, growth and scaling
   sections, and the top-level fields);
2. meaning: the model family's options against the task (``workers.models``), the base model's
   parameter count against ``growth.guards.max_params``, the scaling against this deployment's
   limits. A cross-check runs when the sections it needs are structurally valid, even when others
   are not.
"""

from __future__ import annotations

from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import ErrorDetails

from growth_policy import GrowthPolicyConfig, with_task_defaults
from workers.spec import (
    ComputeSpec,
    DataSpec,
    ModelSpec,
    OptimizerSpec,
    ReplaySpec,
    TaskSpec,
    replay_problems,
)


class ScalingSpec(BaseModel):
    """How many Ray workers train the job, and what each one gets."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_workers: int = Field(default=1, ge=1, le=1024, description="Ray Train workers (ranks).")
    min_workers: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="Elastic training: go on with as few as this many workers when the cluster "
        "has lost nodes (and grow back to num_workers when they return). Unset: exactly "
        "num_workers, waiting for resources when they are short.",
    )
    use_gpu: bool = Field(default=False, description="One GPU per worker.")
    cpus_per_worker: float = Field(default=1.0, gt=0.0, le=256.0)

    @model_validator(mode="after")
    def _min_not_above_max(self) -> Self:
        if self.min_workers is not None and self.min_workers > self.num_workers:
            raise ValueError(
                f"min_workers ({self.min_workers}) must not exceed num_workers ({self.num_workers})"
            )
        return self


class ReleaseSpec(BaseModel):
    """When trained weights become a registered model version, and when one becomes the champion.

    A release is made at every generation's close (and the job's final checkpoint), and from a
    periodic checkpoint when its validation metric beats the generation's best release so far, at
    most every ``every`` steps and ``every_s`` seconds. ``champion`` moves to a release only when
    its validation metric beats the champion's by more than ``margin``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    every: int = Field(
        default=500, ge=0, description="Steps between periodic releases at least (0: no bound)."
    )
    every_s: float = Field(
        default=60.0, ge=0.0, description="Seconds between periodic releases at least."
    )
    margin: float = Field(
        default=0.005,
        ge=0.0,
        description="How much better (accuracy higher, mse lower) a release's validation metric "
        "must be than the champion's for 'champion' to move to it.",
    )
    periodic: bool = Field(
        default=True, description="Release improving periodic checkpoints, not only closes."
    )


class JobSpec(BaseModel):
    """Everything a job needs to start; stored with the job and never changed afterwards."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._\-]*$",
        description="Shown in listings and used for the MLflow experiment name.",
        examples=["digits"],
    )
    task: TaskSpec
    model: ModelSpec
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    batch_size: int = Field(default=128, ge=1, le=65_536, description="Per worker.")
    val_fraction: float = Field(
        default=0.1,
        ge=0.0,
        le=0.5,
        description="Share of pushed samples held out for validation, chosen by a hash of each "
        "sample's features so that the same sample always lands in the same split.",
    )
    growth: GrowthPolicyConfig = Field(default_factory=GrowthPolicyConfig)
    scaling: ScalingSpec = Field(default_factory=ScalingSpec)
    compute: ComputeSpec = Field(
        default_factory=ComputeSpec,
        description="When the job stops spending compute: it waits for new data once converged "
        "on the data it has (idle_when_converged, patience, min_improvement, wake_from), and "
        "its budgets per data version and in total.",
    )
    release: ReleaseSpec = Field(
        default_factory=ReleaseSpec,
        description="Registered model versions of the trained weights and the 'champion' alias.",
    )
    replay: ReplaySpec = Field(
        default_factory=ReplaySpec,
        description="What each batch holds: a share of the newest samples and replay of the "
        "history (uniform, recency or class_balanced), and the pass length.",
    )
    data: DataSpec = Field(
        default_factory=DataSpec,
        description="Per worker, the bytes of decoded training samples held in memory; beyond "
        "them the history is streamed from the storage root.",
    )
    seed: int = Field(default=0, ge=0, le=2**31 - 1)

    @model_validator(mode="before")
    @classmethod
    def _task_growth_defaults(cls, data: Any) -> Any:
        """The growth defaults of the job's task kind (growth_policy.TASK_DEFAULTS) under what the
        spec's ``growth`` section sets; a section given as a GrowthPolicyConfig is kept as is."""
        if not isinstance(data, dict):
            return data
        task, growth = data.get("task"), data.get("growth")
        kind = task.get("kind") if isinstance(task, dict) else getattr(task, "kind", None)
        if not isinstance(kind, str) or not (growth is None or isinstance(growth, dict)):
            return data
        return {**data, "growth": with_task_defaults(kind, growth)}

    @model_validator(mode="after")
    def _replay_fits(self) -> Self:
        problems = replay_problems(self.task, self.replay, self.data)
        if problems:
            raise ValueError("; ".join(problems))
        return self


class SpecProblem(BaseModel):
    """One problem in a request: where (dotted path) and what to change."""

    model_config = ConfigDict(frozen=True)

    loc: str = Field(examples=["task.num_classes"])
    msg: str = Field(examples=["classification needs 'num_classes' (at least 2)"])


class SpecError(ValueError):
    """A job spec with problems; ``problems`` lists all of them."""

    def __init__(self, problems: list[SpecProblem]) -> None:
        self.problems = problems
        super().__init__(describe(problems))


def describe(problems: list[SpecProblem]) -> str:
    parts = [f"{p.loc}: {p.msg}" if p.loc else p.msg for p in problems]
    noun = "problem" if len(problems) == 1 else "problems"
    return f"invalid job spec ({len(problems)} {noun}): " + "; ".join(parts)


def _problem(error: ErrorDetails, fields: dict[str, Any] | None = None) -> SpecProblem:
    loc = ".".join(str(part) for part in error["loc"])
    msg = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        msg = f"unknown key '{error['loc'][-1]}'"
        if fields is not None and len(error["loc"]) == 1:
            msg += f" (allowed: {', '.join(fields)})"
    elif error["type"] == "missing":
        msg = "required"
    return SpecProblem(loc=loc, msg=msg)


def _section(model: type[BaseModel], raw: dict[str, Any], name: str) -> Any:
    """The section ``name`` validated alone, or None when it is absent or invalid."""
    if name not in raw:
        return None
    try:
        return model.model_validate(raw[name])
    except ValidationError:
        return None


def validate_job_spec(raw: Any, *, max_workers: int) -> JobSpec:
    """A validated :class:`JobSpec` from a decoded JSON body, or :class:`SpecError` with all problems."""
    if not isinstance(raw, dict):
        raise SpecError([SpecProblem(loc="", msg="the job spec must be a JSON object")])
    problems: list[SpecProblem] = []
    spec: JobSpec | None = None
    try:
        spec = JobSpec.model_validate(raw)
    except ValidationError as exc:
        problems += [_problem(e, dict(JobSpec.model_fields)) for e in exc.errors()]

    task: TaskSpec | None = spec.task if spec else _section(TaskSpec, raw, "task")
    model: ModelSpec | None = spec.model if spec else _section(ModelSpec, raw, "model")
    growth: GrowthPolicyConfig | None
    if spec:
        growth = spec.growth
    elif "growth" in raw:
        growth = _section(GrowthPolicyConfig, raw, "growth")
    else:
        growth = GrowthPolicyConfig()
    scaling: ScalingSpec | None
    if spec:
        scaling = spec.scaling
    elif "scaling" in raw:
        scaling = _section(ScalingSpec, raw, "scaling")
    else:
        scaling = ScalingSpec()

    if task is not None and model is not None:
        problems += _check_model(model, task, growth)
    if scaling is not None and scaling.num_workers > max_workers:
        problems.append(
            SpecProblem(
                loc="scaling.num_workers",
                msg=f"{scaling.num_workers} workers asked, this deployment allows at most "
                f"{max_workers} (LIFELONG_MAX_WORKERS_PER_JOB)",
            )
        )
    if problems:
        raise SpecError(problems)
    assert spec is not None
    return spec


def _check_model(
    model: ModelSpec, task: TaskSpec, growth: GrowthPolicyConfig | None
) -> list[SpecProblem]:
    from workers.models import ModelSpecError, estimate_param_count, validate_model_spec

    try:
        validate_model_spec(model, task)
    except ModelSpecError as exc:
        return [SpecProblem(loc="model", msg=msg) for msg in exc.errors]
    if growth is None:
        return []
    params = estimate_param_count(model, task)
    limit = growth.guards.max_params
    if params > limit:
        return [
            SpecProblem(
                loc="model",
                msg=f"the base model has {params:,} parameters, above growth.guards.max_params "
                f"= {limit:,}; make the model smaller or raise the limit",
            )
        ]
    memory = growth.memory
    if memory.budget_gb is not None:
        from growth_policy.shape import estimate_memory_bytes

        # Weights, gradients and optimizer state alone (activations left out): a lower bound.
        need = estimate_memory_bytes(
            params,
            0,
            batch_size=memory.batch_size,
            bytes_per_value=memory.bytes_per_value,
            optimizer_slots=memory.optimizer_slots,
        )
        if need > memory.budget_gb * 2**30:
            return [
                SpecProblem(
                    loc="model",
                    msg=f"the base model needs at least {need / 2**30:.2f} GiB to train "
                    "(weights, gradients and optimizer state), above growth.memory.budget_gb "
                    f"= {memory.budget_gb:g}; make the model smaller or raise the budget",
                )
            ]
    return []


def base_param_count(spec: JobSpec) -> int:
    """Parameters of the job's generation-0 model (built on the meta device: no memory)."""
    from workers.models import estimate_param_count

    return estimate_param_count(spec.model, spec.task)
