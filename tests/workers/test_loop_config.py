"""The loop's config: validated, picklable, and the modules import without side effects."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import ray.cloudpickle
from pydantic import ValidationError

from workers.loop import WorkerConfig
from workers.runner import TrainerSettings
from workers.shards import FileManifest
from workers.sources import JsonlRecorder, ScriptedAction, ScriptedSource
from workers.spec import ModelSpec, TaskSpec


def _config(tmp_path: Path, **kwargs: object) -> WorkerConfig:
    base: dict[str, object] = {
        "job_id": "job1",
        "task": TaskSpec(input_shape=(4,), num_classes=2),
        "model": ModelSpec(family="mlp", hidden=[8]),
        "store_root": str(tmp_path / "data"),
        "manifest": FileManifest(tmp_path / "m", "job1"),
    }
    base.update(kwargs)
    return WorkerConfig.model_validate(base)


def test_defaults_and_durable_root(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    assert cfg.durable_root() == f"{tmp_path}/data/job1/checkpoints"
    assert _config(tmp_path, checkpoint_root="s3://b/x/").durable_root() == "s3://b/x"
    assert (cfg.batch_size, cfg.observe_every, cfg.checkpoint_every) == (64, 50, 500)


def test_round_trips_through_cloudpickle_as_ray_sends_it(tmp_path: Path) -> None:
    source = JsonlRecorder(ScriptedSource([ScriptedAction(at_step=5, stop=True)]), tmp_path / "e")
    cfg = _config(tmp_path, source=source, batch_size=16)
    sent = ray.cloudpickle.loads(ray.cloudpickle.dumps(cfg.as_loop_config()))
    again = WorkerConfig.model_validate(sent)
    assert again.batch_size == 16 and again.task == cfg.task
    assert isinstance(again.source, JsonlRecorder)
    assert again.manifest.load().version == 0


def test_rejects_unknown_keys_and_objects_that_do_not_fit(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="batch_sz"):
        _config(tmp_path, batch_sz=3)
    with pytest.raises(ValidationError, match="'manifest' must have load"):
        _config(tmp_path, manifest=object())
    with pytest.raises(ValidationError, match="DecisionSource"):
        _config(tmp_path, source=object())
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        _config(tmp_path, observe_every=0)
    with pytest.raises(ValidationError, match="optimizer_state"):
        _config(tmp_path, optimizer_state="keep")


def test_trainer_settings_name_the_run_after_the_job(tmp_path: Path) -> None:
    settings = TrainerSettings(worker=_config(tmp_path), storage_path=str(tmp_path / "ray"))
    assert settings.name == "lifelong-job1"
    assert (settings.num_workers, settings.use_gpu, settings.max_failures) == (1, False, 3)


def test_importing_the_workers_modules_starts_nothing() -> None:
    code = (
        "import sys, threading; import workers.loop, workers.runner, workers.sources, "
        "workers.checkpoint, workers.models, workers.signals, workers.runtime; "
        "assert 'ray' not in sys.modules, 'ray imported'; "
        "assert threading.active_count() == 1, threading.enumerate()"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_the_package_exports_lazily() -> None:
    code = (
        "import sys; import workers.spec; assert 'torch' not in sys.modules, 'torch'; "
        "import workers; assert sorted(workers.__all__) == sorted(workers._WHERE); "
        "[getattr(workers, n) for n in workers.__all__]; "
        "assert 'ray' not in sys.modules, 'ray'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
