"""Growth ops on the built-in families: function preserved, optimizer carried, replayable."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from growth_policy.types import GrowthOp
from tests.workers._support import checkpoint_meta
from workers._dist import module_digest
from workers._growth import apply_op, shrink_perturb
from workers.checkpoint import build_optimizer, load_checkpoint, save_checkpoint
from workers.models import build_model, count_parameters
from workers.spec import ModelSpec, OptimizerSpec, TaskSpec

CASES = [
    (ModelSpec(family="mlp", hidden=[12, 8]), TaskSpec(input_shape=(10,), num_classes=3), "act1"),
    (
        ModelSpec(family="mlp", hidden=[12], norm="batch"),
        TaskSpec(kind="regression", input_shape=(10,), num_outputs=2),
        "act1",
    ),
    (
        ModelSpec(family="cnn", channels=[4, 6], fc=[8]),
        TaskSpec(input_shape=(2, 16), num_classes=3),
        "act2",
    ),
    (
        ModelSpec(family="resnet", widths=[4, 8]),
        TaskSpec(input_shape=(3, 8, 8), num_classes=3),
        "stem_act",
    ),
]


def _warm(model: torch.nn.Module, task: TaskSpec) -> torch.optim.Optimizer:
    """A few Adam steps so that BatchNorm statistics and optimizer moments are not trivial."""
    opt = build_optimizer(OptimizerSpec(lr=0.01), model.parameters())
    for _ in range(3):
        x = torch.randn(16, *task.input_shape)
        out = model(x)
        opt.zero_grad()
        out.square().mean().backward()
        opt.step()
    return opt


@pytest.mark.parametrize(("spec", "task", "after"), CASES, ids=lambda v: getattr(v, "family", ""))
def test_widen_then_deepen_preserves_the_function_and_replays(
    spec: ModelSpec, task: TaskSpec, after: str, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model = build_model(spec, task)
    opt = _warm(model, task)
    x = torch.randn(32, *task.input_shape)
    model.eval()
    with torch.no_grad():
        reference = model(x)
    model.train()

    widened = apply_op(model, opt, x, GrowthOp(op="widen", factor=2.0, seed=1))
    deepened = apply_op(
        widened.model, widened.optimizer, x, GrowthOp(op="deepen", after=after, seed=2)
    )
    grown = deepened.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(grown(x), reference, atol=1e-5, rtol=0)
    assert widened.max_abs_error is not None and widened.max_abs_error < 1e-5
    assert count_parameters(grown) > count_parameters(widened.model) > count_parameters(model)
    head = grown.get_submodule("head")
    assert isinstance(head, torch.nn.Linear) and head.out_features == task.output_dim
    new_params = {id(p) for p in grown.parameters()}
    opt_params = {id(p) for g in deepened.optimizer.param_groups for p in g["params"]}
    assert opt_params == new_params

    # The checkpoint rebuilds the same architecture from the base spec and the two records.
    meta = checkpoint_meta(
        task,
        spec,
        job_id="j",
        optimizer=OptimizerSpec(lr=0.01),
        records=[widened.record, deepened.record],
        step=3,
        generation=2,
    )
    save_checkpoint(tmp_path / "ck", model=grown, optimizer=deepened.optimizer, meta=meta)
    loaded = load_checkpoint(tmp_path / "ck")
    assert module_digest(loaded.model) == module_digest(grown)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), grown(x), atol=0, rtol=0)
    loaded.optimizer()  # the saved optimizer state fits the rebuilt parameters


def test_the_same_op_gives_bit_identical_models() -> None:
    spec, task, _ = CASES[0]
    torch.manual_seed(0)
    model = build_model(spec, task)
    opt = _warm(model, task)
    x = torch.randn(8, *task.input_shape)
    op = GrowthOp(op="widen", factor=1.5, init="random_zero", seed=7)
    a = apply_op(model, opt, x, op).model
    b = apply_op(model, opt, x, op).model
    assert module_digest(a) == module_digest(b)
    c = apply_op(model, opt, x, op.model_copy(update={"seed": 8})).model
    assert module_digest(a) != module_digest(c)


@pytest.mark.parametrize("rule", ["carry", "reset"])
def test_the_optimizer_state_rule_is_passed_on(rule: str) -> None:
    spec, task, _ = CASES[0]
    torch.manual_seed(0)
    model = build_model(spec, task)
    opt = _warm(model, task)
    x = torch.randn(8, *task.input_shape)
    grown = apply_op(model, opt, x, GrowthOp(op="widen", factor=2.0, seed=1), optimizer_state=rule)
    assert bool(grown.optimizer.state) is (rule == "carry")
    assert grown.optimizer.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_shrink_perturb_is_in_place_and_seeded() -> None:
    spec, task, _ = CASES[0]
    torch.manual_seed(0)
    a = build_model(spec, task)
    b = build_model(spec, task)
    b.load_state_dict(a.state_dict())
    before = [p.detach().clone() for p in a.parameters()]
    opt = _warm(b, task)
    b.load_state_dict(a.state_dict())
    applied = apply_op(
        b, opt, torch.randn(2, 10), GrowthOp(op="shrink_perturb", shrink=0.5, perturb=0.1, seed=4)
    )
    assert applied.model is b and applied.optimizer is opt and applied.record is None
    shrink_perturb(a, shrink=0.5, perturb=0.1, seed=4)
    assert module_digest(a) == module_digest(b)
    gen = torch.Generator().manual_seed(4)
    for p, old in zip(a.parameters(), before, strict=True):
        expected = 0.5 * old + 0.1 * torch.randn(old.shape, generator=gen)
        torch.testing.assert_close(p.detach(), expected)


def test_digest_sees_every_bit() -> None:
    model = torch.nn.Linear(3, 2)
    d = module_digest(model)
    with torch.no_grad():
        model.weight[0, 0] = torch.nextafter(model.weight[0, 0], torch.tensor(1.0))
    assert module_digest(model) != d
