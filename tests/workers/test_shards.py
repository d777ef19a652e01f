"""Shards are written atomically and read back exactly; manifests list them and version them."""

from __future__ import annotations

import pickle
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from workers.shards import FileManifest, Manifest, ManifestSource, ShardStore


def _data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 3, 4), dtype=np.float32), rng.integers(0, 5, n)


def test_write_then_read_round_trips(tmp_path: Path) -> None:
    store = ShardStore(str(tmp_path))
    x, y = _data(17)
    info = store.write("job1", x, y, "train")
    assert info.num_samples == 17 and info.split == "train"
    assert info.path == f"job1/shards/{info.shard_id}.safetensors"
    assert (tmp_path / info.path).stat().st_size == info.nbytes
    rx, ry = store.read(info)
    np.testing.assert_array_equal(rx, x)
    np.testing.assert_array_equal(ry, y)
    assert rx.dtype == np.float32 and ry.dtype == np.int64
    # Nothing but the shard itself is left in the folder: the temporary file was renamed.
    assert [p.name for p in (tmp_path / "job1" / "shards").iterdir()] == [
        f"{info.shard_id}.safetensors"
    ]


def test_file_uri_is_a_local_folder(tmp_path: Path) -> None:
    store = ShardStore(f"file://{tmp_path}")
    info = store.write("j", *_data(3), "val")
    assert (tmp_path / info.path).exists()
    np.testing.assert_array_equal(store.read(info)[1], _data(3)[1])


def test_corruption_is_detected(tmp_path: Path) -> None:
    store = ShardStore(str(tmp_path))
    info = store.write("job1", *_data(8), "train")
    path = tmp_path / info.path
    payload = bytearray(path.read_bytes())
    payload[-1] ^= 0xFF
    path.write_bytes(bytes(payload))
    with pytest.raises(OSError, match="corrupt"):
        store.read(info)
    store.read(info, verify=False)  # the caller may choose to skip the check


def test_a_shard_needs_matching_labels_and_samples(tmp_path: Path) -> None:
    store = ShardStore(str(tmp_path))
    x, y = _data(4)
    with pytest.raises(ValueError, match="got 4 samples, 3 labels"):
        store.write("job1", x, y[:3], "train")
    with pytest.raises(ValueError, match="at least one sample"):
        store.write("job1", x[:0], y[:0], "train")


def test_store_pickles_by_its_root(tmp_path: Path) -> None:
    store = ShardStore(str(tmp_path))
    clone = pickle.loads(pickle.dumps(store))
    assert clone.root == store.root and clone._local == store._local


def test_manifest_appends_bump_the_version(tmp_path: Path) -> None:
    store = ShardStore(str(tmp_path / "data"))
    manifest = FileManifest(tmp_path / "m", "job1")
    assert isinstance(manifest, ManifestSource)
    assert manifest.load() == Manifest(job_id="job1")
    a = store.write("job1", *_data(10), "train")
    b = store.write("job1", *_data(4), "val")
    m1 = manifest.append([a, b])
    c = store.write("job1", *_data(6, seed=1), "train")
    m2 = manifest.append([c])
    assert (m1.version, m2.version) == (1, 2)
    loaded = manifest.load()
    assert loaded == m2
    assert [s.version for s in loaded.shards] == [1, 1, 2]
    assert (loaded.train_size, loaded.val_size) == (16, 4)
    assert [s.shard_id for s in loaded.train_shards] == [a.shard_id, c.shard_id]


def test_wait_newer_wakes_on_append_and_times_out_otherwise(tmp_path: Path) -> None:
    store = ShardStore(str(tmp_path / "data"))
    manifest = FileManifest(tmp_path / "m", "job1", poll_interval=0.02)
    start = time.monotonic()
    assert manifest.wait_newer(0, timeout=0.15).version == 0
    assert 0.15 <= time.monotonic() - start < 1.0

    info = store.write("job1", *_data(5), "train")
    timer = threading.Timer(0.1, manifest.append, args=([info],))
    timer.start()
    start = time.monotonic()
    got = manifest.wait_newer(0, timeout=5.0)
    elapsed = time.monotonic() - start
    timer.join()
    assert got.version == 1 and got.train_size == 5
    assert 0.05 < elapsed < 1.0
