"""The generation ledger against a real Redis: records, the MLflow operations it queues (the
tracker's producer side, which never calls MLflow), checkpoint copies and the serving checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from growth_policy import GrowthOp, Observation
from service.jobs.spec import validate_job_spec
from service.runtime.generations import GenerationLedger, GenerationRecord
from service.runtime.releases import CHAMPION
from service.runtime.tracking import MlflowTracker
from service.state.store import RedisStore
from tests.service.conftest import JOB_SPEC
from workers.checkpoint import GenerationInfo, checkpoint_path, durable_root, tracked_copy_path
from workers.sources import CheckpointEvent, GrowthEvent

pytestmark = pytest.mark.integration


@pytest.fixture
def ledger(store: RedisStore, tmp_path: Path) -> GenerationLedger:
    spec = validate_job_spec(JOB_SPEC, max_workers=4)
    job = store.create_job(spec, max_jobs=100, param_count=212)
    tracker = MlflowTracker.for_job(
        store.client, store.keys, job_id=job.id, job_name=job.name,
        tracking_uri="unused: producers never call MLflow",
    )  # fmt: skip
    return GenerationLedger(
        store, job.id, tracker=tracker, spec=spec, data_root=str(tmp_path / "data")
    )


def _ops(ledger: GenerationLedger) -> list[dict[str, Any]]:
    key = ledger.store.keys.mlflow_outbox(ledger.job_id)
    return [json.loads(raw) for raw in ledger.store.client.lrange(key, 0, -1)]


def _checkpoint(path: Path, generation: int, step: int, kind: str = "periodic") -> CheckpointEvent:
    path.mkdir(parents=True, exist_ok=True)
    (path / "meta.json").write_text("{}")
    return CheckpointEvent(
        kind=kind, step=step, generation=generation, param_count=212,  # type: ignore[arg-type]
        manifest_version=1, path=str(path), durable=False, seconds=0.1,
    )  # fmt: skip


def test_a_generation_opens_once_with_its_run_tags_and_params(ledger: GenerationLedger) -> None:
    for _ in range(2):  # a restarted supervisor opens the same generation again
        ledger.open(0, parent=None, op=None, reason="base model", policy="base", step=0,
                    param_count=212)  # fmt: skip
    [record] = ledger.records()
    assert (record.generation, record.parent, record.policy, record.param_count) == (
        0, None, "base", 212,
    )  # fmt: skip
    [op] = _ops(ledger)
    assert op["kind"] == "open" and op["gen"] == 0
    assert op["tags"]["lifelong.op"] == "base"
    assert op["tags"]["lifelong.job_name"] == "digits"
    assert op["params"]["model_family"] == "mlp" and op["params"]["param_count"] == "212"


def test_a_growth_closes_one_generation_and_opens_the_next(
    ledger: GenerationLedger, tmp_path: Path
) -> None:
    ledger.open(0, parent=None, op=None, reason="base model", policy="base", step=0,
                param_count=212)  # fmt: skip
    op = GrowthOp(op="widen", factor=2.0)
    growth = GrowthEvent(
        step=50, generation_before=0, generation_after=1, op=op, reason="data grew",
        policy="data_scaling", params_before=212, params_after=420, max_abs_error=2e-7,
        val_loss_before=0.5, val_loss_after=0.5, ranks_identical=True, transform_s=0.1,
        eval_s=0.1, checkpoint_s=0.1, pause_s=0.3,
    )  # fmt: skip
    # The growth's opening checkpoint arrives before the growth event that opens generation 1.
    opening = _checkpoint(tmp_path / "ray" / "a", 1, 50, "growth")
    ledger.checkpointed(opening)
    assert ledger.get(1) is None
    ledger.close(0, step=50)
    ledger.open(1, parent=0, op=op.model_dump(mode="json"), reason="data grew",
                policy="data_scaling", step=50, param_count=420, growth=growth)  # fmt: skip
    first, second = ledger.records()
    assert (first.closed_step, second.parent, second.started_step) == (50, 0, 50)
    assert second.max_abs_error == 2e-7 and second.val_loss_after == 0.5
    assert (second.checkpoint, second.checkpoint_step) == (opening.path, 50)
    kinds = [(o["kind"], o["gen"]) for o in _ops(ledger)]
    # The opening checkpoint is logged, never released: it is the untrained grown model.
    assert kinds == [("open", 0), ("story", 0), ("close", 0), ("open", 1), ("artifacts", 1)]
    assert ledger.releases() == []
    copy = Path(tracked_copy_path(ledger.data_root or "", ledger.job_id, 1, "checkpoint"))
    assert (copy / "meta.json").exists()
    assert _ops(ledger)[4]["path"] == str(copy)
    # A newer checkpoint without a validation measured at its step is only recorded.
    ledger.checkpointed(_checkpoint(tmp_path / "ray" / "b", 1, 100))
    assert len(_ops(ledger)) == 5
    assert ledger.get(1) == GenerationRecord(**{**second.__dict__, "checkpoint":
                                                str(tmp_path / "ray" / "b"), "checkpoint_step": 100})  # fmt: skip


def test_catch_up_opens_the_generations_of_a_checkpoints_lineage(ledger: GenerationLedger) -> None:
    ledger.open(0, parent=None, op=None, reason="base model", policy="base", step=0,
                param_count=212)  # fmt: skip
    lineage = [
        GenerationInfo(generation=0, opened_at_step=0, param_count=212, records=0),
        GenerationInfo(generation=1, opened_at_step=70, op={"op": "deepen", "after": "1"},
                       reason="plateau", policy="plateau", param_count=484, records=1),
    ]  # fmt: skip
    ledger.catch_up(2, lineage, step=90, param_count=900)
    records = ledger.records()
    assert [(r.generation, r.started_step, r.policy, r.param_count) for r in records] == [
        (0, 0, "base", 212), (1, 70, "plateau", 484), (2, 90, "unknown", 900),
    ]  # fmt: skip
    assert [r.closed_step for r in records] == [70, 90, None]


def test_an_older_record_reads_and_the_durable_copy_serves(
    ledger: GenerationLedger, store: RedisStore
) -> None:
    old = {"generation": 0, "parent": None, "op": None, "reason": "base model", "policy": "base",
           "started_step": 0, "param_count": 212, "records": 0, "checkpoint": "/gone/ckpt",
           "checkpoint_step": 10}  # fmt: skip
    store.client.hset(store.keys.generations(ledger.job_id), "0", json.dumps(old))
    reader = GenerationLedger(store, ledger.job_id, data_root=ledger.data_root)
    [record] = reader.records()
    assert record.checkpoint == "/gone/ckpt"
    assert reader.checkpoint_of(record) is None
    root = durable_root(ledger.data_root or "", ledger.job_id)
    for step in (20, 40):
        folder = Path(checkpoint_path(root, 0, step))
        folder.mkdir(parents=True)
        (folder / "meta.json").write_text("{}")
    assert reader.checkpoint_of(record) == checkpoint_path(root, 0, 40)
    with pytest.raises(RuntimeError, match="reads only"):
        reader.close(0, step=50)


def _observe(ledger: GenerationLedger, generation: int, step: int, accuracy: float) -> None:
    ledger.observed(
        Observation(step=step, generation=generation, generation_step=step, samples_seen=step * 64,
                    passes=1.0, dataset_size=1000, train_loss=0.5, val_loss=1.0 - accuracy,
                    val_metric=accuracy, param_count=212, wall_time=float(step))
    )  # fmt: skip


def _open(ledger: GenerationLedger, generation: int, op: str | None, step: int) -> None:
    if generation:
        ledger.close(generation - 1, step=step)
    ledger.open(generation, parent=generation - 1 if generation else None,
                op={"op": op} if op else None, reason="test", policy="manual", step=step,
                param_count=212)  # fmt: skip


def _trained(ledger: GenerationLedger, where: Path, gen: int, step: int, kind: str = "periodic",
             *, accuracy: float | None = None) -> None:  # fmt: skip
    if accuracy is not None:
        _observe(ledger, gen, step, accuracy)
    event = _checkpoint(where / f"g{gen}s{step}", gen, step, kind)
    ledger.checkpointed(event.model_copy(update={"wall_time": float(step)}))


def test_releases_are_trained_checkpoints_and_the_champion_moves_on_a_margin(
    store: RedisStore, tmp_path: Path
) -> None:
    spec = validate_job_spec(
        {**JOB_SPEC, "release": {"every": 100, "every_s": 0, "margin": 0.01}}, max_workers=4
    )
    job = store.create_job(spec, max_jobs=100, param_count=212)
    tracker = MlflowTracker.for_job(store.client, store.keys, job_id=job.id, job_name=job.name,
                                    tracking_uri="unused")  # fmt: skip
    ledger = GenerationLedger(store, job.id, tracker=tracker, spec=spec,
                              data_root=str(tmp_path / "data"))  # fmt: skip
    _open(ledger, 0, None, 0)
    _trained(ledger, tmp_path, 0, 0, "start")  # the untrained base model: never a release
    _trained(ledger, tmp_path, 0, 100, accuracy=0.50)  # release 1, champion
    _trained(ledger, tmp_path, 0, 150, accuracy=0.70)  # better, but within `every` steps
    _trained(ledger, tmp_path, 0, 200, accuracy=0.45)  # worse than the generation's best
    _trained(ledger, tmp_path, 0, 300, accuracy=0.80)  # release 2, champion
    _trained(ledger, tmp_path, 0, 350, "close", accuracy=0.805)  # close: release 3, within margin
    _open(ledger, 1, "widen", 350)
    _trained(ledger, tmp_path, 1, 350, "growth")  # the opening copy: never a release
    _trained(ledger, tmp_path, 1, 500, accuracy=0.90)  # release 4, champion
    _trained(ledger, tmp_path, 1, 600, "close", accuracy=0.93)  # release 5 (close), champion
    _open(ledger, 2, "shrink_perturb", 600)
    _trained(ledger, tmp_path, 2, 700, accuracy=0.40)  # the dip: released, never champion
    _trained(ledger, tmp_path, 2, 800, accuracy=0.60)  # release 7, better in its generation
    _trained(ledger, tmp_path, 2, 900, "final", accuracy=0.85)  # release 8 (final)
    releases = ledger.releases()
    assert [(r.number, r.generation, r.step, r.kind) for r in releases] == [
        (1, 0, 100, "periodic"), (2, 0, 300, "periodic"), (3, 0, 350, "close"),
        (4, 1, 500, "periodic"), (5, 1, 600, "close"), (6, 2, 700, "periodic"),
        (7, 2, 800, "periodic"), (8, 2, 900, "final"),
    ]  # fmt: skip
    assert [CHAMPION in r.aliases for r in releases] == [
        True, True, False, True, True, False, False, False,
    ]  # fmt: skip
    champion = ledger.release(CHAMPION)
    assert champion is not None and (champion.number, champion.val_metric) == (5, 0.93)
    assert [(ledger.release(f"generation-{g}") or releases[0]).number for g in range(3)] == [
        3,
        5,
        8,
    ]
    fifth = releases[4]
    assert fifth.tags() == {
        "lifelong.generation": "1", "lifelong.step": "600", "lifelong.samples_seen": "38400",
        "lifelong.val_accuracy": "0.93", "lifelong.val_metric": "0.93",
        "lifelong.parent_version": "4", "lifelong.growth_op": "widen",
        "lifelong.checkpoint_kind": "close", "lifelong.release": "5",
    }  # fmt: skip
    # Each release is a copy of its checkpoint, queued to MLflow in order.
    assert (Path(fifth.path) / "meta.json").exists()
    queued = [o["release"]["number"] for o in _ops(ledger) if o["kind"] == "release"]
    assert queued == list(range(1, 9))
    # A restarted supervisor that hears the same checkpoint again releases nothing twice.
    _trained(ledger, tmp_path, 2, 900, "final", accuracy=0.85)
    assert len(ledger.releases()) == 8
