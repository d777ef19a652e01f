"""The digits job the worker-loop tests train on: a shard store and a manifest in one folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

from workers.shards import FileManifest, ShardStore


def write_digits_job(root: Path, *, train: int = 600) -> Path:
    """Write the first ``train`` digits as job ``job``'s training shard and digits 1500 on as its
    validation shard, into ``root/data`` with the manifest at ``root/manifest``; returns ``root``."""
    x, y = load_digits(return_X_y=True)
    x, y = (x / 16.0).astype(np.float32), y.astype(np.int64)
    store = ShardStore(str(root / "data"))
    FileManifest(root / "manifest", "job").append(
        [
            store.write("job", x[:train], y[:train], "train"),
            store.write("job", x[1500:], y[1500:], "val"),
        ]
    )
    return root
