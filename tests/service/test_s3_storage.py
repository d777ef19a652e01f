"""``s3://`` storage against a real S3 server on loopback (moto's server mode): shards written,
read (whole and as byte ranges), listed and deleted through ``ShardStore``; checkpoints published,
found and loaded through ``workers.checkpoint``; and a short job that trains from an ``s3://`` root,
its history streamed from the bucket, its final checkpoint written there.

The endpoint reaches ``pyarrow.fs`` as an operator would give it: ``AWS_ENDPOINT_URL`` (with the
credentials in ``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY``), so the roots are plain
``s3://bucket/prefix`` URIs.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from moto.server import ThreadedMotoServer

from growth_policy.types import Observation
from workers._dist import Group
from workers.checkpoint import load_checkpoint, newest_durable
from workers.loop import WorkerConfig, run_loop
from workers.reader import DataReader
from workers.runtime import LocalRuntime
from workers.shards import FileManifest, ShardStore
from workers.sources import BaseSource, Directive
from workers.spec import ComputeSpec, DataSpec, ModelSpec, ReplaySpec, TaskSpec

pytestmark = pytest.mark.integration

BUCKET = "lifelong-test"


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def root(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    from pyarrow import fs as pafs

    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    s3 = pafs.S3FileSystem(
        endpoint_override=endpoint, allow_bucket_creation=True, region="us-east-1"
    )
    s3.create_dir(BUCKET)
    return f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}"


def test_shards_are_written_read_listed_and_deleted(root: str) -> None:
    store = ShardStore(root)
    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    y = np.arange(10, dtype=np.int64)
    info = store.write("job", x, y, "train")
    assert info.path == f"job/shards/{info.shard_id}.safetensors"
    features, labels = store.read(info)  # the checksum is verified
    np.testing.assert_array_equal(features, x)
    np.testing.assert_array_equal(labels, y)
    rows_x, rows_y = store.read_rows(info, 3, 7)  # byte ranges: HTTP range requests
    np.testing.assert_array_equal(rows_x, x[3:7])
    np.testing.assert_array_equal(rows_y, y[3:7])
    other = store.write("job", x[:2], y[:2], "val")
    assert store.list_shards("job") == sorted([info.shard_id, other.shard_id])
    # A shard whose bytes changed after it was listed is refused, as on a local folder.
    store._write_atomic(info.path, b"\0" * info.nbytes)
    with pytest.raises(OSError, match="corrupt"):
        store.read(info)
    store.delete(other)
    assert store.list_shards("job") == [info.shard_id]
    assert store.delete_job("job") and store.list_shards("job") == []
    assert not store.delete_job("job")


class StopAt(BaseSource):
    def __init__(self, step: int) -> None:
        self.step = step

    def decide(self, observation: Observation) -> Directive:
        return Directive(stop=observation.step >= self.step, reason="done")


def test_a_job_trains_from_an_s3_root_and_checkpoints_there(root: str, tmp_path: Path) -> None:
    store = ShardStore(root)
    manifest = FileManifest(tmp_path / "manifest", "job")
    rng = np.random.default_rng(0)
    infos = []
    for _ in range(4):
        x = rng.standard_normal((500, 8)).astype(np.float32)
        infos.append(store.write("job", x, (x[:, 0] > 0).astype(np.int64), "train"))
    x = rng.standard_normal((200, 8)).astype(np.float32)
    infos.append(store.write("job", x, (x[:, 0] > 0).astype(np.int64), "val"))
    manifest.append(infos)
    config = WorkerConfig(
        job_id="job",
        task=TaskSpec(kind="classification", input_shape=(8,), num_classes=2),
        model=ModelSpec(family="mlp", hidden=[16]),
        store_root=root,
        manifest=manifest,
        source=StopAt(60),
        batch_size=32,
        observe_every=20,
        checkpoint_every=0,
        poll_interval=0.01,
        signals=False,
        compute=ComputeSpec(idle_when_converged=False),
        replay=ReplaySpec(newest_window=16),
        data=DataSpec(resident_bytes=1 << 16),  # 64 KiB: the 2,000 samples (80 KB) stream
    )
    reader = DataReader(store, config.task, replay=config.replay, resident_bytes=1 << 16)
    reader.update(manifest.load())
    assert reader.streamed  # the job's reader streams its history from the bucket
    reader.close()
    run_loop(config, LocalRuntime(tmp_path / "run"))
    final = newest_durable(config.durable_root(), 0)
    assert final is not None and final.startswith(f"{root}/job/checkpoints/gen-0000-step-")
    loaded = load_checkpoint(final)
    assert loaded.meta.step == 60 and loaded.meta.kind == "final"
    assert loaded.meta.dataset_size == 2000
    resumed = LocalRuntime(tmp_path / "run").resume(Group(0, 1, torch.device("cpu")))
    assert resumed is not None and resumed.checkpoint.meta.step == 60
    local = resumed.checkpoint.model.state_dict()
    for name, tensor in loaded.model.state_dict().items():
        torch.testing.assert_close(tensor, local[name], rtol=0, atol=0)
