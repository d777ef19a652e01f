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
    checkpoint_name,
    checkpoint_path,
    durable_root,
    is_complete,
    load_checkpoint,
    newest_complete,
    newest_durable,
    parse_checkpoint_name,
    publish,
    read_meta,
    run_name,
    save_checkpoint,
    save_durable,
    stored_checkpoints,
    tracked_copy_path,
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


def test_names_and_places() -> None:
    assert checkpoint_name(1, 300) == "gen-0001-step-000000300"
    assert parse_checkpoint_name("gen-0001-step-000000300") == (1, 300)
    assert parse_checkpoint_name("/run/gen-0012-step-1000000000/") == (12, 1_000_000_000)
    for other in ("checkpoint_000001", "gen-1-step-3", "xgen-0001-step-000000300", ""):
        assert parse_checkpoint_name(other) is None
    assert checkpoint_path("s3://b/ck/", 2, 5) == "s3://b/ck/gen-0002-step-000000005"
    assert durable_root("/data/", "job1") == "/data/job1/checkpoints"
    assert durable_root("/data", "job1", "s3://b/x/") == "s3://b/x"
    assert run_name("job1") == "lifelong-job1"
    assert (
        tracked_copy_path("file:///data/", "job1", 3, "close") == "/data/job1/tracked/gen-3-close"
    )


def _store(root: Path, gen: int, step: int) -> Path:
    model, opt = _trained(OptimizerSpec())
    folder = root / checkpoint_name(gen, step)
    return save_checkpoint(folder, model=model, optimizer=opt, meta=_meta(step=step))


def test_finds_the_newest_complete_checkpoint_in_storage(tmp_path: Path) -> None:
    from pyarrow import fs as pafs

    run = tmp_path / "run"
    for gen, step in ((0, 100), (1, 200), (1, 300), (0, 1000)):
        _store(run, gen, step)
    (run / "checkpoint_manager_snapshot.json").write_text("{}")
    (run / "not-a-checkpoint").mkdir()
    fs = pafs.LocalFileSystem()
    names = stored_checkpoints(fs, str(run))
    assert names == [
        "gen-0000-step-000001000",
        "gen-0001-step-000000300",
        "gen-0001-step-000000200",
        "gen-0000-step-000000100",
    ]
    assert is_complete(fs, f"{run}/{names[0]}")
    assert newest_complete(fs, str(run)) == f"{run}/{names[0]}"
    (run / names[0] / "model.safetensors").write_bytes(b"cut")
    assert not is_complete(fs, f"{run}/{names[0]}")
    assert newest_complete(fs, str(run)) == f"{run}/{names[1]}"
    assert newest_complete(fs, str(run), newer_than=f"{run}/{names[2]}/") == f"{run}/{names[1]}"
    assert newest_complete(fs, str(run), newer_than=names[1]) is None
    assert stored_checkpoints(fs, str(tmp_path / "none")) == []


def test_newest_durable_checkpoint_of_a_generation(tmp_path: Path) -> None:
    root = tmp_path / "job1" / "checkpoints"
    assert newest_durable(str(root), 0) is None  # no root yet
    for gen, step in ((0, 100), (0, 900), (1, 950), (1, 2000)):
        _store(root, gen, step)
    (root / checkpoint_name(0, 1000)).mkdir()  # a folder without meta.json is not a checkpoint
    assert newest_durable(str(root), 0) == str(root / "gen-0000-step-000000900")
    assert newest_durable(f"file://{root}/", 1) == str(root / "gen-0001-step-000002000")
    assert newest_durable(str(root), 2) is None
