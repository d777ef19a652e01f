"""Where the train loop runs: its ranks, its resume point, its DDP wrap and where it reports.

The loop (``workers.loop.TrainLoop``) is the same class everywhere; what it runs on is a
:class:`Runtime`, passed in:

* :class:`RayRuntime`, in a Ray Train worker (``train_loop_per_worker`` uses it): the rank and the
  device from Ray's context (``torch.distributed``'s default group, set up by Ray), the resume point
  from ``ray.train.get_checkpoint()`` or a newer complete checkpoint in the run's storage, DDP
  through ``ray.train.torch.prepare_model``, checkpoints through ``ray.train.report``;
* :class:`LocalRuntime`, in the calling process without Ray (benchmarks, tests): one rank, no DDP,
  checkpoints copied into a local run folder, from which a new loop on the same folder resumes.

Importing this module imports no Ray and starts nothing.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from workers._dist import Group
from workers.checkpoint import (
    LoadedCheckpoint,
    checkpoint_name,
    checkpoint_path,
    load_checkpoint,
    newest_complete,
    publish,
    storage_location,
    stored_checkpoints,
)

logger = logging.getLogger(__name__)


@dataclass
class Resumed:
    """The checkpoint a loop resumes from: loaded (on the CPU), and where it is persisted."""

    checkpoint: LoadedCheckpoint
    location: str


class Runtime(Protocol):
    """What the train loop needs of the system it runs on. Every rank calls every method."""

    def start(self) -> Group:
        """This rank's place in the run (rank, world size, device); called once, first."""
        ...

    def resume(self, group: Group) -> Resumed | None:
        """The checkpoint to resume from, the same on every rank; None: start afresh."""
        ...

    def wrap(self, module: nn.Module) -> nn.Module:
        """The module to train: ``module`` wrapped for data parallelism where that applies."""
        ...

    def report(
        self,
        metrics: dict[str, Any],
        folder: Path | None,
        *,
        generation: int,
        step: int,
        background: bool,
        delete_after: bool,
    ) -> str:
        """Report ``metrics`` and, where ``folder`` is given (rank 0), persist the checkpoint in
        it as this run's checkpoint of ``generation`` at ``step``; every rank calls it together.

        ``background``: the copy may finish after the call returns (``folder`` stays until then).
        ``delete_after``: ``folder`` is the runtime's to delete once copied. Returns where the
        runtime keeps its copy (a path, or a URI).
        """
        ...

    def node_id(self) -> str:
        """The node this rank runs on ('' where there is only one)."""
        ...


class RayRuntime:
    """The loop in a Ray Train worker: what ``train_loop_per_worker`` runs on."""

    def start(self) -> Group:
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        device = ray.train.torch.get_device()
        if isinstance(device, list):
            device = device[0]
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return Group(ctx.get_world_rank(), ctx.get_world_size(), device)

    def resume(self, group: Group) -> Resumed | None:
        import ray.train

        checkpoint = self._resume_point(group, ray.train.get_checkpoint())
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as folder:
            loaded = load_checkpoint(folder)
        try:
            location = storage_location(checkpoint.filesystem, str(checkpoint.path))
        except Exception:
            location = str(checkpoint.path)
        return Resumed(loaded, location)

    def _resume_point(self, group: Group, registered: Any) -> Any:
        """The newest complete checkpoint of this run, the same on every rank.

        Ray Train registers a reported checkpoint asynchronously, so a crash right after a report
        can leave the newest checkpoint persisted but unregistered, and ``get_checkpoint()``
        returns the one before. Rank 0 therefore also looks at the run's storage for a newer
        folder whose files are all there and whole, and broadcasts its choice.
        """
        import ray.train

        choice = None
        if group.is_main:
            choice = ""
            try:
                storage = ray.train.get_context().get_storage()
                newer = newest_complete(
                    storage.storage_filesystem,
                    storage.experiment_fs_path,
                    newer_than=str(registered.path) if registered is not None else None,
                )
                choice = newer or ""
            except Exception as exc:  # the registered checkpoint is still a valid resume point
                logger.warning("could not look for unregistered checkpoints: %s", exc)
        choice = group.broadcast_str(choice)
        if not choice:
            return registered
        storage = ray.train.get_context().get_storage()
        logger.info("resuming from %s, newer than the registered checkpoint", choice)
        return ray.train.Checkpoint(choice, filesystem=storage.storage_filesystem)

    def wrap(self, module: nn.Module) -> nn.Module:
        import ray.train.torch

        wrapped: nn.Module = ray.train.torch.prepare_model(module, move_to_device=False)
        return wrapped

    def report(
        self,
        metrics: dict[str, Any],
        folder: Path | None,
        *,
        generation: int,
        step: int,
        background: bool,
        delete_after: bool,
    ) -> str:
        import ray.train
        from ray.train import CheckpointUploadMode

        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(str(folder)) if folder else None,
            checkpoint_dir_name=checkpoint_name(generation, step),
            checkpoint_upload_mode=(
                CheckpointUploadMode.ASYNC if background else CheckpointUploadMode.SYNC
            ),
            delete_local_checkpoint_after_upload=delete_after,
        )
        storage = ray.train.get_context().get_storage()
        path = checkpoint_path(storage.experiment_fs_path, generation, step)
        return storage_location(storage.storage_filesystem, path)

    def node_id(self) -> str:
        """The Ray node of this rank (two nodes on one host share an IP, not a node id)."""
        try:
            import ray

            return str(ray.get_runtime_context().get_node_id())
        except Exception:
            return ""


class LocalRuntime:
    """The loop in the calling process, without Ray: one rank, no DDP (benchmarks, tests).

    Reported checkpoints are copied into ``run_dir`` under their checkpoint names, and the newest
    ``num_to_keep`` are kept (None: all), as Ray Train keeps them in its run storage; a loop
    started on a ``run_dir`` that holds a complete checkpoint resumes from the newest one.
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        device: str | torch.device = "cpu",
        num_to_keep: int | None = 2,
    ) -> None:
        self.run_dir = Path(run_dir).absolute()
        self.device = torch.device(device)
        self.num_to_keep = num_to_keep
        self.reported: list[dict[str, Any]] = []

    def start(self) -> Group:
        return Group(0, 1, self.device)

    def resume(self, group: Group) -> Resumed | None:
        from pyarrow import fs as pafs

        path = newest_complete(pafs.LocalFileSystem(), str(self.run_dir))
        return None if path is None else Resumed(load_checkpoint(path), path)

    def wrap(self, module: nn.Module) -> nn.Module:
        return module

    def report(
        self,
        metrics: dict[str, Any],
        folder: Path | None,
        *,
        generation: int,
        step: int,
        background: bool,
        delete_after: bool,
    ) -> str:
        self.reported.append(dict(metrics))
        destination = checkpoint_path(str(self.run_dir), generation, step)
        if folder is not None:
            publish(folder, destination, replace=True)
            if delete_after:
                shutil.rmtree(folder, ignore_errors=True)
            self._prune()
        return destination

    def _prune(self) -> None:
        from pyarrow import fs as pafs

        if self.num_to_keep is None:
            return
        for name in stored_checkpoints(pafs.LocalFileSystem(), str(self.run_dir))[
            self.num_to_keep :
        ]:
            shutil.rmtree(self.run_dir / name, ignore_errors=True)

    def node_id(self) -> str:
        return ""
