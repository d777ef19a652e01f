"""The supervisor as a Ray actor: its configuration, its namespace, and the actor class.

Why a detached named actor and not a Ray job: Ray's Jobs API runs an entrypoint once "to completion
or failure" and leaves retries to the submitter, whereas a detached actor outlives the API process
that created it, is found again by name (so a restarted API re-attaches instead of starting a second
one), and is restarted by Ray itself (``max_restarts=-1``) when its process or node dies. It also has
to answer calls: rank 0 of the train loop asks it for a decision every few steps (through
``workers.sources.ActorSource``), which a Ray job's driver cannot serve.

The body of the actor is :class:`service.runtime.supervisor.JobSupervisor`, imported when the
actor class is made (Ray is imported lazily: the API may run without it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field

from growth_policy import GrowthOp, Observation
from workers.sources import CheckpointEvent, Directive, GrowthEvent, LoopStatus

ACTOR_NAMESPACE = "lifelong"
_F = TypeVar("_F", bound=Callable[..., Any])


class SupervisorConfig(BaseModel):
    """What a supervisor needs to find its job and its parts; travels to the actor."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str
    redis_url: str
    key_prefix: str
    data_root: str = Field(description="Storage root of the shards (and durable checkpoints).")
    ray_storage: str = Field(description="Ray Train's storage_path for the job's runs.")
    mlflow_uri: str
    events_maxlen: int = 10_000
    commands_maxlen: int = 10_000
    lease_ttl_ms: int = Field(default=15_000, ge=1000)
    max_failures: int = Field(default=3, ge=-1, description="Ray Train worker failures per fit.")
    max_restarts: int = Field(
        default=5, ge=0, description="Fits that may fail in a row before the job is failed."
    )
    stall_after_s: float = Field(
        default=90.0, gt=0, description="Silence from the workers after which the status says so."
    )
    observe_every: int = Field(default=50, ge=1)
    checkpoint_every: int = Field(default=500, ge=0)
    experiment_prefix: str = "lifelong"


def actor_restarted() -> bool:
    """Whether this process is a supervisor actor that Ray restarted after a failure."""
    try:
        import ray

        return bool(ray.get_runtime_context().was_current_actor_reconstructed)
    except Exception:
        return False


def actor_class() -> Any:
    """The Ray actor class of the supervisor."""
    import ray

    from service.runtime.supervisor import JobSupervisor

    in_loop = cast(Callable[[_F], _F], ray.method(concurrency_group="loop"))

    # The loop's calls run one at a time, in the order rank 0 sent them (a growth event before
    # the next observation); introspection has its own threads.
    @ray.remote(
        num_cpus=0,
        max_restarts=-1,
        max_task_retries=-1,
        max_concurrency=4,
        concurrency_groups={"loop": 1},
    )
    class SupervisorActor:
        def __init__(self, config: SupervisorConfig) -> None:
            handle = ray.get_runtime_context().current_actor
            self.sup = JobSupervisor(config, handle=handle)
            self.sup.start()

        @in_loop
        def decide(self, observation: Observation) -> Directive:
            return self.sup.decide(observation)

        @in_loop
        def poll(self, status: LoopStatus) -> Directive:
            return self.sup.poll(status)

        @in_loop
        def on_status(self, status: LoopStatus) -> None:
            self.sup.on_status(status)

        @in_loop
        def on_growth(self, event: GrowthEvent) -> None:
            self.sup.on_growth(event)

        @in_loop
        def on_checkpoint(self, event: CheckpointEvent) -> None:
            self.sup.on_checkpoint(event)

        @in_loop
        def on_growth_failed(self, op: GrowthOp, step: int, error: str) -> None:
            self.sup.on_growth_failed(op, step, error)

        @in_loop
        def state_dict(self) -> dict[str, Any]:
            return self.sup.state_dict()

        @in_loop
        def load_state_dict(self, state: dict[str, Any]) -> None:
            self.sup.load_state_dict(state)

        def info(self) -> dict[str, Any]:
            return self.sup.info()

    return SupervisorActor
