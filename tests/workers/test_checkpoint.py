"""Checkpoints round-trip the model and the optimizer exactly, and never unpickle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from workers.checkpoint import (
    META_FILE,
    CheckpointMeta,
    build_optimizer,
    load_checkpoint,
    publish,
    read_meta,
    save_checkpoint,
    save_durable,
    verify_checkpoint,
)
from workers.models import build_model
from workers.spec import ModelSpec, OptimizerSpec, TaskSpec

TASK = TaskSpec(kind="classification", input_shape=(6,), num_classes=3)
SPEC = ModelSpec(family="mlp", hidden=[8, 8], norm="batch")


def _trained(opt_spec: OptimizerSpec) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = build_model(SPEC, TASK)
    opt = build_optimizer(opt_spec, model.parameters())
    for _ in range(3):
        x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model, opt


def _meta(**kwargs: object) -> CheckpointMeta:
    base = {
        "job_id": "job1",
        "task": TASK,
        "model": SPEC,
        "optimizer": OptimizerSpec(),
        "step": 3,
        "generation": 0,
        "generation_step": 3,
        "samples_seen": 48,
        "passes": 1,
        "manifest_version": 2,
        "dataset_size": 48,
        "param_count": 0,
        "world_size": 1,
        "source_state": {"fired": [0]},
    }
    base.update(kwargs)
    return CheckpointMeta.model_validate(base)


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_round_trip_continues_exactly(tmp_path: Path, name: str) -> None:
    spec = OptimizerSpec(name=name, lr=0.01)  # type: ignore[arg-type]
    model, opt = _trained(spec)
    save_checkpoint(tmp_path / "ck", model=model, optimizer=opt, meta=_meta(optimizer=spec))
    loaded = load_checkpoint(tmp_path / "ck")
    assert not loaded.model.training
    assert loaded.meta.param_count == sum(p.numel() for p in model.parameters())
    assert loaded.meta.source_state == {"fired": [0]}
    for (k, a), (k2, b) in zip(
        model.state_dict().items(), loaded.model.state_dict().items(), strict=True
    ):
        assert k == k2
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    # One more step from the original and from the loaded copy lands on the same weights.
    model2 = loaded.model.train()
    opt2 = loaded.optimizer()
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    for m, o in ((model, opt), (model2, opt2)):
        o.zero_grad()
        torch.nn.functional.cross_entropy(m(x), y).backward()
        o.step()
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_files_hold_no_pickle(tmp_path: Path) -> None:
    model, opt = _trained(OptimizerSpec())
    path = save_checkpoint(tmp_path / "ck", model=model, optimizer=opt, meta=_meta())
    assert sorted(p.name for p in path.iterdir()) == [
        "meta.json",
        "model.safetensors",
        "optimizer.json",
        "optimizer.safetensors",
    ]
    rest = json.loads((path / "optimizer.json").read_text())
    assert rest["param_groups"][0]["betas"] == [0.9, 0.999]
    meta = read_meta(path)
    assert meta.model == SPEC and meta.task == TASK and meta.step == 3
    assert json.loads((path / META_FILE).read_text())["format"] == "lifelong-checkpoint"


def test_refuses_a_non_empty_folder_and_a_folder_without_meta(tmp_path: Path) -> None:
    model, opt = _trained(OptimizerSpec())
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "x").write_text("")
    with pytest.raises(FileExistsError):
        save_checkpoint(tmp_path / "ck", model=model, optimizer=opt, meta=_meta())
    with pytest.raises(FileNotFoundError, match="not a checkpoint"):
        load_checkpoint(tmp_path / "ck")


def test_weights_must_match_the_architecture(tmp_path: Path) -> None:
    model, _ = _trained(OptimizerSpec())
    wrong = _meta(model=ModelSpec(family="mlp", hidden=[8, 9], norm="batch"))
    save_checkpoint(tmp_path / "ck", model=model, optimizer=None, meta=wrong)
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_checkpoint(tmp_path / "ck")


def test_publish_is_atomic_and_idempotent(tmp_path: Path) -> None:
    model, opt = _trained(OptimizerSpec())
    src = save_checkpoint(tmp_path / "ck", model=model, optimizer=opt, meta=_meta())
    dest = tmp_path / "durable" / "gen-0000-step-000000003"
    assert publish(src, str(dest)) == str(dest)
    assert sorted(p.name for p in dest.iterdir()) == sorted(p.name for p in src.iterdir())
    assert [p.name for p in dest.parent.iterdir()] == [dest.name]  # no temporary left
    publish(src, f"file://{dest}")  # already there: left as it is
    other = save_checkpoint(tmp_path / "ck2", model=model, optimizer=opt, meta=_meta(step=4))
    publish(other, str(dest))
    assert read_meta(dest).step == 3
    publish(other, str(dest), replace=True)
    assert read_meta(dest).step == 4
    assert [p.name for p in dest.parent.iterdir()] == [dest.name]
    loaded = load_checkpoint(f"file://{dest}", with_optimizer=False)
    assert loaded.optimizer_state is None and loaded.meta.step == 4
    # A folder left half-written (no meta.json) is replaced.
    half = tmp_path / "durable" / "half"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"junk")
    publish(src, str(half))
    assert load_checkpoint(half).meta.job_id == "job1"


def test_verify_tells_a_complete_copy_from_a_partial_one(tmp_path: Path) -> None:
    model, opt = _trained(OptimizerSpec())
    path = save_checkpoint(tmp_path / "ck", model=model, optimizer=opt, meta=_meta())
    meta = verify_checkpoint(path)
    assert meta is not None and sorted(meta.files) == [
        "model.safetensors",
        "optimizer.json",
        "optimizer.safetensors",
    ]
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])  # an upload cut short
    assert verify_checkpoint(path) is None
    (path / "optimizer.safetensors").unlink()
    assert verify_checkpoint(path) is None
    assert verify_checkpoint(tmp_path / "absent") is None


def test_save_durable_writes_in_place_and_replaces(tmp_path: Path) -> None:
    model, opt = _trained(OptimizerSpec())
    dest = tmp_path / "root" / "gen-0000-step-000000003"
    assert save_durable(str(dest), model=model, optimizer=opt, meta=_meta()) == dest
    assert verify_checkpoint(dest) is not None
    save_durable(f"file://{dest}", model=model, optimizer=opt, meta=_meta(step=9))
    assert read_meta(dest).step == 9
    assert [p.name for p in dest.parent.iterdir()] == [dest.name]  # no temporaries left
    assert save_durable("s3://bucket/x", model=model, optimizer=opt, meta=_meta()) is None
