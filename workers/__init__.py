"""workers: what runs on the Ray workers.

Model families and their validation (``workers.models``), the job's data as shards and manifests
(``workers.shards``) read through ``workers.reader``, the continuous train loop
(``workers.loop.train_loop_per_worker``) and its decision sources (``workers.sources``),
checkpoints (``workers.checkpoint``) and the entry point that runs a job's trainer
(``workers.runner.run_trainer``). See ``docs/workers.md``.

The names below are imported on first use, so ``import workers.spec`` (what the service needs to
validate a job spec) loads neither torch nor Ray.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workers.checkpoint import (
        CheckpointMeta,
        LoadedCheckpoint,
        load_checkpoint,
        read_meta,
        verify_checkpoint,
    )
    from workers.loop import WorkerConfig, train_loop_per_worker
    from workers.models import (
        Family,
        ModelSpecError,
        build_model,
        estimate_param_count,
        families,
        register_family,
        validate_model_spec,
    )
    from workers.reader import DataReader
    from workers.runner import TrainerSettings, make_trainer, run_trainer
    from workers.shards import FileManifest, Manifest, ManifestSource, ShardInfo, ShardStore
    from workers.sources import (
        ActorSource,
        BaseSource,
        CheckpointEvent,
        ControllerSource,
        DecisionSource,
        Directive,
        GrowthEvent,
        GrowthFailure,
        JsonlRecorder,
        LoopStatus,
        ScriptedAction,
        ScriptedSource,
    )
    from workers.spec import ModelSpec, OptimizerSpec, TaskSpec

_EXPORTS = {
    "workers.checkpoint": [
        "CheckpointMeta",
        "LoadedCheckpoint",
        "load_checkpoint",
        "read_meta",
        "verify_checkpoint",
    ],
    "workers.loop": ["WorkerConfig", "train_loop_per_worker"],
    "workers.models": [
        "Family",
        "ModelSpecError",
        "build_model",
        "estimate_param_count",
        "families",
        "register_family",
        "validate_model_spec",
    ],
    "workers.reader": ["DataReader"],
    "workers.runner": ["TrainerSettings", "make_trainer", "run_trainer"],
    "workers.shards": ["FileManifest", "Manifest", "ManifestSource", "ShardInfo", "ShardStore"],
    "workers.sources": [
        "ActorSource",
        "BaseSource",
        "CheckpointEvent",
        "ControllerSource",
        "DecisionSource",
        "Directive",
        "GrowthEvent",
        "GrowthFailure",
        "JsonlRecorder",
        "LoopStatus",
        "ScriptedAction",
        "ScriptedSource",
    ],
    "workers.spec": ["ModelSpec", "OptimizerSpec", "TaskSpec"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "ActorSource",
    "BaseSource",
    "CheckpointEvent",
    "CheckpointMeta",
    "ControllerSource",
    "DataReader",
    "DecisionSource",
    "Directive",
    "Family",
    "FileManifest",
    "GrowthEvent",
    "GrowthFailure",
    "JsonlRecorder",
    "LoadedCheckpoint",
    "LoopStatus",
    "Manifest",
    "ManifestSource",
    "ModelSpec",
    "ModelSpecError",
    "OptimizerSpec",
    "ScriptedAction",
    "ScriptedSource",
    "ShardInfo",
    "ShardStore",
    "TaskSpec",
    "TrainerSettings",
    "WorkerConfig",
    "build_model",
    "estimate_param_count",
    "families",
    "load_checkpoint",
    "make_trainer",
    "read_meta",
    "register_family",
    "run_trainer",
    "train_loop_per_worker",
    "validate_model_spec",
    "verify_checkpoint",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'workers' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
