"""A job's data: immutable shard files under a storage root, and the manifest that lists them.

Storage layout under the root URI (a local folder, or anything ``pyarrow.fs`` opens, e.g. ``s3://``)::

    <root>/<job_id>/shards/<shard_id>.safetensors

A shard holds two tensors, ``features`` (N, *input_shape) float32 and ``labels`` (N,) int64 for
classification or (N, outputs) float32 for regression. Format: safetensors, chosen by measured read
speed (``bench/shard_format.py``, figures in ``docs/benchmarks.md``): on this machine a 10,000×64
shard decodes in 0.06 ms against 3.4 ms for uncompressed Parquet (about 50× faster) and 1.0 ms for
NPZ, and a 1,000×3×32×32 shard in 0.4 ms against 16 ms (Parquet) and 4.5 ms (NPZ). The data is dense numeric
tensors, which is what safetensors stores without any conversion, and nothing is ever unpickled.

Writing a shard is atomic: a temporary file, fsync, rename, fsync of the folder (on object stores a
single PUT is atomic). A shard only becomes part of the dataset when a manifest lists it, and the
manifest is only appended to after the shard is durable.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from safetensors.numpy import load as st_load
from safetensors.numpy import load_file as st_load_file
from safetensors.numpy import save as st_save

Split = Literal["train", "val"]


class ShardInfo(BaseModel):
    """One immutable shard, as the manifest lists it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    shard_id: str
    path: str = Field(
        description="Relative to the storage root: '<job_id>/shards/<id>.safetensors'."
    )
    split: Split
    num_samples: int = Field(ge=1)
    nbytes: int = Field(ge=0)
    sha256: str
    created: float
    version: int = Field(default=0, ge=0, description="Dataset version at which it was listed.")


class Manifest(BaseModel):
    """A snapshot of a job's dataset: the shards, in the order they were appended."""

    model_config = ConfigDict(extra="forbid")

    job_id: str
    version: int = Field(default=0, ge=0, description="Bumped by every append.")
    shards: list[ShardInfo] = Field(default_factory=list)

    @property
    def train_shards(self) -> list[ShardInfo]:
        return [s for s in self.shards if s.split == "train"]

    @property
    def val_shards(self) -> list[ShardInfo]:
        return [s for s in self.shards if s.split == "val"]

    @property
    def train_size(self) -> int:
        return sum(s.num_samples for s in self.train_shards)

    @property
    def val_size(self) -> int:
        return sum(s.num_samples for s in self.val_shards)


@runtime_checkable
class ManifestSource(Protocol):
    """Where the workers read a job's manifest from (Redis in the service, a file standalone)."""

    def load(self) -> Manifest:
        """The current snapshot."""
        ...

    def wait_newer(self, version: int, timeout: float) -> Manifest:
        """Block (without spinning) until the version exceeds ``version`` or ``timeout`` passes."""
        ...


def is_remote(location: str) -> bool:
    """Whether a location is a storage URI (``s3://``…) rather than a local folder."""
    return "://" in location and not location.startswith("file://")


class ShardStore:
    """Writes and reads shards under a storage root URI."""

    def __init__(self, root: str) -> None:
        self.root = root
        if is_remote(root):
            from pyarrow import fs as pafs

            self._fs, self._base = pafs.FileSystem.from_uri(root)
            self._local: Path | None = None
        else:
            self._local = Path(root.removeprefix("file://")).expanduser().resolve()
            self._base = str(self._local)

    def __reduce__(self) -> tuple[type[ShardStore], tuple[str]]:
        return (ShardStore, (self.root,))

    def shard_path(self, job_id: str, shard_id: str) -> str:
        return f"{job_id}/shards/{shard_id}.safetensors"

    def write(
        self, job_id: str, features: np.ndarray, labels: np.ndarray, split: Split
    ) -> ShardInfo:
        """Write one shard durably and return its description (not yet in any manifest)."""
        if features.shape[0] != labels.shape[0] or features.shape[0] == 0:
            raise ValueError(
                f"a shard needs as many labels as samples and at least one sample "
                f"(got {features.shape[0]} samples, {labels.shape[0]} labels)"
            )
        shard_id = uuid.uuid4().hex
        payload = st_save(
            {
                "features": np.ascontiguousarray(features),
                "labels": np.ascontiguousarray(labels),
            },
            metadata={"job_id": job_id, "split": split},
        )
        rel = self.shard_path(job_id, shard_id)
        self._write_atomic(rel, payload)
        return ShardInfo(
            shard_id=shard_id,
            path=rel,
            split=split,
            num_samples=int(features.shape[0]),
            nbytes=len(payload),
            sha256=hashlib.sha256(payload).hexdigest(),
            created=time.time(),
        )

    def read(self, info: ShardInfo, *, verify: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Load a shard's ``(features, labels)``; with ``verify``, check its size and checksum.

        A local shard is hashed as a stream and decoded with ``safetensors``' own file reader: a
        fresh multi-megabyte ``bytes`` object costs more in page faults than the decoding itself
        (see ``bench/shard_format.py``).
        """
        if self._local is not None:
            path = self._local / info.path
            if verify:
                with path.open("rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    digest = hashlib.file_digest(f, "sha256").hexdigest()
                self._check(info, size, digest)
            tensors = st_load_file(path)
        else:
            payload = self._read_bytes(info.path)
            if verify:
                self._check(info, len(payload), hashlib.sha256(payload).hexdigest())
            tensors = st_load(payload)
        return tensors["features"], tensors["labels"]

    @staticmethod
    def _check(info: ShardInfo, size: int, digest: str) -> None:
        if size != info.nbytes or digest != info.sha256:
            raise OSError(f"shard {info.path} is corrupt: its size or checksum does not match")

    def delete(self, info: ShardInfo) -> None:
        if self._local is not None:
            (self._local / info.path).unlink(missing_ok=True)
        else:
            self._fs.delete_file(f"{self._base}/{info.path}")

    def delete_job(self, job_id: str) -> bool:
        """Remove everything under ``<root>/<job_id>``; return whether anything was there."""
        return remove_tree(self.root, job_id)

    def _write_atomic(self, rel: str, payload: bytes) -> None:
        if self._local is None:
            # Object stores make a single PUT visible atomically, when it completes.
            target = f"{self._base}/{rel}"
            self._fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
            with self._fs.open_output_stream(target) as out:
                out.write(payload)
            return
        path = self._local / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        write_file_atomic(path, payload)

    def _read_bytes(self, rel: str) -> bytes:
        if self._local is not None:
            return (self._local / rel).read_bytes()
        with self._fs.open_input_stream(f"{self._base}/{rel}") as stream:
            return bytes(stream.read())


def remove_tree(root: str, rel: str) -> bool:
    """Remove the folder ``rel`` under the storage root URI ``root`` (a local folder, or anything
    ``pyarrow.fs`` opens); return whether it existed. ``rel`` is one plain name, never a path."""
    if not rel or rel in (".", "..") or "/" in rel or "\\" in rel:
        raise ValueError(f"not a folder name under the storage root: {rel!r}")
    if is_remote(root):
        from pyarrow import fs as pafs

        filesystem, base = pafs.FileSystem.from_uri(root)
        target = f"{base.rstrip('/')}/{rel}"
        if filesystem.get_file_info(target).type == pafs.FileType.NotFound:
            return False
        filesystem.delete_dir(target)
        return True
    folder = Path(root.removeprefix("file://")).expanduser() / rel
    if not folder.exists():
        return False
    shutil.rmtree(folder)
    return True


def write_file_atomic(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` so that it is either absent or complete, and durable."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(payload)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class FileManifest:
    """A manifest kept as ``<folder>/manifest.json``: for standalone runs and tests (one writer)."""

    def __init__(self, folder: str | Path, job_id: str, *, poll_interval: float = 0.2) -> None:
        self.folder = Path(folder)
        self.job_id = job_id
        self.poll_interval = poll_interval

    @property
    def path(self) -> Path:
        return self.folder / "manifest.json"

    def load(self) -> Manifest:
        if not self.path.exists():
            return Manifest(job_id=self.job_id)
        return Manifest.model_validate_json(self.path.read_text())

    def append(self, shards: list[ShardInfo]) -> Manifest:
        manifest = self.load()
        manifest.version += 1
        manifest.shards.extend(s.model_copy(update={"version": manifest.version}) for s in shards)
        self.folder.mkdir(parents=True, exist_ok=True)
        write_file_atomic(self.path, json.dumps(manifest.model_dump(mode="json")).encode())
        return manifest

    def wait_newer(self, version: int, timeout: float) -> Manifest:
        deadline = time.monotonic() + timeout
        while True:
            manifest = self.load()
            if manifest.version > version or time.monotonic() >= deadline:
                return manifest
            time.sleep(min(self.poll_interval, max(0.0, deadline - time.monotonic())))
