"""Checkpoints: how to rebuild the model (base spec + growth records), its weights, and the training state.

A checkpoint is a folder, readable without unpickling anything::

    meta.json               CheckpointMeta: format, task, base model spec, optimizer spec, growth
                            records, lineage per generation, step counters, manifest version,
                            decision-source state, loop state
    model.safetensors       the model's state_dict (parameters and buffers)
    optimizer.safetensors   the optimizer's per-parameter tensors, keyed "<param index>/<name>"
    optimizer.json          the optimizer's param_groups and any non-tensor per-parameter state

Rebuilding = build the base spec, replay the growth records with ``net2net.replay``, load the
weights (:func:`load_checkpoint`). ``meta.json`` is written last, and a folder without it is not a
checkpoint, so a reader never sees a half-written one.

This module is also the one place that names checkpoints and says where they lie::

    <storage_path>/lifelong-<job>/gen-<GGGG>-step-<SSSSSSSSS>/    Ray Train's copies (run_name)
    <store_root>/<job>/checkpoints/gen-<GGGG>-step-<SSSSSSSSS>/   durable copies (durable_root)
    <data_root>/<job>/tracked/gen-<G>-<dest>/                     copies handed to MLflow

(:func:`checkpoint_name`, :func:`parse_checkpoint_name`, :func:`durable_root`, :func:`run_name`,
:func:`tracked_copy_path`, :func:`newest_durable`, :func:`newest_complete`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file
from torch import nn

from workers.models import build_model, count_parameters
from workers.shards import is_remote
from workers.spec import ModelSpec, OptimizerSpec, TaskSpec

FORMAT = "lifelong-checkpoint"
FORMAT_VERSION = 1
META_FILE = "meta.json"
WEIGHTS_FILE = "model.safetensors"
OPTIMIZER_TENSORS_FILE = "optimizer.safetensors"
OPTIMIZER_JSON_FILE = "optimizer.json"

CheckpointKind = Literal["start", "periodic", "growth", "close", "final"]


class GenerationInfo(BaseModel):
    """One generation of the model: how it was opened and what it had then."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    generation: int = Field(ge=0)
    opened_at_step: int = Field(ge=0)
    op: dict[str, Any] | None = Field(default=None, description="The GrowthOp that opened it.")
    reason: str = ""
    policy: str = ""
    param_count: int = Field(ge=0)
    max_abs_error: float | None = None
    records: int = Field(ge=0, description="How many growth records its architecture replays.")


class FileDigest(BaseModel):
    """Size and SHA-256 of one file of a checkpoint, to tell a complete copy from a partial one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: int = Field(ge=0)
    sha256: str


class CheckpointMeta(BaseModel):
    """Everything in a checkpoint except the tensors."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["lifelong-checkpoint"] = "lifelong-checkpoint"
    format_version: int = FORMAT_VERSION
    job_id: str
    kind: CheckpointKind = "periodic"
    task: TaskSpec
    model: ModelSpec = Field(description="The base spec; growth records are replayed on it.")
    optimizer: OptimizerSpec
    records: list[dict[str, Any]] = Field(default_factory=list)
    lineage: list[GenerationInfo] = Field(default_factory=list)
    step: int = Field(ge=0, description="Optimizer steps since the job started.")
    generation: int = Field(ge=0)
    generation_step: int = Field(ge=0)
    samples_seen: int = Field(ge=0)
    passes: int = Field(ge=0, description="Passes begun so far; a resume starts the next one.")
    manifest_version: int = Field(ge=0)
    dataset_size: int = Field(ge=0)
    param_count: int = Field(ge=0)
    world_size: int = Field(ge=1)
    source_state: dict[str, Any] = Field(default_factory=dict)
    loop_state: dict[str, Any] = Field(default_factory=dict)
    saved_at: float = Field(default_factory=time.time)
    files: dict[str, FileDigest] = Field(
        default_factory=dict, description="The tensor files of the checkpoint, for verification."
    )


@dataclass
class LoadedCheckpoint:
    """A checkpoint read back: the rebuilt model (CPU, eval mode) and everything about it."""

    path: Path
    model: nn.Module
    meta: CheckpointMeta
    optimizer_state: dict[str, Any] | None

    @property
    def records(self) -> list[dict[str, Any]]:
        return self.meta.records

    def optimizer(
        self, params: Iterable[torch.nn.Parameter] | None = None
    ) -> torch.optim.Optimizer:
        """A new optimizer for the model (or ``params``) with the saved state loaded."""
        opt = build_optimizer(
            self.meta.optimizer, self.model.parameters() if params is None else params
        )
        if self.optimizer_state is not None:
            opt.load_state_dict(self.optimizer_state)
        return opt


def build_optimizer(
    spec: OptimizerSpec, params: Iterable[torch.nn.Parameter]
) -> torch.optim.Optimizer:
    """The optimizer a spec names, over ``params``."""
    if spec.name == "adam":
        return torch.optim.Adam(
            params, lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay
        )
    if spec.name == "adamw":
        return torch.optim.AdamW(
            params, lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay
        )
    return torch.optim.SGD(
        params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay
    )


def rebuild_model(task: TaskSpec, base: ModelSpec, records: list[dict[str, Any]]) -> nn.Module:
    """The architecture of a checkpoint: the base spec with its growth records replayed."""
    model = build_model(base, task)
    if records:
        import net2net

        model = net2net.replay(model, records)
    return model


# -- saving ---------------------------------------------------------------------------------------


def _contiguous_cpu(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu").contiguous().clone()


# A model or its state_dict, an optimizer or its state_dict: a state dict is a snapshot taken
# for a background write (workers._writer), which must not read the live tensors later.
ModelState = nn.Module | Mapping[str, torch.Tensor]
OptimizerStateSource = torch.optim.Optimizer | Mapping[str, Any]


def save_checkpoint(
    directory: str | Path,
    *,
    model: ModelState,
    optimizer: OptimizerStateSource | None,
    meta: CheckpointMeta,
) -> Path:
    """Write a checkpoint into ``directory`` (created; must be empty or absent). Returns it.

    ``model`` is the unwrapped module (not the DDP wrapper), or a snapshot of its state_dict (then
    ``meta.param_count`` is kept). ``meta.json`` is written last.
    """
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    if any(path.iterdir()):
        raise FileExistsError(f"checkpoint folder {path} is not empty")
    state = model.state_dict() if isinstance(model, nn.Module) else model
    weights = {name: _contiguous_cpu(t) for name, t in state.items()}
    save_file(weights, path / WEIGHTS_FILE, metadata={"format": FORMAT})
    if optimizer is not None:
        opt_state = optimizer if isinstance(optimizer, Mapping) else optimizer.state_dict()
        tensors, rest = _split_optimizer_state(dict(opt_state))
        save_file(tensors, path / OPTIMIZER_TENSORS_FILE, metadata={"format": FORMAT})
        (path / OPTIMIZER_JSON_FILE).write_text(json.dumps(rest))
    files = {
        name: _digest(path / name)
        for name in (WEIGHTS_FILE, OPTIMIZER_TENSORS_FILE, OPTIMIZER_JSON_FILE)
        if (path / name).exists()
    }
    params = count_parameters(model) if isinstance(model, nn.Module) else meta.param_count
    meta = meta.model_copy(update={"param_count": params, "files": files})
    (path / META_FILE).write_text(meta.model_dump_json(indent=1))
    return path


def save_temporary(
    *, model: ModelState, optimizer: OptimizerStateSource | None, meta: CheckpointMeta
) -> Path:
    """Write a checkpoint into a new temporary folder and return it (the caller removes it)."""
    folder = Path(tempfile.mkdtemp(prefix="lifelong-ckpt-"))
    return save_checkpoint(folder, model=model, optimizer=optimizer, meta=meta)


def _digest(path: Path) -> FileDigest:
    with path.open("rb") as f:
        return FileDigest(
            size=os.fstat(f.fileno()).st_size,
            sha256=hashlib.file_digest(f, "sha256").hexdigest(),
        )


def verify_checkpoint(path: str | Path) -> CheckpointMeta | None:
    """The meta of a local checkpoint folder if every file it lists is there, whole; else None.

    A checkpoint copied file by file (Ray Train's upload, an object store) may be cut short by a
    crash; this tells a complete copy from a partial one.
    """
    folder = Path(path)
    try:
        meta = read_meta(folder)
    except (OSError, ValueError):
        return None
    if not meta.files:
        return None
    for name, expected in meta.files.items():
        file = folder / name
        if not file.is_file() or _digest(file) != expected:
            return None
    return meta


def _split_optimizer_state(
    state_dict: dict[str, Any],
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors for safetensors, everything else (which must be JSON) for optimizer.json."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, per_param in state_dict["state"].items():
        for name, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}/{name}"] = _contiguous_cpu(value)
            else:
                scalars.setdefault(str(index), {})[name] = value
    rest = {"param_groups": state_dict["param_groups"], "scalars": scalars}
    json.dumps(rest)  # fail here, not at load time, if anything is not JSON
    return tensors, rest


def _join_optimizer_state(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split("/", 1)
        state.setdefault(int(index), {})[name] = value
    for index, values in rest.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(values)
    groups = []
    for saved in rest["param_groups"]:
        group = dict(saved)
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": state, "param_groups": groups}


# -- loading --------------------------------------------------------------------------------------


def read_meta(path: str | Path) -> CheckpointMeta:
    """The metadata of a local checkpoint folder, without loading any tensor."""
    meta_path = Path(path) / META_FILE
    if not meta_path.exists():
        raise FileNotFoundError(f"{path} is not a checkpoint (no {META_FILE})")
    return CheckpointMeta.model_validate_json(meta_path.read_text())


def load_checkpoint(path: str | Path, *, with_optimizer: bool = True) -> LoadedCheckpoint:
    """Rebuild a checkpoint's model and read its state; ``path`` is a folder or a storage URI.

    The model is built from the base spec, the growth records are replayed, and the weights are
    loaded strictly (every tensor must match). It is returned on the CPU in eval mode. Nothing is
    unpickled: tensors come from safetensors, everything else from JSON.
    """
    text = str(path)
    if is_remote(text):
        path = Path(tempfile.mkdtemp(prefix="lifelong-ckpt-"))
        _download(text, path)
    else:
        path = Path(text.removeprefix("file://"))
    meta = read_meta(path)
    model = rebuild_model(meta.task, meta.model, meta.records)
    model.load_state_dict(load_file(path / WEIGHTS_FILE), strict=True)
    model.eval()
    optimizer_state = None
    if with_optimizer and (path / OPTIMIZER_JSON_FILE).exists():
        optimizer_state = _join_optimizer_state(
            load_file(path / OPTIMIZER_TENSORS_FILE),
            json.loads((path / OPTIMIZER_JSON_FILE).read_text()),
        )
    return LoadedCheckpoint(path=path, model=model, meta=meta, optimizer_state=optimizer_state)


# -- durable copies -------------------------------------------------------------------------------


def save_durable(
    destination: str,
    *,
    model: ModelState,
    optimizer: OptimizerStateSource | None,
    meta: CheckpointMeta,
) -> Path | None:
    """Write a checkpoint straight to a local ``destination``, durably and atomically.

    The files are written into a temporary sibling folder, fsynced, and the folder is renamed into
    place (an older checkpoint there is replaced), so the destination is always either absent or
    complete, and nothing is copied twice. Returns the folder; for a remote ``destination`` it
    returns None and writes nothing (use :func:`save_checkpoint` to a temporary folder, then
    :func:`publish`).
    """
    staged = stage_durable(destination, model=model, optimizer=optimizer, meta=meta)
    return None if staged is None else commit_durable(staged, destination)


def stage_durable(
    destination: str,
    *,
    model: ModelState,
    optimizer: OptimizerStateSource | None,
    meta: CheckpointMeta,
) -> Path | None:
    """The first half of :func:`save_durable`: the checkpoint written and fsynced in a hidden
    sibling of a local ``destination`` (a name no reader lists), not yet in place. Returns the
    staged folder (None, writing nothing, for a remote ``destination``)."""
    if is_remote(destination):
        return None
    target = Path(destination.removeprefix("file://"))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        save_checkpoint(tmp, model=model, optimizer=optimizer, meta=meta)
        _fsync_folder(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def commit_durable(staged: Path, destination: str) -> Path:
    """The second half of :func:`save_durable`: rename a staged folder into place (atomic)."""
    target = Path(destination.removeprefix("file://"))
    try:
        _swap_into_place(staged, target)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return target


def publish(local_dir: str | Path, destination: str, *, replace: bool = False) -> str:
    """Copy a checkpoint folder to ``destination`` (a folder path or a ``pyarrow.fs`` URI).

    Locally the copy is written to a temporary sibling, fsynced and renamed into place, so the
    destination is either absent or complete. On an object store every file is uploaded and
    ``meta.json`` last. Returns ``destination``. An existing complete checkpoint there is kept, or
    with ``replace`` swapped for the new one.
    """
    src = Path(local_dir)
    files = sorted(p.name for p in src.iterdir() if p.is_file())
    if META_FILE not in files:
        raise FileNotFoundError(f"{src} is not a checkpoint (no {META_FILE})")
    files.remove(META_FILE)
    files.append(META_FILE)
    if is_remote(destination):
        from pyarrow import fs as pafs

        filesystem, base = pafs.FileSystem.from_uri(destination)
        filesystem.create_dir(base, recursive=True)
        for name in files:
            with filesystem.open_output_stream(f"{base}/{name}") as out:
                out.write((src / name).read_bytes())
        return destination
    target = Path(destination.removeprefix("file://"))
    if (target / META_FILE).exists() and not replace:
        return destination
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    tmp.mkdir()
    try:
        for name in files:
            shutil.copyfile(src / name, tmp / name)
        _fsync_folder(tmp)
        _swap_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return destination


def _fsync_folder(folder: Path) -> None:
    """fsync every file of a folder, then the folder itself."""
    for file in folder.iterdir():
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _swap_into_place(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``, replacing an older folder there; fsync the parent."""
    if target.exists():  # an older copy, or a folder left without meta.json by a crash
        old = target.with_name(f".{target.name}.{uuid.uuid4().hex}.old")
        target.rename(old)
        shutil.rmtree(old, ignore_errors=True)
    tmp.rename(target)
    _fsync_dir(target.parent)


def _download(uri: str, local: Path) -> None:
    from pyarrow import fs as pafs

    filesystem, base = pafs.FileSystem.from_uri(uri)
    pafs.copy_files(base, str(local), source_filesystem=filesystem)


# -- names and places -----------------------------------------------------------------------------

RUN_PREFIX = "lifelong-"
_NAME = re.compile(r"gen-(\d{4,})-step-(\d{9,})")


def checkpoint_name(generation: int, step: int) -> str:
    """A checkpoint's folder name, ``gen-<GGGG>-step-<SSSSSSSSS>``: zero-padded, so that the names
    of one generation sort by step."""
    return f"gen-{generation:04d}-step-{step:09d}"


def parse_checkpoint_name(name: str) -> tuple[int, int] | None:
    """``(generation, step)`` of a name made by :func:`checkpoint_name`, or of a path ending in one;
    None for anything else."""
    match = _NAME.fullmatch(str(name).rstrip("/").rsplit("/", 1)[-1])
    return (int(match.group(1)), int(match.group(2))) if match else None


def checkpoint_path(root: str, generation: int, step: int) -> str:
    """The checkpoint of ``generation`` at ``step`` under ``root`` (a folder or a URI)."""
    return f"{root.rstrip('/')}/{checkpoint_name(generation, step)}"


def durable_root(store_root: str, job_id: str, checkpoint_root: str | None = None) -> str:
    """Where a job's durable checkpoints go: ``checkpoint_root`` if given, else
    ``<store_root>/<job_id>/checkpoints`` (a folder or a URI, without a trailing slash)."""
    root = checkpoint_root or f"{store_root.rstrip('/')}/{job_id}/checkpoints"
    return root.rstrip("/")


def run_name(job_id: str) -> str:
    """Ray Train's run name for a job: its runs and checkpoints lie in ``<storage_path>/<name>``."""
    return f"{RUN_PREFIX}{job_id}"


def tracked_copy_path(data_root: str, job_id: str, generation: int, dest: str) -> str:
    """Where a copy of generation ``generation``'s checkpoint ``dest`` waits for MLflow to take it:
    ``<data_root>/<job_id>/tracked/gen-<generation>-<dest>`` (``data_root`` is a local folder)."""
    root = data_root.removeprefix("file://").rstrip("/")
    return f"{root}/{job_id}/tracked/gen-{generation}-{dest}"


def storage_location(filesystem: Any, path: str) -> str:
    """A path on a ``pyarrow.fs`` filesystem as a local path, or as a URI elsewhere."""
    kind = getattr(filesystem, "type_name", "")
    return path if kind in ("local", "") else f"{kind}://{path}"


def _order(name: str) -> tuple[int, int]:
    """(step, generation) of a checkpoint name: newer sorts higher; (-1, -1) for other names."""
    parsed = parse_checkpoint_name(name)
    return (parsed[1], parsed[0]) if parsed else (-1, -1)


def stored_checkpoints(filesystem: Any, folder: str) -> list[str]:
    """The checkpoint folder names in ``folder`` of a ``pyarrow.fs`` filesystem, newest (highest
    step, then generation) first; an absent folder holds none."""
    from pyarrow import fs as pafs

    infos = filesystem.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
    names = [
        i.base_name
        for i in infos
        if i.type == pafs.FileType.Directory and parse_checkpoint_name(i.base_name)
    ]
    return sorted(names, key=_order, reverse=True)


def is_complete(filesystem: Any, path: str) -> bool:
    """Whether a stored checkpoint has every file its meta lists (whole, where it is local)."""
    if filesystem.type_name == "local":
        return verify_checkpoint(path) is not None
    try:
        with filesystem.open_input_stream(f"{path}/{META_FILE}") as stream:
            meta = CheckpointMeta.model_validate_json(stream.read())
    except Exception:
        return False
    if not meta.files:
        return False
    infos = filesystem.get_file_info([f"{path}/{name}" for name in meta.files])
    # Sizes only: hashing would mean downloading.
    return all(info.size == meta.files[info.base_name].size for info in infos)


def newest_complete(filesystem: Any, folder: str, *, newer_than: str | None = None) -> str | None:
    """The path of the newest complete checkpoint (:func:`is_complete`) in ``folder`` of a
    ``pyarrow.fs`` filesystem, or None; with ``newer_than`` (a checkpoint name or path), only one
    newer than that counts."""
    floor = _order(newer_than) if newer_than is not None else None
    for name in stored_checkpoints(filesystem, folder):
        if floor is not None and _order(name) <= floor:
            return None
        path = f"{folder}/{name}"
        if is_complete(filesystem, path):
            return path
    return None


def newest_durable(root: str, generation: int) -> str | None:
    """The newest durable checkpoint of ``generation`` under a checkpoint root (a folder or a URI):
    its location (a path, or a URI for a remote root), or None when it has none.

    Durable copies are renamed into place whole (:func:`save_durable`, :func:`publish`), so a
    folder with its ``meta.json`` is complete: nothing is hashed, and this is cheap enough to call
    per request.
    """
    from pyarrow import fs as pafs

    if is_remote(root):
        filesystem, folder = pafs.FileSystem.from_uri(root)
    else:
        filesystem = pafs.LocalFileSystem()
        folder = str(Path(root.removeprefix("file://")).absolute())
    for name in stored_checkpoints(filesystem, folder):
        parsed = parse_checkpoint_name(name)
        path = f"{folder}/{name}"
        if parsed is not None and parsed[0] == generation:
            meta = filesystem.get_file_info(f"{path}/{META_FILE}")
            if meta.type == pafs.FileType.File:
                return storage_location(filesystem, path)
    return None
