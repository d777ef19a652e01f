"""What the store keeps, as typed records (the domain's view; the API's views are in ``models``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.jobs.spec import JobSpec
from service.state.states import CommandKind, CommandStatus, EventType, JobStatus


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetSummary(_Record):
    """The totals of a job's manifest."""

    version: int = Field(ge=0, description="Bumped by every accepted push.", examples=[3])
    train_samples: int = Field(ge=0, examples=[5400])
    val_samples: int = Field(ge=0, examples=[600])
    shards: int = Field(ge=0, examples=[6])
    bytes: int = Field(ge=0, description="Size of the shard files.", examples=[1_652_000])
    updated: float | None = Field(default=None, description="Unix time of the last append.")

    @property
    def samples(self) -> int:
        return self.train_samples + self.val_samples


class JobRecord(_Record):
    id: str
    name: str
    spec: JobSpec
    status: JobStatus
    reason: str | None = None
    generation: int = 0
    param_count: int | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    created: float
    updated: float


class PushRecord(_Record):
    """The answer to an accepted push; kept under its Idempotency-Key to answer retries."""

    version: int = Field(ge=1, description="The dataset version this push created.")
    accepted: int = Field(ge=1)
    accepted_train: int = Field(ge=0)
    accepted_val: int = Field(ge=0)
    train_samples: int = Field(ge=0, description="Training samples in the dataset after it.")
    val_samples: int = Field(ge=0)
    shards: int = Field(ge=0, description="Shards in the dataset after it.")
    shard_ids: list[str]


class CommandRecord(_Record):
    id: str
    kind: CommandKind
    args: dict[str, Any] = Field(default_factory=dict)
    status: CommandStatus
    detail: str | None = None
    result: dict[str, Any] | None = None
    created: float
    updated: float
    stream_id: str


class EventRecord(_Record):
    id: str = Field(description="The Redis stream id; resume after it with Last-Event-ID.")
    type: EventType
    time: float
    data: dict[str, Any]
