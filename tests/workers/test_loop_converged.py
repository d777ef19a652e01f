"""The train loop waits when it has learned what its data holds (``LocalRuntime``, no Ray).

It converges on a small dataset, holds its best weights, spends no step while it waits, wakes on
a push and on a command, spends its budgets, books its compute, waits again after a resume while
the data is unchanged, and with ``idle_when_converged=False`` trains on as before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_digits

from workers.checkpoint import load_checkpoint
from workers.loop import WorkerConfig, run_loop
from workers.runtime import LocalRuntime
from workers.shards import FileManifest, ShardInfo, ShardStore
from workers.sources import BaseSource, CheckpointEvent, Directive, LoopStatus
from workers.spec import BudgetSpec, ComputeSpec, ModelSpec, TaskSpec
from workers.tasks import evaluate

TASK = TaskSpec(kind="classification", input_shape=(64,), num_classes=10)
FAST = ComputeSpec(patience=3, min_improvement=0.01, wake_from="best")


class Waker(BaseSource):
    """Records statuses and checkpoints; while converged, answers each wait from a script:
    ``"push"`` appends ``more`` to the manifest, ``"wake"``, ``"stop"``; one per convergence."""

    def __init__(
        self, manifest: FileManifest, more: list[ShardInfo], script: list[str], stop_at: int = 0
    ) -> None:
        self.manifest = manifest
        self.more = more
        self.script = list(script)
        self.stop_at = stop_at
        self.statuses: list[LoopStatus] = []
        self.checkpoints: list[CheckpointEvent] = []
        self.steps: list[int] = []
        self.val_losses: list[float | None] = []
        self.polls_converged = 0

    def decide(self, observation: Any) -> Directive:
        self.steps.append(observation.step)
        self.val_losses.append(observation.val_loss)
        return Directive(stop=bool(self.stop_at) and observation.step >= self.stop_at)

    def poll(self, status: LoopStatus) -> Directive:
        if status.state != "converged":
            return Directive()
        self.polls_converged += 1
        if self.polls_converged < 3:  # wait a few polls first: nothing must happen meanwhile
            return Directive()
        self.polls_converged = 0
        action = self.script.pop(0) if self.script else "stop"
        if action == "push":
            self.manifest.append(self.more)
            return Directive()
        return Directive(wake=action == "wake", stop=action == "stop")

    def on_status(self, status: LoopStatus) -> None:
        self.statuses.append(status)

    def on_checkpoint(self, event: CheckpointEvent) -> None:
        self.checkpoints.append(event)


@pytest.fixture
def data(tmp_path: Path) -> tuple[FileManifest, list[ShardInfo], ShardStore]:
    x, y = load_digits(return_X_y=True)
    x, y = (x / 16.0).astype(np.float32), y.astype(np.int64)
    store = ShardStore(str(tmp_path / "data"))
    manifest = FileManifest(tmp_path / "manifest", "job")
    manifest.append(
        [
            store.write("job", x[:120], y[:120], "train"),
            store.write("job", x[1400:], y[1400:], "val"),
        ]
    )
    return manifest, [store.write("job", x[120:240], y[120:240], "train")], store


def _config(
    tmp_path: Path, manifest: FileManifest, source: Waker, compute: ComputeSpec = FAST
) -> WorkerConfig:
    return WorkerConfig(
        job_id="job", task=TASK, model=ModelSpec(family="mlp", hidden=[16]),
        store_root=str(tmp_path / "data"), manifest=manifest, source=source, batch_size=32,
        observe_every=10, checkpoint_every=0, checkpoint_root=str(tmp_path / "durable"),
        poll_interval=0.01, signals=False, compute=compute,
    )  # fmt: skip


def _states(source: Waker) -> list[tuple[str, Any]]:
    return [(s.state, s.detail.get("woken_by")) for s in source.statuses]


def test_converges_holds_the_best_weights_and_wakes_on_a_push_then_a_command(
    tmp_path: Path, data: tuple[FileManifest, list[ShardInfo], ShardStore]
) -> None:
    manifest, more, _ = data
    source = Waker(manifest, more, ["push", "wake", "stop"])
    run_loop(_config(tmp_path, manifest, source), LocalRuntime(tmp_path / "run", num_to_keep=None))

    assert _states(source) == [
        ("starting", None), ("training", None), ("converged", None), ("training", "data"),
        ("converged", None), ("training", "command"), ("converged", None), ("stopped", None),
    ]  # fmt: skip
    converged = [s for s in source.statuses if s.state == "converged"]
    woken = [s for s in source.statuses if s.state == "training" and s.detail.get("woken_by")]
    for c, w in zip(converged, woken, strict=False):
        assert w.step == c.step  # not one step while it waited
    first, second, _ = converged
    assert (first.dataset_version, second.dataset_version) == (1, 2)
    assert (first.dataset_size, second.dataset_size) == (120, 240)
    detail = first.detail
    assert detail["held"] == "best" and detail["reason"].startswith("converged:")
    numbers = detail["numbers"]
    assert numbers["patience"] == 3 and numbers["observations_since_best"] >= 3
    assert numbers["best_step"] == detail["held_step"] < first.step
    assert detail["held_val_loss"] == pytest.approx(numbers["best_val_loss"])
    # The checkpoint written on converging holds the best weights: its validation loss is theirs.
    ckpt = next(c for c in source.checkpoints if c.step == first.step)
    loaded = load_checkpoint(ckpt.path)
    store = ShardStore(str(tmp_path / "data"))
    xv, yv = store.read(manifest.load().val_shards[0])
    loss, _ = evaluate(loaded.model, *_tensors(xv, yv), TASK, batch_size=1024, device="cpu")
    assert loss == pytest.approx(detail["held_val_loss"], rel=1e-5)
    # Compute: every step booked, per data version and generation, and a duty cycle below 1.
    compute = source.statuses[-1].detail["compute"]
    assert compute["steps"] == source.statuses[-1].step
    assert set(compute["per_version"]) == {"1", "2"}
    assert sum(v["steps"] for v in compute["per_version"].values()) == compute["steps"]
    assert compute["per_generation"]["0"]["steps"] == compute["steps"]
    assert compute["flops"] > 6 * 1000 * compute["samples"]  # ≥ 1,000 parameters per sample
    assert 0 < compute["busy_s"] < compute["elapsed_s"] and 0 < compute["duty_cycle"] < 1


def _tensors(x: np.ndarray, y: np.ndarray) -> tuple[Any, Any]:
    import torch

    return torch.from_numpy(x), torch.from_numpy(y)


def test_a_resume_while_converged_waits_again_without_a_step(
    tmp_path: Path, data: tuple[FileManifest, list[ShardInfo], ShardStore]
) -> None:
    manifest, more, _ = data
    source = Waker(manifest, more, ["stop"])
    run_loop(_config(tmp_path, manifest, source), LocalRuntime(tmp_path / "run"))
    assert [s.state for s in source.statuses][-2:] == ["converged", "stopped"]
    stopped_at = source.statuses[-1].step

    again = Waker(manifest, more, ["push", "stop"])
    run_loop(_config(tmp_path, manifest, again), LocalRuntime(tmp_path / "run"))
    assert _states(again)[:3] == [("starting", None), ("converged", None), ("training", "data")]
    assert again.statuses[1].step == stopped_at
    assert again.steps[0] == stopped_at + 10  # it trained only once the push came


def test_by_default_it_holds_its_last_weights(
    tmp_path: Path, data: tuple[FileManifest, list[ShardInfo], ShardStore]
) -> None:
    manifest, more, _ = data
    source = Waker(manifest, more, ["stop"])
    compute = ComputeSpec(patience=3, min_improvement=0.01)
    run_loop(_config(tmp_path, manifest, source, compute), LocalRuntime(tmp_path / "run"))
    converged = next(s for s in source.statuses if s.state == "converged")
    assert converged.detail["held"] == "last"
    assert converged.detail["held_step"] == converged.step == source.steps[-1]
    assert converged.detail["held_val_loss"] == source.val_losses[-1]
    assert converged.detail["held_val_loss"] > converged.detail["numbers"]["best_val_loss"] * 0.99


def test_idling_off_trains_on_as_before(
    tmp_path: Path, data: tuple[FileManifest, list[ShardInfo], ShardStore]
) -> None:
    manifest, more, _ = data
    source = Waker(manifest, more, [], stop_at=600)
    compute = FAST.model_copy(update={"idle_when_converged": False})
    run_loop(_config(tmp_path, manifest, source, compute), LocalRuntime(tmp_path / "run"))
    assert [s.state for s in source.statuses] == ["starting", "training", "stopped"]
    assert source.steps[-1] == 600


def test_budgets_per_data_version_wait_and_in_total_stop(
    tmp_path: Path, data: tuple[FileManifest, list[ShardInfo], ShardStore]
) -> None:
    manifest, more, _ = data
    source = Waker(manifest, more, ["push"])
    compute = ComputeSpec(
        idle_when_converged=False,
        budget_per_version=BudgetSpec(steps=50),
        budget_total=BudgetSpec(steps=80),
    )
    run_loop(_config(tmp_path, manifest, source, compute), LocalRuntime(tmp_path / "run"))
    assert [s.state for s in source.statuses] == [
        "starting", "training", "converged", "training", "stopped",
    ]  # fmt: skip
    waiting, stopped = source.statuses[2], source.statuses[-1]
    assert waiting.step == 50 and waiting.detail["budget"] and waiting.detail["held"] == "last"
    assert "budget of data version 1 is spent: 50 steps of 50" in waiting.detail["reason"]
    assert stopped.step == 80 and stopped.detail["budget"]
    assert "total compute budget is spent: 80 steps of 80" in stopped.detail["reason"]
    assert stopped.detail["compute"]["per_version"]["2"]["steps"] == 30
