"""The CUDA path's pieces that run on a CPU: precision and autocast, batches to the device,
optimizer state moved between devices ('meta' stands in for a GPU), and the memory a growth needs,
checked before the growth and refused with a reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import net2net
import workers.loop
from growth_policy.types import GrowthOp
from tests.workers.digits import write_digits_job
from workers.checkpoint import build_optimizer
from workers.device import (
    GIB,
    HostToDevice,
    autocast,
    autocast_dtype,
    estimate_params_after,
    growth_memory_need,
    memory_refusal,
    move_optimizer_state,
    state_values_per_param,
)
from workers.loop import TrainLoop, WorkerConfig, run_loop
from workers.models import build_model, count_parameters
from workers.runtime import LocalRuntime
from workers.shards import FileManifest
from workers.sources import BaseSource, Directive, GrowthEvent, Observation
from workers.spec import ComputeSpec, ModelSpec, OptimizerSpec, TaskSpec

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)
TASK = TaskSpec(kind="classification", input_shape=(64,), num_classes=10)


@pytest.mark.parametrize(
    ("precision", "device", "expected"),
    [
        ("auto", CUDA, torch.bfloat16),
        ("auto", CPU, None),
        ("bf16", CPU, torch.bfloat16),
        ("bf16", CUDA, torch.bfloat16),
        ("fp32", CUDA, None),
        ("fp32", CPU, None),
    ],
)
def test_autocast_dtype_of_each_precision(
    precision: Any, device: torch.device, expected: torch.dtype | None
) -> None:
    assert autocast_dtype(precision, device) == expected


def test_autocast_runs_the_forward_in_bf16_and_none_leaves_fp32() -> None:
    layer = nn.Linear(8, 4)
    x = torch.randn(2, 8)
    with autocast(CPU, torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16
    with autocast(CPU, None):
        assert layer(x).dtype == torch.float32
    assert layer.weight.dtype == torch.float32  # the weights stay fp32


def test_host_to_device_on_the_cpu_is_a_plain_copy() -> None:
    move = HostToDevice(CPU)
    x, y = torch.randn(4, 3), torch.arange(4)
    mx, my = move(x, y)
    assert not move.pinned
    torch.testing.assert_close(mx, x)
    torch.testing.assert_close(my, y)


def _stepped_adam(model: nn.Module) -> torch.optim.Optimizer:
    opt = build_optimizer(OptimizerSpec(), model.parameters())
    model(torch.randn(4, 64)).sum().backward()
    opt.step()
    return opt


def test_optimizer_state_moves_to_the_parameters_device_but_a_host_step_stays() -> None:
    model = build_model(ModelSpec(family="mlp", hidden=[16]), TASK)
    opt = _stepped_adam(model)
    moved = move_optimizer_state(opt, "meta")
    states = list(opt.state.values())
    assert moved == 2 * len(states)  # exp_avg and exp_avg_sq of every parameter
    for state in states:
        assert state["exp_avg"].device.type == "meta" and state["exp_avg_sq"].device.type == "meta"
        assert state["step"].device.type == "cpu"  # as load_state_dict keeps it (not capturable)
    assert move_optimizer_state(opt, "meta") == 0  # already there


def test_state_values_per_param() -> None:
    model = build_model(ModelSpec(family="mlp", hidden=[16]), TASK)
    params = count_parameters(model)
    fresh = build_optimizer(OptimizerSpec(), model.parameters())
    assert state_values_per_param(fresh, params) == 2  # none yet: assume Adam's two
    assert state_values_per_param(_stepped_adam(model), params) == 2
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 64)).sum().backward()
    sgd.step()
    assert state_values_per_param(sgd, params) == 1


@pytest.mark.parametrize(
    "op",
    [
        GrowthOp(op="widen", factor=2.0, seed=1),
        GrowthOp(op="widen", factor=1.5, seed=1),
        GrowthOp(op="deepen", after="act1", seed=1),
        GrowthOp(op="deepen", after="act2", seed=1),
    ],
)
def test_the_estimate_bounds_the_grown_parameter_count_closely(op: GrowthOp) -> None:
    model = build_model(ModelSpec(family="mlp", hidden=[48, 96]), TASK)
    x = torch.randn(8, 64)
    if op.op == "widen":
        assert op.factor is not None
        grown = net2net.widen(model, x, factor=op.factor, seed=1)
    else:
        assert op.after is not None
        grown = net2net.deepen(model, x, after=op.after, seed=1)
    actual, bound = count_parameters(grown.model), estimate_params_after(model, op)
    assert actual <= bound <= 1.6 * actual, (actual, bound)


@pytest.mark.parametrize("style", ["block", "auto"])
def test_the_estimate_of_a_block_deepen_of_a_gpt_is_the_grown_parameter_count(style: str) -> None:
    task = TaskSpec(kind="language_modeling", context_length=16)
    spec = ModelSpec.model_validate({"family": "gpt", "n_layer": 2, "n_head": 2, "d_model": 32})
    model = build_model(spec, task)
    idx = torch.randint(0, task.output_dim, (2, task.context_length))
    op = GrowthOp(op="deepen", after="blocks.1", style=style, seed=1)  # type: ignore[arg-type]
    grown = net2net.deepen(model, idx, after="blocks.1", style=style, seed=1)
    assert len(grown.model.blocks) == 3
    assert estimate_params_after(model, op) == count_parameters(grown.model)
    layer = GrowthOp(op="deepen", after="blocks.1", style="identity", seed=1)
    assert estimate_params_after(model, layer) < count_parameters(grown.model)


def test_the_estimate_of_a_widen_by_widths_uses_the_current_widths() -> None:
    model = build_model(ModelSpec(family="mlp", hidden=[48, 96]), TASK)
    params = count_parameters(model)
    op = GrowthOp(op="widen", widths={"act1": 96}, seed=1)
    assert estimate_params_after(model, op, {"act1": 48, "act2": 96}) == 4 * params


def test_memory_need_counts_weights_state_gradients_and_the_snapshot() -> None:
    # 100M parameters after growth, Adam (2 values each), fp32: weights 0.4 GB, state 0.8 GB,
    # gradients 0.4 GB, snapshot of weights and state 1.2 GB.
    assert growth_memory_need(100_000_000, state_per_param=2, snapshot=False) == 1_600_000_000
    assert growth_memory_need(100_000_000, state_per_param=2, snapshot=True) == 2_800_000_000


def test_a_growth_that_does_not_fit_is_refused_with_the_numbers() -> None:
    need = growth_memory_need(100_000_000, state_per_param=2, snapshot=True)
    assert memory_refusal(need, None, device=CPU, params_after=100_000_000) is None
    assert memory_refusal(need, 4 * GIB, device=CUDA, params_after=100_000_000) is None
    reason = memory_refusal(need, 2 * GIB, device=CUDA, params_after=100_000_000)
    assert reason is not None
    assert reason.startswith("not enough memory on cuda:0: growing to about 100,000,000 parameters")
    assert "needs about 2.61 GiB more" in reason and "2.00 GiB is available" in reason


class _Log(BaseSource):
    def __init__(self, by_step: dict[int, Directive]) -> None:
        self.by_step = by_step
        self.failed: list[str] = []
        self.growths: list[GrowthEvent] = []
        self.params: list[int] = []

    def decide(self, observation: Observation) -> Directive:
        self.params.append(observation.param_count)
        return self.by_step.get(observation.step, Directive())

    def on_growth_failed(self, op: GrowthOp, step: int, error: str) -> None:
        self.failed.append(error)

    def on_growth(self, event: GrowthEvent) -> None:
        self.growths.append(event)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_digits_job(tmp_path_factory.mktemp("data"))


def _config(root: Path, tmp_path: Path, source: BaseSource, **kwargs: Any) -> WorkerConfig:
    return WorkerConfig(
        job_id="job", task=TASK, model=ModelSpec(family="mlp", hidden=[16]),
        store_root=str(root / "data"), manifest=FileManifest(root / "manifest", "job"),
        source=source, batch_size=32, observe_every=10, checkpoint_root=str(tmp_path / "d"),
        **kwargs,
    )  # fmt: skip


def test_the_loop_refuses_a_growth_the_device_cannot_hold(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A device with 1 MiB left (as a GPU would say); the widen needs more.
    monkeypatch.setattr(workers.loop, "available_memory", lambda device: 1 << 20)
    widen = GrowthOp(op="widen", factor=8.0, seed=1)
    source = _Log({10: Directive(op=widen), 20: Directive(stop=True)})
    run_loop(_config(data_root, tmp_path, source), LocalRuntime(tmp_path / "run"))
    (reason,) = source.failed
    assert reason.startswith("not enough memory on cpu: growing to about")
    assert "1.00 GiB" not in reason and "0.00 GiB is available" in reason
    assert not source.growths and len(set(source.params)) == 1  # the model stayed as it was


@pytest.mark.parametrize(
    ("precision", "dtype"), [("bf16", torch.bfloat16), ("auto", torch.float32)]
)
def test_the_loop_trains_under_the_precision_of_its_compute_spec(
    data_root: Path, tmp_path: Path, precision: Any, dtype: torch.dtype
) -> None:
    config = _config(data_root, tmp_path, BaseSource(), compute=ComputeSpec(precision=precision))
    loop = TrainLoop(config, runtime=LocalRuntime(tmp_path / "run"))
    loop.setup()
    loop.restore()
    seen: list[torch.dtype] = []
    loop.module.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    loop.sync_manifest()
    features, labels = next(iter(loop.reader.batches(loop.reader.plan(0))))
    loop.train_step(features, labels)
    loop.validate(64)
    assert seen == [dtype, dtype]  # the training step and the validation
    assert {p.dtype for p in loop.module.parameters()} == {torch.float32}
    assert loop.progress.step == 1
    loop.cleanup()
