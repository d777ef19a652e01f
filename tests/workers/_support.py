"""Helpers shared by the tests that write checkpoints."""

from __future__ import annotations

from typing import Any

from workers.checkpoint import CheckpointMeta
from workers.spec import ModelSpec, OptimizerSpec, TaskSpec


def checkpoint_meta(task: TaskSpec, model: ModelSpec, **fields: Any) -> CheckpointMeta:
    """A checkpoint's metadata for ``model`` on ``task``: every counter 0 unless given."""
    defaults: dict[str, Any] = {
        "job_id": "job",
        "optimizer": OptimizerSpec(),
        "step": 0,
        "generation": 0,
        "generation_step": 0,
        "samples_seen": 0,
        "passes": 0,
        "manifest_version": 0,
        "dataset_size": 0,
        "param_count": 0,
        "world_size": 1,
    }
    return CheckpointMeta(task=task, model=model, **(defaults | fields))
