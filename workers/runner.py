"""Run one job's trainer on Ray: ``run_trainer(settings)`` builds the ``TorchTrainer`` and fits it.

``fit()`` returns when the loop stops (its decision source said stop) or when the run fails more
than ``max_failures`` times. A run with the same ``run_name`` and ``storage_path`` as an earlier one
resumes from that run's latest checkpoint: that is how a job goes on after its supervisor restarts.

Ray must already be initialised (``ray.init(...)``) or the trainer initialises a local instance.
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from workers.checkpoint import run_name as run_name_for  # the service imports it from here
from workers.loop import WorkerConfig, train_loop_per_worker

HEALTH_CHECK_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"

__all__ = ["HEALTH_CHECK_ENV", "TrainerSettings", "make_trainer", "run_name_for", "run_trainer"]


class TrainerSettings(BaseModel):
    """How to run a job's loop on Ray: the loop's config plus scaling and run settings."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    worker: WorkerConfig
    num_workers: int = Field(default=1, ge=1)
    min_workers: int | None = Field(
        default=None, ge=1, description="Elastic: as few as this many workers when short."
    )
    use_gpu: bool = False
    resources_per_worker: dict[str, float] | None = Field(
        default=None, description="e.g. {'CPU': 1}; None: Ray Train's default (1 CPU or 1 GPU)."
    )
    storage_path: str = Field(description="Ray Train's run storage: a folder or a URI.")
    run_name: str | None = Field(
        default=None, description="None: workers.checkpoint.run_name(job_id)."
    )
    max_failures: int = Field(
        default=3, ge=-1, description="Worker failures to recover from (-1: no limit)."
    )
    num_to_keep: int | None = Field(
        default=2, ge=1, description="Ray Train checkpoints kept (durable copies are separate)."
    )
    health_check_interval_s: float = Field(
        default=0.2,
        gt=0,
        description="Ray Train's poll interval; its default (2 s) makes every report() take ~2 s. "
        f"Applied through ${HEALTH_CHECK_ENV} unless that is set already.",
    )
    collective_timeout_s: int = Field(
        default=1800, ge=10, description="torch.distributed timeout (TorchConfig.timeout_s)."
    )

    @property
    def name(self) -> str:
        return self.run_name or run_name_for(self.worker.job_id)


def make_trainer(settings: TrainerSettings) -> Any:
    """The ``ray.train.torch.TorchTrainer`` for a job (not started)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    os.environ.setdefault(HEALTH_CHECK_ENV, str(settings.health_check_interval_s))
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=settings.worker.as_loop_config(),
        torch_config=TorchConfig(timeout_s=settings.collective_timeout_s),
        scaling_config=ScalingConfig(
            num_workers=(
                (settings.min_workers, settings.num_workers)
                if settings.min_workers is not None and settings.min_workers < settings.num_workers
                else settings.num_workers
            ),
            use_gpu=settings.use_gpu,
            resources_per_worker=settings.resources_per_worker,
        ),
        run_config=RunConfig(
            name=settings.name,
            storage_path=settings.storage_path,
            failure_config=FailureConfig(max_failures=settings.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=settings.num_to_keep),
        ),
    )


def run_trainer(settings: TrainerSettings) -> Any:
    """Fit the job's trainer; returns Ray Train's ``Result`` when the loop has stopped."""
    return make_trainer(settings).fit()
