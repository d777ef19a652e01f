"""Open classes in the worker loop (LocalRuntime): a label beyond the head grows it (add_classes)
before anything trains on it, the old logits kept; the slices measure forgetting and drift."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from growth_policy.types import Observation
from workers.checkpoint import load_checkpoint
from workers.loop import WorkerConfig, run_loop
from workers.runtime import LocalRuntime
from workers.shards import FileManifest, ShardStore
from workers.sources import BaseSource, CheckpointEvent, Directive, GrowthEvent
from workers.spec import ComputeSpec, ModelSpec, OptimizerSpec, TaskSpec

TASK = TaskSpec(
    kind="classification",
    input_shape=(64,),
    num_classes=5,
    max_classes=12,
    class_names=tuple(f"digit {i}" for i in range(10)),
)


class Pusher(BaseSource):
    """Pushes digits 5-9 at the observation of step ``push_at``; stops at ``stop_at``."""

    def __init__(self, root: Path, push_at: int, stop_at: int) -> None:
        self.root, self.push_at, self.stop_at = root, push_at, stop_at
        self.observations: list[Observation] = []
        self.growths: list[GrowthEvent] = []
        self.checkpoints: list[CheckpointEvent] = []

    def decide(self, observation: Observation) -> Directive:
        self.observations.append(observation)
        if observation.step == self.push_at:
            _push(self.root, new=True)
        return Directive(stop=observation.step >= self.stop_at)

    def on_growth(self, event: GrowthEvent) -> None:
        self.growths.append(event)

    def on_checkpoint(self, event: CheckpointEvent) -> None:
        self.checkpoints.append(event)


def _push(root: Path, *, new: bool) -> None:
    x, y = load_digits(return_X_y=True)
    x, y = (x / 16.0).astype(np.float32), y.astype(np.int64)
    keep = y >= 5 if new else y < 5
    train, val = keep & (np.arange(len(y)) < 1400), keep & (np.arange(len(y)) >= 1400)
    store = ShardStore(str(root / "data"))
    FileManifest(root / "manifest", "job").append(
        [
            store.write("job", x[train], y[train], "train"),
            store.write("job", x[val], y[val], "val"),
        ]
    )


@pytest.mark.slow
def test_a_new_class_grows_the_head_and_the_slices_see_it(tmp_path: Path) -> None:
    _push(tmp_path, new=False)
    source = Pusher(tmp_path, push_at=40, stop_at=100)
    config = WorkerConfig(
        job_id="job",
        task=TASK,
        model=ModelSpec.model_validate({"family": "mlp", "hidden": [32]}),
        optimizer=OptimizerSpec(lr=1e-2),
        store_root=str(tmp_path / "data"),
        manifest=FileManifest(tmp_path / "manifest", "job"),
        source=source,
        batch_size=32,
        observe_every=10,
        checkpoint_root=str(tmp_path / "durable"),
        poll_interval=0.01,
        compute=ComputeSpec(idle_when_converged=False),
    )
    run_loop(config, LocalRuntime(tmp_path / "run"))

    (growth,) = source.growths
    assert growth.op.op == "add_classes" and growth.op.classes == 10
    assert growth.policy == "open_classes" and "class 9 arrived" in growth.reason
    assert growth.max_abs_error == 0.0
    assert growth.record is not None and growth.record["classes"] == [5, 10]
    assert 40 < growth.step <= 60  # at the first pass after the push
    # The closing and opening checkpoints: the old logits unchanged on fixed inputs.
    assert growth.closing_checkpoint is not None and growth.opening_checkpoint is not None
    before = load_checkpoint(growth.closing_checkpoint.path, with_optimizer=False).model.eval()
    after = load_checkpoint(growth.opening_checkpoint.path, with_optimizer=False).model.eval()
    x = torch.rand(16, 64)
    with torch.no_grad():
        old, new = before(x), after(x)
    assert old.shape == (16, 5) and new.shape == (16, 10)
    torch.testing.assert_close(new[:, :5], old, rtol=0, atol=0)

    first_after = next(o for o in source.observations if o.step > growth.step)
    assert first_after.generation == 1 and first_after.slice_count == 2
    # Digits 5-9 are new: their loss is above the old slice's, which drops from its best.
    assert first_after.drift is not None and first_after.drift > 1.0
    assert first_after.forgetting is not None and first_after.forgetting > 0.0
    last = source.observations[-1]
    assert last.forgetting is not None and last.backward_transfer is not None
    assert set(last.slices) == {"v1", "v2"}
    assert last.slices["v2"]["metric"] > 0.5  # the new classes are learned
    assert last.val_metric is not None and last.val_metric > 0.6
    final = load_checkpoint(source.checkpoints[-1].path, with_optimizer=True)
    assert final.meta.records[-1]["op"] == "add_classes"
    assert final.meta.loop_state["slices"]["stats"].keys() == {"1", "2"}
