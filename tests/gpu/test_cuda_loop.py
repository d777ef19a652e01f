"""The CUDA path: every family trained in bf16 and grown on its device (on the CPU too), the train
loop on a CUDA device (``LocalRuntime(device='cuda')``) with bf16 autocast by default, pinned
non-blocking batches, a widen and a deepen on the device with the optimizer state there, the loss
preserved (within 1e-5 in fp32, 1e-3 in bf16), and the peak memory of a growth against the
estimate the loop checks before growing. The tests marked ``gpu`` skip without CUDA."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import net2net
from growth_policy.types import GrowthOp
from tests.workers.digits import write_digits_job
from workers.checkpoint import build_optimizer
from workers.device import (
    HostToDevice,
    available_memory,
    estimate_params_after,
    growth_memory_need,
    move_optimizer_state,
)
from workers.loop import WorkerConfig, run_loop
from workers.models import build_model, count_parameters
from workers.runtime import LocalRuntime
from workers.shards import FileManifest
from workers.sources import BaseSource, Directive, GrowthEvent, Observation
from workers.spec import ComputeSpec, ModelSpec, OptimizerSpec, TaskSpec

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]

TASK = TaskSpec(kind="classification", input_shape=(64,), num_classes=10)
IMAGE_TASK = TaskSpec(kind="classification", input_shape=(1, 8, 8), num_classes=10)


class _Log(BaseSource):
    def __init__(self, by_step: dict[int, Directive]) -> None:
        self.by_step = by_step
        self.growths: list[GrowthEvent] = []
        self.failed: list[str] = []

    def decide(self, observation: Observation) -> Directive:
        return self.by_step.get(observation.step, Directive())

    def on_growth(self, event: GrowthEvent) -> None:
        self.growths.append(event)

    def on_growth_failed(self, op: GrowthOp, step: int, error: str) -> None:
        self.failed.append(error)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_digits_job(tmp_path_factory.mktemp("data"), train=1200)


def _run(root: Path, tmp_path: Path, precision: Any) -> _Log:
    source = _Log({
        20: Directive(op=GrowthOp(op="widen", factor=2.0, seed=1)),
        40: Directive(op=GrowthOp(op="deepen", after="act1", seed=2)),
        60: Directive(stop=True),
    })  # fmt: skip
    config = WorkerConfig(
        job_id="job", task=TASK, model=ModelSpec(family="mlp", hidden=[64, 64]),
        store_root=str(root / "data"), manifest=FileManifest(root / "manifest", "job"),
        source=source, batch_size=64, observe_every=10, checkpoint_root=str(tmp_path / "d"),
        compute=ComputeSpec(precision=precision, idle_when_converged=False),
    )  # fmt: skip
    run_loop(config, LocalRuntime(tmp_path / "run", device="cuda"))
    return source


@pytest.mark.gpu
@pytest.mark.parametrize(("precision", "tolerance"), [("fp32", 1e-5), ("auto", 1e-3)])
def test_widen_and_deepen_on_the_gpu_preserve_the_loss(
    data_root: Path, tmp_path: Path, precision: str, tolerance: float
) -> None:
    source = _run(data_root, tmp_path, precision)
    assert not source.failed
    widen, deepen = source.growths
    for g in (widen, deepen):
        assert g.val_loss_before is not None and g.val_loss_after is not None
        assert abs(g.val_loss_after - g.val_loss_before) <= tolerance, g
        assert g.params_after > g.params_before
        assert g.opening_checkpoint is not None and g.opening_checkpoint.durable
        assert g.memory_before_bytes is not None and g.memory_peak_bytes is not None
        assert g.memory_peak_bytes > g.memory_before_bytes


@pytest.mark.parametrize(
    ("spec", "task"),
    [
        (ModelSpec(family="mlp", hidden=[32]), TASK),
        (ModelSpec(family="cnn", channels=[8, 16]), IMAGE_TASK),
        (ModelSpec(family="resnet", widths=[8, 16]), IMAGE_TASK),
    ],
)
@pytest.mark.parametrize("device", DEVICES)
def test_every_family_trains_in_bf16_and_grows_on_its_device(
    spec: ModelSpec, task: TaskSpec, device: str
) -> None:
    """A bf16 autocast step, then a widen ×2 with the optimizer carried over: every parameter
    and every state tensor on the device, and the function preserved (in fp32)."""
    torch.manual_seed(0)
    model = build_model(spec, task).to(device)
    opt = build_optimizer(OptimizerSpec(), model.parameters())
    x = torch.randn(16, *task.input_shape, device=device)
    with torch.autocast(device, dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16
    out.float().logsumexp(1).mean().backward()
    opt.step()
    model.eval()
    grown = net2net.widen(model, x, factor=2.0, seed=1)
    assert {p.device.type for p in grown.model.parameters()} == {device}
    new_opt = net2net.transfer_optimizer(opt, model, grown)
    assert move_optimizer_state(new_opt, device) == 0  # carried over where the weights are
    for state in new_opt.state.values():
        assert state["exp_avg"].device.type == device
    grown.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(grown.model(x), model(x), rtol=0, atol=1e-4)


@pytest.mark.gpu
def test_pinned_batches_arrive_intact_and_buffers_are_pinned() -> None:
    move = HostToDevice(torch.device("cuda"))
    batches = [(torch.randn(32, 8), torch.randint(0, 10, (32,))) for _ in range(5)]
    for x, y in batches:
        dx, dy = move(x, y)
        torch.testing.assert_close(dx.cpu(), x)
        torch.testing.assert_close(dy.cpu(), y)
    assert move.pinned and all(b.is_pinned() for b in move._buffers.values())


@pytest.mark.gpu
def test_the_growth_peak_stays_within_the_estimate() -> None:
    task = TaskSpec(kind="classification", input_shape=(256,), num_classes=10)
    model = build_model(ModelSpec(family="mlp", hidden=[1024, 1024]), task).cuda()
    opt = build_optimizer(OptimizerSpec(), model.parameters())
    x = torch.randn(256, 256, device="cuda")
    model(x).sum().backward()
    opt.step()
    op = GrowthOp(op="widen", factor=2.0, seed=1)
    after = estimate_params_after(model, op)
    need = growth_memory_need(after, state_per_param=2, snapshot=False)
    available = available_memory(torch.device("cuda"))
    assert available is not None and available > need
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    grown = net2net.widen(model, x, factor=2.0, seed=1)
    net2net.transfer_optimizer(opt, model, grown)
    torch.cuda.synchronize()
    added = torch.cuda.max_memory_allocated() - base
    assert count_parameters(grown.model) <= after
    assert added <= need * 1.1, (added, need)
