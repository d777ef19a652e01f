"""A job's data: immutable shard files under a storage root, and the manifest that lists them.

Storage layout under the root URI (a local folder, or anything ``pyarrow.fs`` opens, e.g. ``s3://``)::

    <root>/<job_id>/shards/<shard_id>.safetensors

A shard holds two tensors, ``features`` (N, *input_shape) float32 and ``labels`` (N,) int64 for
classification or (N, outputs) float32 for regression. Format: safetensors, chosen by measured read
speed (``bench/shard_format.py``, figures in ``docs/benchmarks.md``): on this machine a 10,000×64
shard decodes in 0.06 ms against 3.4 ms for uncompressed Parquet (about 50× faster) and 1.0 ms for
NPZ, and a 1,000×3×32×32 shard in 0.4 ms against 16 ms (Parquet) and 4.5 ms (NPZ). The data is dense numeric
tensors, which is what safetensors stores without any conversion, and nothing is ever unpickled.

A language-modelling job's shard holds ``tokens`` (T,) int32, its documents one after another, and
``doc_offsets`` (D+1,) int64 (``write_tokens``/``read_tokens``); its ``num_samples`` is T.

Writing a shard is atomic: a temporary file, fsync, rename, fsync of the folder (on object stores a
single PUT is atomic). A shard only becomes part of the dataset when a manifest lists it, and the
manifest is only appended to after the shard is durable.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import time
import uuid
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

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
    max_label: int | None = Field(
        default=None,
        description="Classification: the largest class index in the shard (open classes grow "
        "the head to it before training on it).",
    )


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

    @property
    def max_label(self) -> int | None:
        """The largest class index of any shard (None: no shard says)."""
        labels = [s.max_label for s in self.shards if s.max_label is not None]
        return max(labels) if labels else None


@runtime_checkable
class ManifestSource(Protocol):
    """Where the workers read a job's manifest from (Redis in the service, a file standalone)."""

    def load(self) -> Manifest:
        """The current snapshot."""
        ...

    def wait_newer(self, version: int, timeout: float) -> Manifest:
        """Block (without spinning) until the version exceeds ``version`` or ``timeout`` passes."""
        ...


class ManifestDelta(BaseModel):
    """What changed in a manifest since a version: the shards appended after ``base_version`` (the
    version the receiver holds), or, with ``full``, the whole snapshot (a receiver with nothing
    yet, or a manifest that was rewritten rather than appended to)."""

    model_config = ConfigDict(extra="forbid")

    job_id: str
    version: int = Field(ge=0)
    base_version: int = Field(ge=0)
    full: bool
    shards: list[ShardInfo] = Field(default_factory=list)

    def apply(self, manifest: Manifest) -> Manifest:
        """The manifest after this change, from ``manifest`` (which must be at ``base_version``)."""
        if self.full:
            return Manifest(job_id=self.job_id, version=self.version, shards=list(self.shards))
        if manifest.job_id != self.job_id or manifest.version != self.base_version:
            raise ValueError(
                f"an incremental manifest change from version {self.base_version} of job "
                f"{self.job_id!r} cannot apply to version {manifest.version} of job "
                f"{manifest.job_id!r}"
            )
        if not self.shards and self.version == manifest.version:
            return manifest
        return Manifest(
            job_id=self.job_id, version=self.version, shards=[*manifest.shards, *self.shards]
        )


def manifest_delta(known: Manifest, current: Manifest) -> ManifestDelta:
    """``current`` as a change from ``known``: its appended shards, or the whole of it when it does
    not extend ``known`` (another job, shards removed or reordered) or ``known`` is empty."""
    n = len(known.shards)
    appended = (
        bool(known.job_id)
        and known.job_id == current.job_id
        and current.version >= known.version
        and len(current.shards) >= n
        and (n == 0 or current.shards[n - 1].shard_id == known.shards[n - 1].shard_id)
    )
    return ManifestDelta(
        job_id=current.job_id,
        version=current.version,
        base_version=known.version,
        full=not appended,
        shards=current.shards[n:] if appended else current.shards,
    )


def changes_since(source: ManifestSource, known: Manifest) -> ManifestDelta:
    """What changed in ``source`` since ``known``: the source's own ``changes_since`` where it has
    one (Redis reads only the appended entries), else a diff of a full load."""
    own = getattr(source, "changes_since", None)
    if own is not None:
        change: ManifestDelta = own(known)
        return change
    return manifest_delta(known, source.load())


def wait_changes(source: ManifestSource, known: Manifest, timeout: float) -> ManifestDelta:
    """Block until the source's version exceeds ``known``'s (or ``timeout``), then the change."""
    own = getattr(source, "wait_changes", None)
    if own is not None:
        change: ManifestDelta = own(known, timeout)
        return change
    return manifest_delta(known, source.wait_newer(known.version, timeout))


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
            max_label=_max_label(labels),
        )

    def read(self, info: ShardInfo, *, verify: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Load a shard's ``(features, labels)``; with ``verify``, check its size and checksum.

        A local shard is hashed as a stream and decoded with ``safetensors``' own file reader: a
        fresh multi-megabyte ``bytes`` object costs more in page faults than the decoding itself
        (see ``bench/shard_format.py``).
        """
        tensors = self._load_tensors(info, verify=verify)
        return tensors["features"], tensors["labels"]

    def write_tokens(
        self, job_id: str, tokens: np.ndarray, doc_offsets: np.ndarray, split: Split
    ) -> ShardInfo:
        """Write one token shard durably (as :meth:`write`): ``tokens`` (T,) int32, the documents
        one after another, and ``doc_offsets`` (D+1,) int64, where document d is
        ``tokens[doc_offsets[d]:doc_offsets[d + 1]]`` (0 first, T last). ``num_samples`` is T."""
        tokens = np.ascontiguousarray(tokens, dtype=np.int32).reshape(-1)
        offsets = np.ascontiguousarray(doc_offsets, dtype=np.int64).reshape(-1)
        t = tokens.shape[0]
        if t == 0:
            raise ValueError("a token shard needs at least one token")
        if (
            offsets.shape[0] < 2
            or offsets[0] != 0
            or offsets[-1] != t
            or bool(np.any(np.diff(offsets) <= 0))
        ):
            raise ValueError(
                f"doc_offsets must rise strictly from 0 to the token count {t} (one entry more "
                f"than documents, no empty document); got {offsets.shape[0]} offsets"
            )
        shard_id = uuid.uuid4().hex
        payload = st_save(
            {"tokens": tokens, "doc_offsets": offsets},
            metadata={"job_id": job_id, "split": split, "kind": "tokens"},
        )
        rel = self.shard_path(job_id, shard_id)
        self._write_atomic(rel, payload)
        return ShardInfo(
            shard_id=shard_id,
            path=rel,
            split=split,
            num_samples=t,
            nbytes=len(payload),
            sha256=hashlib.sha256(payload).hexdigest(),
            created=time.time(),
        )

    def read_tokens(self, info: ShardInfo, *, verify: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Load a token shard's ``(tokens, doc_offsets)``; with ``verify``, check its checksum."""
        tensors = self._load_tensors(info, verify=verify)
        if "tokens" not in tensors:
            raise ValueError(f"shard {info.path} holds samples, not tokens")
        return tensors["tokens"], tensors["doc_offsets"]

    def _load_tensors(self, info: ShardInfo, *, verify: bool) -> dict[str, np.ndarray]:
        """A whole shard's tensors; with ``verify``, its size and checksum checked first."""
        if self._local is not None:
            path = self._local / info.path
            if verify:
                with path.open("rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    digest = hashlib.file_digest(f, "sha256").hexdigest()
                self._check(info, size, digest)
            tensors: dict[str, np.ndarray] = st_load_file(path)
            return tensors
        payload = self._read_bytes(info.path)
        if verify:
            self._check(info, len(payload), hashlib.sha256(payload).hexdigest())
        tensors = st_load(payload)
        return tensors

    def read_rows(self, info: ShardInfo, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``[start, stop)`` of a shard, read as byte ranges (the safetensors header gives
        each tensor's offsets): a rank streaming its share reads only its rows. The file's size is
        checked against the manifest; its checksum, which needs the whole file, is not."""
        features, labels = self._read_ranges(info, start, stop, ("features", "labels"))
        return features, labels

    def read_token_range(self, info: ShardInfo, start: int, stop: int) -> np.ndarray:
        """Tokens ``[start, stop)`` of a token shard, read as byte ranges (as :meth:`read_rows`)."""
        (tokens,) = self._read_ranges(info, start, stop, ("tokens",))
        return tokens

    def _read_ranges(
        self, info: ShardInfo, start: int, stop: int, names: tuple[str, ...]
    ) -> list[np.ndarray]:
        """Rows ``[start, stop)`` of each tensor in ``names``, read as byte ranges."""
        if not 0 <= start < stop <= info.num_samples:
            raise ValueError(f"rows [{start}, {stop}) are not in shard {info.shard_id}")
        with self._open_ranges(info.path) as source:
            if source.size() != info.nbytes:
                raise OSError(f"shard {info.path} is corrupt: its size does not match")
            (header_len,) = struct.unpack("<Q", source.read_at(8, 0))
            if header_len > min(info.nbytes, 1 << 24):
                raise OSError(f"shard {info.path} is corrupt: its header is not safetensors")
            header = json.loads(source.read_at(header_len, 8))
            out = []
            for name in names:
                if name not in header:
                    raise ValueError(f"shard {info.path} holds no {name!r} tensor")
                entry = header[name]
                dtype = np.dtype(_ST_DTYPES[entry["dtype"]])
                shape = list(entry["shape"])
                row = dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))
                begin = 8 + header_len + int(entry["data_offsets"][0]) + start * row
                payload = source.read_at((stop - start) * row, begin)
                out.append(np.frombuffer(payload, dtype).reshape([stop - start, *shape[1:]]))
        return out

    def _open_ranges(self, rel: str) -> Any:
        if self._local is not None:
            return _LocalRanges(self._local / rel)
        return self._fs.open_input_file(f"{self._base}/{rel}")

    def list_shards(self, job_id: str) -> list[str]:
        """The shard ids stored for ``job_id`` (listed or not in its manifest), sorted."""
        folder = f"{job_id}/shards"
        if self._local is not None:
            path = self._local / folder
            names = [p.name for p in path.iterdir()] if path.is_dir() else []
        else:
            from pyarrow import fs as pafs

            selector = pafs.FileSelector(f"{self._base}/{folder}", allow_not_found=True)
            names = [i.base_name for i in self._fs.get_file_info(selector)]
        return sorted(n.removesuffix(".safetensors") for n in names if n.endswith(".safetensors"))

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


_ST_DTYPES = {"F32": "<f4", "F64": "<f8", "I64": "<i8", "I32": "<i4", "U8": "u1", "F16": "<f2"}


class _LocalRanges:
    """A local file read by byte ranges (``os.pread``), like ``pyarrow``'s ``RandomAccessFile``."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDONLY)

    def __enter__(self) -> _LocalRanges:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self._fd)

    def size(self) -> int:
        return os.fstat(self._fd).st_size

    def read_at(self, nbytes: int, offset: int) -> bytes:
        data = os.pread(self._fd, nbytes, offset)
        if len(data) != nbytes:
            raise OSError("a shard ended before its header said")
        return data


def _max_label(labels: np.ndarray) -> int | None:
    """The largest class index of integer labels, one per sample (else None)."""
    if labels.ndim == 1 and labels.dtype.kind in "iu" and labels.size:
        return int(labels.max())
    return None


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
