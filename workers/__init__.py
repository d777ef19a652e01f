"""workers: what runs on the Ray workers.

Model families and their validation (``workers.models``), the job's data as shards and manifests
(``workers.shards``) read through ``workers.reader`` (``workers.windows`` for language models: token windows; the
byte tokenizer, generation and scoring in ``workers.text``), the continuous train loop
(``workers.loop.train_loop_per_worker``), the runtimes it runs on (``workers.runtime``: Ray Train,
or this process), its decision sources (``workers.sources``), the saturation signals it measures
(``workers.signals``), checkpoints, their names and places (``workers.checkpoint``) and the entry
point that runs a job's trainer (``workers.runner.run_trainer``). See ``docs/workers.md``.

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
        checkpoint_name,
        durable_root,
        load_checkpoint,
        newest_durable,
        parse_checkpoint_name,
        read_meta,
        run_name,
        tracked_copy_path,
        verify_checkpoint,
    )
    from workers.loop import TrainLoop, WorkerConfig, run_loop, train_loop_per_worker
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
    from workers.runtime import LocalRuntime, RayRuntime, Runtime
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
    from workers.spec import ModelSpec, OptimizerSpec, ScheduleSpec, TaskSpec
    from workers.text import decode_tokens, encode_text, generate, score
    from workers.windows import TokenReader

_EXPORTS = {
    "workers.checkpoint": [
        "CheckpointMeta",
        "LoadedCheckpoint",
        "checkpoint_name",
        "durable_root",
        "load_checkpoint",
        "newest_durable",
        "parse_checkpoint_name",
        "read_meta",
        "run_name",
        "tracked_copy_path",
        "verify_checkpoint",
    ],
    "workers.loop": ["TrainLoop", "WorkerConfig", "run_loop", "train_loop_per_worker"],
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
    "workers.runtime": ["LocalRuntime", "RayRuntime", "Runtime"],
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
    "workers.spec": ["ModelSpec", "OptimizerSpec", "ScheduleSpec", "TaskSpec"],
    "workers.text": ["decode_tokens", "encode_text", "generate", "score"],
    "workers.windows": ["TokenReader"],
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
    "LocalRuntime",
    "LoopStatus",
    "Manifest",
    "ManifestSource",
    "ModelSpec",
    "ModelSpecError",
    "OptimizerSpec",
    "RayRuntime",
    "Runtime",
    "ScheduleSpec",
    "ScriptedAction",
    "ScriptedSource",
    "ShardInfo",
    "ShardStore",
    "TaskSpec",
    "TokenReader",
    "TrainLoop",
    "TrainerSettings",
    "WorkerConfig",
    "build_model",
    "checkpoint_name",
    "decode_tokens",
    "durable_root",
    "encode_text",
    "estimate_param_count",
    "families",
    "generate",
    "load_checkpoint",
    "make_trainer",
    "newest_durable",
    "parse_checkpoint_name",
    "read_meta",
    "register_family",
    "run_loop",
    "run_name",
    "run_trainer",
    "score",
    "tracked_copy_path",
    "train_loop_per_worker",
    "validate_model_spec",
    "verify_checkpoint",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'workers' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
