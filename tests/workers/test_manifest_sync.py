"""Incremental manifest sync: ranks receive the shards appended since their version; the whole
manifest only when they hold none, or when it was rewritten."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from tests.workers.digits import write_digits_job
from workers.loop import TrainLoop, WorkerConfig
from workers.runtime import LocalRuntime
from workers.shards import (
    FileManifest,
    Manifest,
    ManifestDelta,
    ShardInfo,
    ShardStore,
    manifest_delta,
)
from workers.spec import ModelSpec, TaskSpec


def _info(n: int = 1) -> ShardInfo:
    return ShardInfo(
        shard_id=uuid.uuid4().hex, path="job/shards/x.safetensors", split="train",
        num_samples=n, nbytes=1, sha256="0" * 64, created=time.time(),
    )  # fmt: skip


def test_delta_appends_and_falls_back_to_full() -> None:
    a, b, c = _info(), _info(), _info()
    v1 = Manifest(job_id="job", version=1, shards=[a])
    v3 = Manifest(job_id="job", version=3, shards=[a, b, c])
    change = manifest_delta(v1, v3)
    assert (change.full, change.base_version, change.version) == (False, 1, 3)
    assert change.shards == [b, c]
    assert change.apply(v1) == v3
    assert manifest_delta(Manifest(job_id=""), v3).full  # a rank with nothing yet
    rewritten = Manifest(job_id="job", version=4, shards=[b, c])
    assert manifest_delta(v3, rewritten).full and manifest_delta(v3, rewritten).apply(v3) == (
        rewritten
    )
    assert manifest_delta(v3, Manifest(job_id="other", version=9, shards=[a, b, c])).full
    with pytest.raises(ValueError, match="cannot apply to version 3"):
        change.apply(v3)
    unchanged = manifest_delta(v3, v3)
    assert not unchanged.full and unchanged.shards == [] and unchanged.apply(v3) is v3


def _config(root: Path, tmp_path: Path) -> WorkerConfig:
    return WorkerConfig(
        job_id="job",
        task=TaskSpec(kind="classification", input_shape=(64,), num_classes=10),
        model=ModelSpec(family="mlp", hidden=[8]),
        store_root=str(root / "data"),
        manifest=FileManifest(root / "manifest", "job"),
        checkpoint_root=str(tmp_path / "durable"),
    )


def test_the_loop_broadcasts_only_the_appended_shards(tmp_path: Path) -> None:
    root = write_digits_job(tmp_path / "job", train=100)
    store, manifest = ShardStore(str(root / "data")), FileManifest(root / "manifest", "job")
    main = TrainLoop(_config(root, tmp_path), runtime=LocalRuntime(tmp_path / "run0"))
    other = TrainLoop(_config(root, tmp_path), runtime=LocalRuntime(tmp_path / "run1"))
    main.setup()
    other.setup()
    sent: list[str] = []
    broadcast = main.group.broadcast_str

    def recording(text: str | None) -> str:
        out = broadcast(text)
        sent.append(out)
        return out

    main.group.broadcast_str = recording  # type: ignore[method-assign]
    rng = np.random.default_rng(0)
    for _ in range(2):
        main.sync_manifest()
        other._adopt_manifest(sent[-1])  # what another rank does with the broadcast
    for i in range(20):
        x = rng.random((5, 64), dtype=np.float32)
        manifest.append([store.write("job", x, np.full(5, i % 10), "train")])
        if i % 4 == 3:
            main.sync_manifest()
            other._adopt_manifest(sent[-1])
    changes = [ManifestDelta.model_validate_json(t) for t in sent]
    assert changes[0].full and len(changes[0].shards) == 2  # the first: everything there was
    assert not changes[1].full and changes[1].shards == []  # nothing new: nothing travels
    assert all(not c.full and len(c.shards) == 4 for c in changes[2:])
    sizes = [len(t) for t in sent[2:]]
    assert max(sizes) - min(sizes) < 40  # the message does not grow with the manifest
    assert main.reader.manifest == other.reader.manifest == manifest.load()
    assert other.reader.train_size == 100 + 20 * 5
    # A rewritten manifest (shards removed) travels whole, and the readers start over.
    current = manifest.load()
    rewritten = current.model_copy(update={"shards": current.shards[1:], "version": 99})
    manifest.path.write_text(rewritten.model_dump_json())
    main.sync_manifest()
    other._adopt_manifest(sent[-1])
    assert ManifestDelta.model_validate_json(sent[-1]).full
    assert other.reader.train_size == 20 * 5 and other.reader.manifest.version == 99
    for loop in (main, other):
        loop.cleanup()


@pytest.mark.integration
def test_redis_manifest_reads_only_the_appended_entries(redis_url: str, redis_prefix: str) -> None:
    from service.jobs.spec import validate_job_spec
    from service.state.store import RedisStore

    spec = validate_job_spec(
        {"name": "sync", "task": {"input_shape": [4], "num_classes": 3},
         "model": {"family": "mlp", "hidden": [8]}},
        max_workers=1,
    )  # fmt: skip
    store = RedisStore(redis_url, redis_prefix)
    try:
        job = store.create_job(spec, max_jobs=100, param_count=67).id
        source = store.manifest_source(job)
        empty = Manifest(job_id="")  # what a rank holds at its start
        first = source.changes_since(empty)
        assert first.full and first.version == 0
        store.append_shards(job, [_info(3), _info(2)])
        known = first.apply(empty)
        change = source.changes_since(known)
        assert not change.full and len(change.shards) == 2  # appended to an empty manifest
        known = change.apply(known)
        appended = [_info(4)]
        store.append_shards(job, appended)
        ranges: list[tuple[object, ...]] = []
        pipeline = source.client.pipeline

        def spying(*args: object, **kwargs: object) -> object:
            pipe = pipeline(*args, **kwargs)  # type: ignore[arg-type]
            lrange = pipe.lrange

            def recorded(key: str, start: int, end: int) -> object:
                ranges.append((start, end))
                return lrange(key, start, end)

            pipe.lrange = recorded  # type: ignore[method-assign]
            return pipe

        source.client.pipeline = spying  # type: ignore[method-assign]
        change = source.changes_since(known)
        assert not change.full and (change.base_version, change.version) == (1, 2)
        assert [s.shard_id for s in change.shards] == [s.shard_id for s in appended]
        assert ranges == [(2, -1)]  # only the entries after the two it holds
        assert change.apply(known) == source.load()
        waited = source.wait_changes(change.apply(known), 0.05)  # nothing new: times out
        assert not waited.full and waited.shards == [] and waited.version == 2
    finally:
        store.close()
