"""The train loop in this process (``LocalRuntime``, no Ray): growth in training and while paused,
the checkpoints of each kind, a failed growth, and a resume from the run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from growth_policy.types import GrowthOp, Observation
from tests.workers.digits import write_digits_job
from workers.checkpoint import read_meta, stored_checkpoints
from workers.loop import WorkerConfig, run_loop
from workers.runtime import LocalRuntime
from workers.shards import FileManifest
from workers.sources import (
    BaseSource,
    CheckpointEvent,
    Directive,
    GrowthEvent,
    LoopStatus,
)
from workers.spec import ModelSpec, TaskSpec

TASK = TaskSpec(kind="classification", input_shape=(64,), num_classes=10)
MODEL = ModelSpec(family="mlp", hidden=[16])
WIDEN = GrowthOp(op="widen", factor=2.0, seed=1)
DEEPEN = GrowthOp(op="deepen", after="act1", seed=2)


class Recorder(BaseSource):
    """Directives by step (and by poll), and everything the loop reports."""

    def __init__(self, by_step: dict[int, Directive], polls: list[Directive] | None = None) -> None:
        self.by_step = by_step
        self.polls = list(polls or [])
        self.observations: list[Observation] = []
        self.statuses: list[LoopStatus] = []
        self.growths: list[GrowthEvent] = []
        self.failures: list[tuple[GrowthOp, int, str]] = []
        self.checkpoints: list[CheckpointEvent] = []

    def decide(self, observation: Observation) -> Directive:
        self.observations.append(observation)
        return self.by_step.get(observation.step, Directive())

    def poll(self, status: LoopStatus) -> Directive:
        return self.polls.pop(0) if self.polls else Directive()

    def on_status(self, status: LoopStatus) -> None:
        self.statuses.append(status)

    def on_growth(self, event: GrowthEvent) -> None:
        self.growths.append(event)

    def on_growth_failed(self, op: GrowthOp, step: int, error: str) -> None:
        self.failures.append((op, step, error))

    def on_checkpoint(self, event: CheckpointEvent) -> None:
        self.checkpoints.append(event)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_digits_job(tmp_path_factory.mktemp("data"))


def _config(root: Path, tmp_path: Path, source: Recorder, **kwargs: Any) -> WorkerConfig:
    return WorkerConfig(
        job_id="job",
        task=TASK,
        model=MODEL,
        store_root=str(root / "data"),
        manifest=FileManifest(root / "manifest", "job"),
        source=source,
        batch_size=32,
        observe_every=10,
        checkpoint_root=str(tmp_path / "durable"),
        poll_interval=0.01,
        **kwargs,
    )


def test_grows_in_training_and_while_paused_checkpoints_and_resumes(
    data_root: Path, tmp_path: Path
) -> None:
    source = Recorder(
        {20: Directive(op=WIDEN, reason="w"), 40: Directive(pause=True), 60: Directive(stop=True)},
        polls=[Directive(op=DEEPEN, reason="d", pause=True), Directive()],
    )
    runtime = LocalRuntime(tmp_path / "run")
    run_loop(_config(data_root, tmp_path, source, checkpoint_every=30), runtime)

    states = [s.state for s in source.statuses]
    assert states == ["starting", "training", "paused", "training", "stopped"]
    assert [o.step for o in source.observations] == [10, 20, 30, 40, 50, 60]
    assert source.observations[-1].train_loss < source.observations[0].train_loss
    widen, deepen = source.growths
    assert (widen.step, widen.generation_after, deepen.step, deepen.generation_after) == (
        20,
        1,
        40,
        2,
    )
    for g in (widen, deepen):
        assert g.val_loss_before == pytest.approx(g.val_loss_after, abs=1e-5)
        assert g.ranks_identical and g.params_after > g.params_before
        assert g.closing_checkpoint is not None and g.opening_checkpoint is not None
        assert min(g.transform_s, g.eval_s, g.checkpoint_s) >= 0 and g.pause_s > 0
    assert widen.first_step_s is not None  # timed by the grown model's first step
    assert deepen.first_step_s is None  # grown while paused: reported before the idle goes on
    kinds = [(c.kind, c.step) for c in source.checkpoints]
    assert kinds == [
        ("close", 20),
        ("growth", 20),
        ("periodic", 30),
        ("close", 40),
        ("growth", 40),
        ("final", 60),
    ]
    final = source.checkpoints[-1]
    assert final.durable and final.path == f"{tmp_path}/durable/gen-0002-step-000000060"
    assert final.ray_path == f"{runtime.run_dir}/gen-0002-step-000000060"
    assert read_meta(final.path).records == read_meta(final.ray_path).records
    assert len(read_meta(final.path).records) == 2
    # The run folder keeps the newest two, as Ray Train's num_to_keep=2 would.
    from pyarrow import fs as pafs

    kept = stored_checkpoints(pafs.LocalFileSystem(), str(runtime.run_dir))
    assert kept == ["gen-0002-step-000000060", "gen-0002-step-000000040"]
    assert [r["kind"] for r in runtime.reported] == ["growth", "periodic", "growth", "final"]

    # A new loop on the same run folder goes on from the final checkpoint.
    again = Recorder({70: Directive(stop=True)})
    run_loop(_config(data_root, tmp_path, again), LocalRuntime(tmp_path / "run"))
    resumed = again.statuses[0].detail["resumed_from"]
    assert (resumed["step"], resumed["generation"], resumed["kind"]) == (60, 2, "final")
    assert resumed["path"] == final.ray_path
    (obs,) = again.observations
    assert (obs.step, obs.generation, obs.param_count) == (70, 2, deepen.params_after)


def test_a_growth_that_fails_leaves_the_model_and_tells_the_source(
    data_root: Path, tmp_path: Path
) -> None:
    bad = GrowthOp(op="deepen", after="nope", seed=3)
    source = Recorder({10: Directive(op=bad), 20: Directive(stop=True)})
    run_loop(
        _config(data_root, tmp_path, source, checkpoint_before_growth=False),
        LocalRuntime(tmp_path / "run"),
    )
    ((op, step, error),) = source.failures
    assert (op, step) == (bad, 10) and "nope" in error
    assert not source.growths
    assert {o.generation for o in source.observations} == {0}
    assert [c.kind for c in source.checkpoints] == ["final"]
