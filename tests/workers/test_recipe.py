"""The training recipe (``workers.recipe``, ``OptimizerSpec``): weight decay on matrices only,
through growth and a checkpoint; the schedules; gradient accumulation and clipping in the loop."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError
from sklearn.datasets import load_digits
from torch.nn import functional

import net2net
from tests.workers.digits import write_digits_job
from workers.checkpoint import build_optimizer
from workers.loop import TrainLoop, WorkerConfig
from workers.models import build_model
from workers.recipe import (
    StepCounters,
    learning_rate,
    order_like_model,
    param_groups,
    warmup_steps,
)
from workers.runtime import LocalRuntime
from workers.shards import FileManifest
from workers.spec import ModelSpec, OptimizerSpec, ScheduleSpec, TaskSpec

LM = TaskSpec(kind="language_modeling", context_length=8)
GPT = ModelSpec.model_validate(
    {"family": "gpt", "n_layer": 1, "n_head": 2, "d_model": 16, "bias": True}
)


def adamw(**kw: Any) -> OptimizerSpec:
    return OptimizerSpec.model_validate({"name": "adamw", "weight_decay": 0.1, **kw})


def test_weight_decay_applies_to_matrices_only() -> None:
    model = build_model(GPT, LM)
    decayed, plain = param_groups(adamw(), model)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert {names[id(p)] for p in decayed["params"]} == {
        n for n, p in model.named_parameters() if p.dim() == 2
    }
    assert "tok.weight" in {names[id(p)] for p in decayed["params"]}  # tied with the head
    assert {names[id(p)] for p in plain["params"]} >= {"norm.weight", "blocks.0.attn.q_proj.bias"}
    (one,) = param_groups(adamw(decay="all"), model)
    assert len(one["params"]) == len(list(model.parameters()))
    assert len(param_groups(OptimizerSpec(), model)) == 1  # no weight decay: one group


def test_groups_survive_growth_and_a_checkpoint_of_the_state() -> None:
    torch.manual_seed(0)
    model = build_model(GPT, LM)
    spec = adamw()
    opt = build_optimizer(spec, param_groups(spec, model))  # type: ignore[arg-type]
    idx = torch.randint(0, 256, (4, 8))
    functional.cross_entropy(model(idx).flatten(0, 1), idx.flatten()).backward()
    opt.step()
    grown = net2net.deepen(model, idx, after="blocks.0")
    new_opt = net2net.transfer_optimizer(opt, model, grown)
    order_like_model(new_opt, grown.model)
    rebuilt = param_groups(spec, grown.model)
    for group, want in zip(new_opt.param_groups, rebuilt, strict=True):
        assert [id(p) for p in group["params"]] == [id(p) for p in want["params"]]
        assert group["weight_decay"] == want["weight_decay"]
    # the state, saved by position, loads into the groups that a resume builds
    resumed = build_optimizer(spec, rebuilt)  # type: ignore[arg-type]
    resumed.load_state_dict(new_opt.state_dict())
    for p in grown.model.parameters():
        a, b = new_opt.state.get(p, {}), resumed.state.get(p, {})
        assert a.keys() == b.keys()
        if "exp_avg" in a:
            torch.testing.assert_close(b["exp_avg"], a["exp_avg"], rtol=0, atol=0)


def test_warmup_and_constant() -> None:
    spec = OptimizerSpec(lr=1e-3)
    assert warmup_steps(spec, LM) == 100
    assert warmup_steps(spec, TaskSpec(input_shape=(3,), num_classes=2)) == 0
    assert learning_rate(spec, StepCounters(step=0), 100) == pytest.approx(1e-3 / 101)
    assert learning_rate(spec, StepCounters(step=49), 100) == pytest.approx(1e-3 * 50 / 101)
    assert learning_rate(spec, StepCounters(step=100), 100) == 1e-3
    assert learning_rate(spec, StepCounters(step=10**6), 100) == 1e-3


def nanogpt_lr(it: int) -> float:
    """nanoGPT's get_lr with its Shakespeare-char CPU settings."""
    warmup, decay, lr, min_lr = 100, 2000, 1e-3, 1e-4
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    if it > decay:
        return min_lr
    ratio = (it - warmup) / (decay - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def test_cosine_is_nanogpts() -> None:
    schedule = ScheduleSpec(kind="cosine", warmup_steps=100, min_lr=1e-4, decay_steps=2000)
    spec = OptimizerSpec(lr=1e-3, schedule=schedule)
    for step in (0, 50, 99, 100, 101, 500, 1050, 1999, 2000, 2001, 5000):
        got = learning_rate(spec, StepCounters(step=step), 100)
        assert got == pytest.approx(nanogpt_lr(step), rel=1e-12, abs=1e-15), step


def test_wsd_decays_before_a_step_budget_ends() -> None:
    schedule = ScheduleSpec(kind="wsd", warmup_steps=0, min_lr=0.0, decay_steps=10)
    spec = OptimizerSpec(lr=1.0, schedule=schedule)

    def lr(version_step: int, step: int = 1000, **kw: Any) -> float:
        counters = StepCounters(step=step, version_step=version_step, version_budget=100, **kw)
        return learning_rate(spec, counters, 0)

    assert lr(0) == lr(89) == 1.0  # stable
    assert lr(90) == pytest.approx(0.9) and lr(95) == pytest.approx(0.4)
    assert lr(99) == 0.0  # the last step of the version's budget
    assert lr(50, step=995, total_budget=1000) == pytest.approx(0.4)  # the total's end is nearer
    assert learning_rate(spec, StepCounters(step=10**6), 0) == 1.0  # no budget: stable


def test_rewarm_after_each_growth() -> None:
    schedule = ScheduleSpec(kind="rewarm", warmup_steps=10, rewarm_steps=4)
    spec = OptimizerSpec(lr=1.0, schedule=schedule)
    assert learning_rate(spec, StepCounters(step=500, generation=0, generation_step=0), 10) == 1.0
    after = [
        learning_rate(spec, StepCounters(step=500 + k, generation=2, generation_step=k), 10)
        for k in range(6)
    ]
    assert after == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0])


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"schedule": {"kind": "cosine"}}, "schedule 'cosine' needs 'decay_steps'"),
        ({"schedule": {"kind": "wsd"}}, "schedule 'wsd' needs 'decay_steps'"),
        (
            {"schedule": {"kind": "cosine", "warmup_steps": 100, "decay_steps": 50}},
            "must come after the warm-up",
        ),
        ({"lr": 1e-3, "schedule": {"min_lr": 1e-2}}, "must not exceed lr"),
        ({"accumulation_steps": 0}, "accumulation_steps"),
        ({"clip_grad_norm": 0}, "clip_grad_norm"),
        ({"decay": "biases"}, "decay"),
        ({"schedule": {"kind": "linear"}}, "kind"),
    ],
)
def test_bad_recipes_are_refused(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        OptimizerSpec.model_validate(fields)


def loop_for(tmp_path: Path, optimizer: OptimizerSpec) -> TrainLoop:
    root = write_digits_job(tmp_path)
    config = WorkerConfig(
        job_id="job",
        task=TaskSpec(input_shape=(64,), num_classes=10),
        model=ModelSpec(family="mlp", hidden=[16]),
        optimizer=optimizer,
        store_root=str(root / "data"),
        manifest=FileManifest(root / "manifest", "job"),
        checkpoint_root=str(tmp_path / "durable"),
    )
    loop = TrainLoop(config, runtime=LocalRuntime(tmp_path / "run"))
    loop.setup()
    loop.restore()
    loop.sync_manifest()
    return loop


def digits_batch() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_digits(return_X_y=True)
    return torch.tensor(x[:32] / 16.0, dtype=torch.float32), torch.tensor(y[:32])


def test_accumulation_equals_one_step_on_the_whole_batch(tmp_path: Path) -> None:
    spec = OptimizerSpec(name="sgd", lr=0.5, momentum=0.0, accumulation_steps=2)
    loop = loop_for(tmp_path, spec)
    try:
        reference = build_model(loop.cfg.model, loop.cfg.task)
        reference.load_state_dict(loop.module.state_dict())
        x, y = digits_batch()
        assert loop.train_step(x[:16], y[:16]) is False
        assert loop.progress.step == 0 and loop.progress.samples_seen == 16
        assert loop.train_step(x[16:], y[16:]) is True
        assert loop.progress.step == 1 and loop.progress.samples_seen == 32
        functional.cross_entropy(reference(x), y).backward()
        with torch.no_grad():
            for p in reference.parameters():
                p.sub_(0.5 * p.grad)
        for got, want in zip(loop.module.parameters(), reference.parameters(), strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    finally:
        loop.cleanup()


def test_clipping_bounds_the_step(tmp_path: Path) -> None:
    spec = OptimizerSpec(name="sgd", lr=1.0, momentum=0.0, clip_grad_norm=1e-3)
    loop = loop_for(tmp_path, spec)
    try:
        before = [p.detach().clone() for p in loop.module.parameters()]
        assert loop.train_step(*digits_batch())
        moved = torch.cat(
            [
                (p.detach() - b).flatten()
                for p, b in zip(loop.module.parameters(), before, strict=True)
            ]
        )
        assert float(moved.norm()) == pytest.approx(1e-3, rel=1e-4)
        assert loop.lr == 1.0
    finally:
        loop.cleanup()
