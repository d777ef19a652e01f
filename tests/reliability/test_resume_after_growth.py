"""A checkpoint written after a growth resumes: the optimizer state it holds lands on the same
tensors of the rebuilt model. (A deepen appends the inserted layer's parameters to the optimizer;
the checkpoint stores the state by position and a resume builds the optimizer in the module's
order, so before ``workers._growth.in_module_order`` every resume after a deepen failed on
mismatched shapes, and the job crashed in a loop until it was failed.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from growth_policy import GrowthOp
from tests.workers._support import checkpoint_meta
from workers import _growth
from workers.checkpoint import build_optimizer, load_checkpoint, save_checkpoint
from workers.models import build_model
from workers.spec import ModelSpec, OptimizerSpec, TaskSpec

TASK = TaskSpec(kind="classification", input_shape=[8], num_classes=3)
SPEC = ModelSpec(family="mlp", hidden=[16, 16])


def _step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 8, generator=generator)
    y = torch.randint(0, 3, (32,), generator=generator)
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()


@pytest.mark.parametrize(
    "ops",
    [
        [GrowthOp(op="deepen", after="act1")],
        [GrowthOp(op="widen", factor=2), GrowthOp(op="deepen", after="act2")],
        [GrowthOp(op="deepen", after="act1"), GrowthOp(op="widen", factor=1.5)],
    ],
    ids=["deepen", "widen-deepen", "deepen-widen"],
)
def test_a_checkpoint_after_growth_resumes_with_its_optimizer_state(
    ops: list[GrowthOp], tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model = build_model(SPEC, TASK)
    optimizer = build_optimizer(OptimizerSpec(), model.parameters())
    _step(model, optimizer, 0)
    records = []
    for i, op in enumerate(ops, 1):
        example = torch.randn(16, 8, generator=torch.Generator().manual_seed(i))
        applied = _growth.apply_op(model, optimizer, example, op)
        model, optimizer = applied.model, applied.optimizer
        records.append(applied.record)
        _step(model, optimizer, i)
    assert [id(p) for p in optimizer.param_groups[0]["params"]] == [
        id(p) for p in model.parameters()
    ]
    meta = checkpoint_meta(
        TASK, SPEC, records=records, step=len(ops) + 1, generation=len(ops), generation_step=1,
        passes=1, manifest_version=1,
    )  # fmt: skip
    save_checkpoint(tmp_path / "ckpt", model=model, optimizer=optimizer, meta=meta)

    loaded = load_checkpoint(tmp_path / "ckpt")
    resumed = build_optimizer(OptimizerSpec(), loaded.model.parameters())
    assert loaded.optimizer_state is not None
    resumed.load_state_dict(loaded.optimizer_state)
    names = dict(
        zip(map(id, loaded.model.parameters()), dict(loaded.model.named_parameters()), strict=True)
    )
    saved = {name: optimizer.state[p] for name, p in model.named_parameters()}
    for p, state in resumed.state.items():
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(state[key], saved[names[id(p)]][key])
    loaded.model.train()
    _step(loaded.model, resumed, 99)  # the step that failed before
