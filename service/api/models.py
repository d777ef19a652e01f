"""Request and response models of the REST API (separate classes, as the OpenAPI schema shows)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from service.jobs.spec import JobSpec, SpecProblem
from service.settings import Role
from service.state.access import KeyRecord
from service.state.records import CommandRecord, DatasetSummary, EventRecord, JobRecord, PushRecord
from service.state.states import CommandKind, CommandStatus, EventType, JobStatus
from workers.shards import ShardInfo

MAX_NEW_TOKENS = 1024  # tokens one generate request may ask for
MAX_SCORED_TEXTS = 64  # texts one predict request may score
JOB_EXAMPLE: dict[str, Any] = {
    "name": "digits",
    "task": {"kind": "classification", "input_shape": [64], "num_classes": 10},
    "model": {"family": "mlp", "hidden": [32, 32]},
    "optimizer": {"name": "adam", "lr": 0.001},
    "batch_size": 128,
    "val_fraction": 0.1,
    "growth": {"policies": ["data_scaling"], "strategy": "widen"},
    "scaling": {"num_workers": 2},
}


class _Public(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(_Public):
    """Every 4xx and 5xx answer."""

    detail: str = Field(description="What is wrong, and what to change.")
    errors: list[SpecProblem] | None = Field(
        default=None, description="One entry per problem, when a request has several."
    )


class JobCreate(JobSpec):
    """A job spec (POST /v1/jobs). Every problem in it comes back in one 422 answer."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, json_schema_extra={"examples": [JOB_EXAMPLE]}
    )


class DatasetPublic(_Public):
    version: int = Field(description="Bumped by every accepted push.", examples=[3])
    train_samples: int = Field(examples=[5400])
    val_samples: int = Field(examples=[600])
    samples: int = Field(examples=[6000])
    shards: int = Field(examples=[6])
    bytes: int = Field(description="Size of the shard files.", examples=[1_652_000])
    updated: float | None = Field(default=None, description="Unix time of the last push.")

    @classmethod
    def of(cls, summary: DatasetSummary) -> DatasetPublic:
        return cls(**summary.model_dump(), samples=summary.samples)


class JobPublic(_Public):
    id: str = Field(examples=["job_4f2a9c1e0b7d4e21"])
    name: str = Field(examples=["digits"])
    status: JobStatus
    reason: str | None = Field(
        default=None, description="Why the job is in its status (always set when failed)."
    )
    generation: int = Field(description="0 for the base model, +1 per growth.", examples=[0])
    param_count: int | None = Field(description="Parameters of the current model.")
    dataset: DatasetPublic
    metrics: dict[str, Any] = Field(
        description="The latest observation's numbers: step, train_loss, val_loss, val_metric, "
        "throughput, dataset_size, ... (empty before training)."
    )
    created: float
    updated: float
    spec: JobSpec

    @classmethod
    def of(cls, job: JobRecord, dataset: DatasetSummary) -> JobPublic:
        return cls(
            id=job.id,
            name=job.name,
            status=job.status,
            reason=job.reason,
            generation=job.generation,
            param_count=job.param_count,
            dataset=DatasetPublic.of(dataset),
            metrics=job.metrics,
            created=job.created,
            updated=job.updated,
            spec=job.spec,
        )


class JobList(_Public):
    jobs: list[JobPublic]
    total: int = Field(description="Jobs in this deployment.")
    offset: int
    limit: int


class JobDeleted(_Public):
    """The answer to DELETE /v1/jobs/{id}: what was removed, and what was kept."""

    job_id: str
    status: JobStatus = Field(description="The status the job had: stopped or failed.")
    redis_keys: int = Field(description="Redis keys removed besides the job's own record.")
    data_removed: bool = Field(description="Whether the job's shard folder was removed.")
    checkpoints_removed: bool = Field(description="Whether its Ray Train run folder was removed.")
    kept: str = Field(
        default="the MLflow experiment, its runs and the registered model versions",
        description="What deleting a job leaves in place.",
    )


class PushResult(_Public):
    """The answer to an accepted push (and, unchanged, to each retry with its Idempotency-Key)."""

    job_id: str
    accepted: int = Field(description="Samples stored by this push.", examples=[1000])
    accepted_train: int = Field(examples=[903])
    accepted_val: int = Field(examples=[97])
    version: int = Field(description="The dataset version this push created.", examples=[4])
    train_samples: int = Field(description="Training samples in the dataset now.", examples=[3610])
    val_samples: int = Field(examples=[390])
    samples: int = Field(examples=[4000])
    shards: int = Field(description="Shards in the dataset now.", examples=[8])
    shard_ids: list[str] = Field(description="The shards this push wrote (one per split).")

    @classmethod
    def of(cls, job_id: str, push: PushRecord) -> PushResult:
        return cls(
            job_id=job_id,
            **push.model_dump(),
            samples=push.train_samples + push.val_samples,
        )


class DatasetDetail(DatasetPublic):
    """GET /v1/jobs/{id}/data: the manifest's totals and a page of its shards."""

    job_id: str
    offset: int = Field(description="Index of the first shard in 'items'.")
    items: list[ShardInfo] = Field(description="Shards in append order, each with its version.")


class CommandPublic(_Public):
    id: str = Field(examples=["cmd_8d0c52a4e1f34b7a"])
    job_id: str
    kind: CommandKind
    args: dict[str, Any] = Field(description="For 'grow': the growth op.")
    status: CommandStatus
    detail: str | None = Field(default=None, description="The outcome, in words.")
    result: dict[str, Any] | None = Field(default=None, description="The outcome, as data.")
    created: float
    updated: float

    @classmethod
    def of(cls, job_id: str, command: CommandRecord) -> CommandPublic:
        return cls(job_id=job_id, **command.model_dump(exclude={"stream_id"}))


class CommandList(_Public):
    commands: list[CommandPublic] = Field(description="Newest first.")


class EventPublic(_Public):
    """The ``data:`` of each Server-Sent Event (its ``id:`` and ``event:`` repeat id and type)."""

    id: str = Field(description="Redis stream id; send it back as Last-Event-ID to resume.")
    type: EventType
    time: float
    data: dict[str, Any]

    @classmethod
    def of(cls, event: EventRecord) -> EventPublic:
        return cls(**event.model_dump())


class Health(_Public):
    status: str = Field(examples=["ok"])


class Readiness(_Public):
    status: str = Field(examples=["ready"])
    checks: dict[str, str] = Field(examples=[{"redis": "ok (0.3 ms)"}])


class GenerationPublic(_Public):
    """One generation of a job's model: how it came to be, and where it is tracked."""

    generation: int = Field(examples=[1])
    parent: int | None = Field(examples=[0])
    op: dict[str, Any] | None = Field(
        description="The growth that opened it (None for the base model).",
        examples=[{"op": "widen", "factor": 2.0, "init": "random_zero"}],
    )
    policy: str = Field(examples=["data_scaling"])
    reason: str = Field(examples=["dataset 4,000 samples wants 10k parameters: widening ×2"])
    started_step: int
    closed_step: int | None
    param_count: int | None
    max_abs_error: float | None = Field(description="Measured preservation error of the growth.")
    val_metric_before: float | None
    val_metric_after: float | None
    metrics: dict[str, Any] = Field(description="The latest (or, once closed, final) metrics.")
    checkpoint_step: int | None
    mlflow_run_id: str | None
    model_version: str | None = Field(description="The registered MLflow model version.")


class GenerationList(_Public):
    job_id: str
    experiment: str | None = Field(description="The job's MLflow experiment id.")
    model_name: str | None = Field(description="The job's registered MLflow model.")
    generations: list[GenerationPublic]


class PredictRequest(_Public):
    """Predictions for a batch of samples; for a language-modelling job, the scores of texts
    (``texts``, or ``ids`` for tokenizer 'ids'): one of the three."""

    features: list[Any] | None = Field(
        default=None,
        min_length=1,
        description="A batch of samples, each in the job's input shape (or flattened).",
        examples=[[[0.0, 0.5, 1.0, 0.25]]],
    )
    texts: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_SCORED_TEXTS,
        description="Language modelling: texts to score (loss and perplexity of each).",
        examples=[["To be, or not to be"]],
    )
    ids: list[list[int]] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_SCORED_TEXTS,
        description="Language modelling: token id sequences to score (tokenizer 'ids').",
    )
    generation: int | None = Field(
        default=None,
        ge=0,
        description="A given generation (its 'generation-N' release: its final one once it "
        "closed); default the 'champion'. Before any release, the newest checkpoint serves.",
    )


class PredictResult(_Public):
    generation: int
    step: int = Field(description="The training step of the checkpoint that answered.")
    release: int | None = Field(
        default=None, description="The release that answered (None: the newest checkpoint)."
    )
    version: str | None = Field(
        default=None, description="Its registered model version, once MLflow has it."
    )
    alias: str | None = Field(
        default=None, description="The alias it answered as: 'champion' or 'generation-N'."
    )
    kind: str = Field(examples=["classification"])
    predictions: list[Any] = Field(
        description="Class indices (classification), output vectors (regression), or for "
        "language modelling one score per text: {tokens, loss (mean nats per predicted token), "
        "perplexity}."
    )
    probabilities: list[list[float]] | None = Field(
        default=None, description="Classification: softmax probabilities per class."
    )
    class_names: list[str | None] | None = Field(
        default=None,
        description="Classification with task.class_names: the name of each predicted class "
        "(None for a class without a name).",
    )


class GenerateRequest(_Public):
    """POST /v1/jobs/{id}/generate: text from a language-modelling job's model."""

    prompt: str | None = Field(
        default=None,
        description="The text to continue (tokenizer 'bytes'); or give 'prompt_ids'.",
        examples=["ROMEO:"],
    )
    prompt_ids: list[int] | None = Field(
        default=None, description="The token ids to continue, instead of 'prompt'."
    )
    max_new_tokens: int = Field(
        default=100, ge=1, le=MAX_NEW_TOKENS, description="How many tokens to generate."
    )
    temperature: float = Field(
        default=1.0,
        ge=0.0,
        le=100.0,
        description="Softmax temperature; 0 takes the most likely token each time (greedy).",
    )
    top_k: int | None = Field(
        default=None, ge=1, description="Sample among the k most likely tokens only."
    )
    seed: int | None = Field(
        default=None,
        ge=0,
        le=2**63 - 1,
        description="Makes the sampling repeatable: the same seed, prompt and model give the "
        "same tokens.",
    )
    generation: int | None = Field(
        default=None,
        ge=0,
        description="A given generation (its 'generation-N' release); default the 'champion', "
        "as for predict. Before any release, the newest checkpoint serves.",
    )
    stream: bool = Field(
        default=False,
        description="Answer as Server-Sent Events, one per token (as 'Accept: "
        "text/event-stream' does).",
    )


class GeneratedToken(_Public):
    """One event of a streamed generation (event type 'token')."""

    index: int = Field(description="0 for the first new token.")
    id: int = Field(description="The token id.")
    text: str = Field(
        description="The text this token completes: for tokenizer 'bytes' the characters "
        "finished by this byte (empty inside a multi-byte character)."
    )


class GenerateResult(_Public):
    """The generation's answer (JSON), and the data of a stream's final event ('done')."""

    generation: int
    step: int = Field(description="The training step of the checkpoint that answered.")
    release: int | None = Field(default=None, description="The release that answered.")
    version: str | None = Field(default=None, description="Its registered model version.")
    alias: str | None = Field(default=None, description="'champion' or 'generation-N'.")
    prompt_tokens: int = Field(description="Tokens in the prompt.")
    ids: list[int] = Field(description="The new token ids.")
    text: str = Field(description="The new tokens as text (without the prompt).")


class KeyCreate(_Public):
    """A new API key (POST /v1/keys): its role, and optionally its scope and limits."""

    role: Role = Field(description="admin, writer or reader: what the key may do in its scope.")
    name: str = Field(default="", max_length=100, description="A label, e.g. who holds the key.")
    tenant: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,63}$",
        description="Limit the key to the jobs of this tenant and its sub-tenants "
        "('team-a' covers 'team-a/vision'); jobs it creates join the tenant.",
        examples=["team-a"],
    )
    jobs: list[Annotated[str, Field(pattern=r"^job_[0-9a-f]{16}$")]] | None = Field(
        default=None,
        max_length=1000,
        description="Limit the key to these jobs (and those it creates itself); [] for none yet.",
    )
    requests_per_s: int | None = Field(
        default=None, ge=1, le=1_000_000, description="Its own LIFELONG_KEY_REQUESTS_PER_S."
    )
    bytes_per_min: int | None = Field(
        default=None, ge=1024, le=2**50, description="Its own LIFELONG_KEY_BYTES_PER_MIN."
    )


class KeyPublic(_Public):
    """An API key as listed (never the key itself)."""

    id: str = Field(examples=["key_3f9c2a7d1e5b8c04"])
    role: Role
    name: str
    tenant: str | None
    jobs: list[str] | None = Field(description="The jobs of a key limited to a set of jobs.")
    requests_per_s: int | None
    bytes_per_min: int | None
    created: float
    created_by: str = Field(description="The id of the key that created it.")

    @classmethod
    def of(cls, record: KeyRecord, jobs: list[str]) -> KeyPublic:
        data = record.model_dump(exclude={"jobs"})
        return cls(**data, jobs=jobs if record.jobs else None)


class KeyCreated(KeyPublic):
    key: str = Field(
        description="The key: shown this once and never again (only its digest is kept). Send "
        "it as 'Authorization: Bearer <key>'."
    )


class KeyList(_Public):
    keys: list[KeyPublic]


class KeyRevoked(_Public):
    id: str
    revoked: bool = True
