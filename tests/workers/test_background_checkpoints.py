"""A growth's checkpoints written in the background (``WorkerConfig.background_checkpoints``):
training goes on while they are written, the growth is reported only once they are durable, the
opening checkpoint holds the state at the growth (not a later one), and a crash while it is written
resumes from the previous checkpoint with no trace of the unfinished generation."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pyarrow import fs as pafs
from sklearn.datasets import load_digits

import workers.loop
from growth_policy.types import GrowthOp, Observation
from tests.workers.digits import write_digits_job
from workers.checkpoint import load_checkpoint, read_meta, stored_checkpoints
from workers.loop import FAULT_AFTER_TRANSFORM_ENV, TrainLoop, WorkerConfig, run_loop
from workers.runtime import LocalRuntime
from workers.shards import FileManifest
from workers.sources import BaseSource, CheckpointEvent, Directive, GrowthEvent
from workers.spec import ModelSpec, TaskSpec
from workers.tasks import evaluate

TASK = TaskSpec(kind="classification", input_shape=(64,), num_classes=10)
MODEL = ModelSpec(family="mlp", hidden=[16])
WIDEN = GrowthOp(op="widen", factor=2.0, seed=1)
ROOT = Path(__file__).resolve().parents[2]


class Log(BaseSource):
    """Directives by step; everything reported, in the order it came."""

    def __init__(self, by_step: dict[int, Directive]) -> None:
        self.by_step = by_step
        self.events: list[tuple[str, Any]] = []

    def decide(self, observation: Observation) -> Directive:
        self.events.append(("observation", observation.step))
        return self.by_step.get(observation.step, Directive())

    def on_growth(self, event: GrowthEvent) -> None:
        self.events.append(("growth", event))

    def on_checkpoint(self, event: CheckpointEvent) -> None:
        self.events.append(("checkpoint", event))


def _digits() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype(np.float32), y.astype(np.int64)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_digits_job(tmp_path_factory.mktemp("data"))


def _config(root: Path, tmp_path: Path, source: BaseSource, **kwargs: Any) -> WorkerConfig:
    return WorkerConfig(
        job_id="job", task=TASK, model=MODEL, store_root=str(root / "data"),
        manifest=FileManifest(root / "manifest", "job"), source=source, batch_size=32,
        observe_every=10, checkpoint_root=str(tmp_path / "durable"), poll_interval=0.01,
        **kwargs,
    )  # fmt: skip


def test_training_goes_on_while_the_growth_checkpoints_are_written(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    write = workers.loop._write_opening

    def held_write(*args: Any) -> Any:
        assert release.wait(60), "the loop never trained on to step 40"
        return write(*args)

    monkeypatch.setattr(workers.loop, "_write_opening", held_write)
    step = TrainLoop.train_step

    def train_step(loop: TrainLoop, *batch: Any) -> bool:
        stepped = step(loop, *batch)
        if loop.progress.step == 40:  # the grown model trained 20 steps with its write held
            release.set()
        return stepped

    monkeypatch.setattr(TrainLoop, "train_step", train_step)
    source = Log({20: Directive(op=WIDEN, reason="w"), 60: Directive(stop=True)})
    durable = tmp_path / "durable"
    run_loop(_config(data_root, tmp_path, source), LocalRuntime(tmp_path / "run"))

    order = [(k, v if k == "observation" else v.kind if k == "checkpoint" else "growth")
             for k, v in source.events]  # fmt: skip
    # The growth at step 20 is reported once both its checkpoints are written (the closing copy
    # first, then the opening one), and before any observation of the grown model: the
    # observations at 30 (and 40, if the write is not done by then) are skipped, training on.
    assert order[:5] == [
        ("observation", 10), ("observation", 20),
        ("checkpoint", "close"), ("checkpoint", "growth"), ("growth", "growth"),
    ]  # fmt: skip
    first_after = next(v for k, v in source.events[5:] if k == "observation")
    assert first_after in (40, 50)
    growth = next(v for k, v in source.events if k == "growth")
    opening = growth.opening_checkpoint
    assert opening is not None and growth.closing_checkpoint is not None
    assert (opening.step, opening.generation, opening.durable) == (20, 1, True)
    assert opening.path == str(durable / "gen-0001-step-000000020")
    assert growth.checkpoint_write_s is not None and growth.checkpoint_write_s > 0
    assert growth.first_step_s is not None and growth.pause_s < 30
    assert growth.memory_peak_bytes is None and growth.memory_before_bytes is None  # CUDA only
    # The opening checkpoint holds the grown model as it was at step 20, not as trained on since:
    # its loss on the samples measured after the growth is the one measured then.
    loaded = load_checkpoint(opening.path)
    assert read_meta(opening.path).step == 20 and loaded.optimizer_state is not None
    x, y = _digits()
    loss, _ = evaluate(
        loaded.model, torch.from_numpy(x[1500:1756]), torch.from_numpy(y[1500:1756]), TASK
    )
    assert growth.val_loss_after is not None
    torch.testing.assert_close(loss, growth.val_loss_after, rtol=0, atol=1e-6)
    assert growth.val_loss_before is not None
    assert abs(growth.val_loss_after - growth.val_loss_before) < 1e-5
    assert not [p for p in durable.iterdir() if p.name.endswith(".tmp")]  # staged, then in place


def test_growth_checkpoints_in_the_pause_when_asked(data_root: Path, tmp_path: Path) -> None:
    source = Log({20: Directive(op=WIDEN), 30: Directive(stop=True)})
    config = _config(data_root, tmp_path, source, background_checkpoints=False,
                     growth_val_samples=None)  # fmt: skip
    run_loop(config, LocalRuntime(tmp_path / "run"))
    order = [k if k != "checkpoint" else v.kind for k, v in source.events]
    # Written in the pause: both checkpoints before the grown model's first observation.
    assert order[:5] == ["observation", "observation", "close", "growth", "growth"]
    growth = next(v for k, v in source.events if k == "growth")
    assert growth.checkpoint_write_s is None and growth.opening_checkpoint is not None


CRASHING_RUN = """
import sys
from workers.loop import WorkerConfig, run_loop
from workers.runtime import LocalRuntime
from workers.shards import FileManifest
from workers.sources import Directive
from tests.workers.test_background_checkpoints import Log, MODEL, TASK, WIDEN
root, tmp = sys.argv[1], sys.argv[2]
source = Log({{20: Directive(op=WIDEN), 60: Directive(stop=True)}})
config = WorkerConfig(
    job_id="job", task=TASK, model=MODEL, store_root=root + "/data",
    manifest=FileManifest(root + "/manifest", "job"), source=source, batch_size=32,
    observe_every=10, checkpoint_every=10, checkpoint_root=tmp + "/durable", poll_interval=0.01,
)
run_loop(config, LocalRuntime(tmp + "/run"))
"""


@pytest.mark.slow
def test_a_crash_while_the_opening_checkpoint_is_written_resumes_before_the_growth(
    data_root: Path, tmp_path: Path
) -> None:
    triggers = tmp_path / "triggers"
    triggers.mkdir()
    (triggers / "job").write_text("writing")
    env = {**os.environ, FAULT_AFTER_TRANSFORM_ENV: str(triggers), "PYTHONPATH": str(ROOT)}
    script = textwrap.dedent(CRASHING_RUN.format())
    run = subprocess.run(
        [sys.executable, "-c", script, str(data_root), str(tmp_path)],
        check=False, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 70, run.stderr[-2000:]
    assert "crashing after the growth's writing" in run.stderr
    # The run folder's newest checkpoint is generation 0's (step 10); generation 1 left only a
    # staged folder, which no reader lists.
    kept = stored_checkpoints(pafs.LocalFileSystem(), str(tmp_path / "run"))
    assert kept == ["gen-0000-step-000000010"]
    durable = sorted(p.name for p in (tmp_path / "durable").iterdir())
    assert "gen-0000-step-000000020" in durable  # the closing copy, written first, is whole
    assert not [n for n in durable if n.startswith("gen-0001")]
    assert [n for n in durable if n.startswith(".gen-0001-step-000000020")]

    source = Log({30: Directive(op=WIDEN), 40: Directive(stop=True)})
    run_loop(_config(data_root, tmp_path, source), LocalRuntime(tmp_path / "run"))
    observations = [v for k, v in source.events if k == "observation"]
    assert observations == [20, 30, 40]  # resumed at step 10, generation 0
    growth = next(v for k, v in source.events if k == "growth")
    assert (growth.step, growth.generation_before, growth.generation_after) == (30, 0, 1)
    final = [v for k, v in source.events if k == "checkpoint" and v.kind == "final"][-1]
    assert (final.generation, len(read_meta(final.path).records)) == (1, 1)


def test_a_failed_growth_still_announces_its_closing_copy(data_root: Path, tmp_path: Path) -> None:
    bad = GrowthOp(op="deepen", after="nope", seed=3)
    failures: list[str] = []
    source = Log({10: Directive(op=bad), 20: Directive(stop=True)})
    source.on_growth_failed = lambda op, step, error: failures.append(error)  # type: ignore[method-assign]
    run_loop(_config(data_root, tmp_path, source), LocalRuntime(tmp_path / "run"))
    assert len(failures) == 1 and "nope" in failures[0]
    kinds = [(v.kind, v.step, v.generation) for k, v in source.events if k == "checkpoint"]
    assert kinds == [("close", 10, 0), ("final", 20, 0)]
    assert read_meta(tmp_path / "durable" / "gen-0000-step-000000010").step == 10
