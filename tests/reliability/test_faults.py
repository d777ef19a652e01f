"""Faults against the whole stack (``service.local.stack.Stack``: Redis with AOF, a Ray head, MLflow on
SQLite, the API as ``lifelong serve`` with API keys), with one job training on Ray.

The tests share the stack and the job and run in file order, each leaving the job training:

1. a Ray worker process killed (SIGKILL): the job resumes from its last checkpoint with the same
   generation and architecture, and its status says so;
2. a crash between a growth's transform and its checkpoint (a test-only fault point of
   ``workers.loop``): the job resumes before the growth, consistently, and the command says why;
3. a crash while the growth's opening checkpoint is written in the background, the grown model
   already training: the same, before the growth;
4. a crash right after the growth's checkpoint, before the supervisor heard of the growth: the
   job resumes after it, consistently;
5. the MLflow server stopped for 60 s: training goes on, and everything is in MLflow afterwards;
6. 8 pushers for 60 s (``bench.load``): exact sample count, error rate and latency;
7. the API keys appear in no log, MLflow param or tag, or error answer.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_digits

from bench.load import check_stored, run_load
from service.client import LifelongClient
from service.local.stack import Stack
from service.state.store import RedisStore
from tests.reliability._support import EventLog, wait_until
from workers.loop import FAULT_AFTER_TRANSFORM_ENV
from workers.shards import ShardStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OUTAGE_S = float(os.environ.get("LIFELONG_TEST_OUTAGE_S", "60"))
LOAD_S = float(os.environ.get("LIFELONG_TEST_LOAD_S", "60"))
KEYS = {
    "admin": "adm-" + "7f3c9a1e5b2d4f60" * 2,
    "writer": "wrt-" + "0e8d6c4b2a193857" * 2,
    "reader": "rdr-" + "5a4b3c2d1e0f9687" * 2,
}
SPEC: dict[str, Any] = {
    "name": "faults",
    "task": {"kind": "classification", "input_shape": [64], "num_classes": 10},
    "model": {"family": "mlp", "hidden": [16, 16]},
    "batch_size": 32,
    "val_fraction": 0.1,
    "growth": {"policies": ["manual"]},  # growth only when a test asks for it
    "compute": {"idle_when_converged": False},  # faults are watched through steps that go on
}


@dataclass
class Faulty:
    """The stack, the training job, clients with each role's key, and the job's event log."""

    stack: Stack
    job_id: str
    admin: LifelongClient
    writer: LifelongClient
    store: RedisStore
    log: EventLog
    triggers: Path

    @property
    def url(self) -> str:
        assert self.stack.api is not None
        return self.stack.api.url

    def job(self) -> Any:
        return self.admin.get_job(self.job_id)

    def step(self) -> int:
        return int(self.job().metrics.get("step", 0))

    def loop_starts(self, mark: int = 0) -> list[dict[str, Any]]:
        return [e.data for e in self.log.since(mark, "status") if e.data.get("loop") == "starting"]

    def wait_training(self, mark: int, timeout: float, what: str) -> None:
        """Observations after ``mark`` that show the loop training again."""
        self.log.wait(lambda e: e.type == "observation", after=mark, timeout=timeout, what=what)

    def deepen_into_crash(self, fault: str, after: str) -> tuple[int, Any, Any]:
        """Arm the fault point (``fault``: 'transform', 'writing' or 'checkpoint'), ask for a
        deepen after ``after``, and wait until the loop restarted and trains again. Returns the
        event-log mark taken before, the loop's 'starting' event and the grow command's outcome."""
        mark = self.log.mark()
        (self.triggers / self.job_id).write_text(fault)
        command = self.admin.grow(self.job_id, "deepen", after=after)
        start = self.log.wait(
            lambda e: e.type == "status" and e.data.get("loop") == "starting",
            after=mark,
            timeout=240,
            what=f"the loop to start again after the crash at '{fault}' in the growth",
        )
        outcome = self.admin.wait_command(self.job_id, command.id, timeout=60)
        self.wait_training(self.log.events.index(start), 60, "observations after the crash")
        assert not (self.triggers / self.job_id).exists(), "the fault point was never reached"
        return mark, start, outcome


@pytest.fixture(scope="module")
def faulty(request: pytest.FixtureRequest) -> Iterator[Faulty]:
    # A short path: Ray's socket paths under it must stay below 108 bytes.
    workdir = Path(tempfile.mkdtemp(prefix="lf-"))
    failed_before = request.session.testsfailed
    triggers = workdir / "fault-triggers"
    triggers.mkdir()
    keys = json.dumps([f"{role}:{key}" for role, key in KEYS.items()])
    api_env = {
        "LIFELONG_API_KEYS": keys,
        "LIFELONG_OBSERVE_EVERY": "20",
        "LIFELONG_CHECKPOINT_EVERY": "100",
    }
    with pytest.MonkeyPatch.context() as mp:
        # The Ray nodes inherit this environment, and so every train worker sees the fault point.
        mp.setenv(FAULT_AFTER_TRANSFORM_ENV, str(triggers))
        stack = Stack(workdir / "stack", cpus_per_node=2, api_env=api_env).start()
    assert stack.api is not None and stack.redis is not None
    admin = LifelongClient(stack.api.url, api_key=KEYS["admin"], timeout=30)
    writer = LifelongClient(stack.api.url, api_key=KEYS["writer"], timeout=30)
    store = RedisStore(stack.redis.url, "lifelong:")
    try:
        job = admin.create_job(SPEC)
        x, y = load_digits(return_X_y=True)
        writer.push(job.id, x[:800].astype(np.float32), y[:800])
        faulty = Faulty(stack, job.id, admin, writer, store, EventLog(admin, job.id), triggers)
        faulty.log.wait(
            lambda e: e.type == "observation",
            after=0,
            timeout=240,
            what="the job's first observation on Ray",
        )
        yield faulty
    finally:
        admin.close()
        writer.close()
        store.close()
        stack.stop()
        if request.session.testsfailed > failed_before:
            print(f"\nfault stack logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def test_killed_worker_resumes_from_its_checkpoint(faulty: Faulty) -> None:
    # A grown model first, so that "the same architecture" means more than the base spec.
    command = faulty.admin.grow(faulty.job_id, "widen", factor=2)
    done = faulty.admin.wait_command(faulty.job_id, command.id, timeout=120)
    assert done.status == "done", done
    assert done.result is not None
    grown_params = done.result["params_after"]
    generation = done.result["generation"]
    grown_at = faulty.admin.generations(faulty.job_id).generations[-1].started_step
    wait_until(
        lambda: (
            (faulty.admin.generations(faulty.job_id).generations[-1].checkpoint_step or 0)
            > grown_at
        ),
        timeout=60,
        what="a periodic checkpoint of the grown generation",
    )
    architecture = faulty.admin.architecture(faulty.job_id)
    mark = faulty.log.mark()
    victim = faulty.loop_starts()[-1]["pids"][0]
    step_at_kill = faulty.step()

    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    start = faulty.log.wait(
        lambda e: e.type == "status" and e.data.get("loop") == "starting",
        after=mark,
        timeout=180,
        what="the loop to start again after the worker was killed",
    )
    faulty.wait_training(mark, 60, "observations after the restart")
    restarted_in = time.monotonic() - killed

    assert victim not in start.data["pids"]
    resumed = start.data["resumed_from"]
    assert resumed["generation"] == generation
    assert resumed["param_count"] == grown_params
    assert resumed["records"] == 1
    assert grown_at <= resumed["step"] <= step_at_kill + 200
    statuses = [e.data for e in faulty.log.since(mark, "status") if "status" in e.data]
    expected = (
        f"workers restarted after a failure; resumed from the checkpoint of step "
        f"{resumed['step']} (generation {generation})"
    )
    assert any(s["status"] == "pending" and s["reason"] == expected for s in statuses), statuses
    assert statuses[-1]["status"] == "training"
    observed = list(faulty.log.observations(mark))
    assert observed[0]["step"] > resumed["step"]
    assert {(o["generation"], o["param_count"]) for o in observed} == {(generation, grown_params)}
    assert faulty.admin.architecture(faulty.job_id)["records"] == architecture["records"]
    assert len(faulty.admin.generations(faulty.job_id).generations) == generation + 1
    print(f"\nworker kill: resumed from step {resumed['step']} in {restarted_in:.1f} s")


def test_crash_between_growth_transform_and_checkpoint(faulty: Faulty) -> None:
    before = faulty.job()
    generations = faulty.admin.generations(faulty.job_id).generations
    records = faulty.admin.architecture(faulty.job_id)["records"]
    crash = faulty.deepen_into_crash("transform", after="act1")
    _assert_resumed_before_the_growth(faulty, before, generations, records, crash=crash)

    # The same request again goes through: consistently after the growth.
    again = faulty.admin.grow(faulty.job_id, "deepen", after="act1")
    done = faulty.admin.wait_command(faulty.job_id, again.id, timeout=120)
    assert done.status == "done", done
    assert done.result is not None
    assert done.result["generation"] == before.generation + 1
    assert faulty.job().generation == before.generation + 1
    wait_until(
        lambda: len(faulty.admin.architecture(faulty.job_id)["records"]) == len(records) + 1,
        timeout=60,
        what="the grown generation's checkpoint to serve its architecture",
    )


def test_crash_while_the_growth_checkpoint_is_written_in_the_background(faulty: Faulty) -> None:
    """The grown model trains while its opening checkpoint is written; the workers die before it
    is whole: nothing of the growth was announced, so the job resumes before it."""
    before = faulty.job()
    generations = faulty.admin.generations(faulty.job_id).generations
    records = faulty.admin.architecture(faulty.job_id)["records"]
    crash = faulty.deepen_into_crash("writing", after="act1")
    _assert_resumed_before_the_growth(faulty, before, generations, records, crash=crash)


def _assert_resumed_before_the_growth(
    faulty: Faulty,
    before: Any,
    generations: Any,
    records: Any,
    *,
    crash: tuple[int, Any, Any],
) -> None:
    """Consistently before the growth: the checkpoint, the job, the architecture, the generation
    records and every observation since say generation G and its parameters, nowhere G + 1."""
    mark, start, outcome = crash
    resumed = start.data["resumed_from"]
    assert (resumed["generation"], resumed["param_count"]) == (
        before.generation,
        before.param_count,
    )
    assert outcome.status == "failed", outcome
    assert outcome.detail == (
        "the workers failed while applying this growth, before its checkpoint was complete; "
        f"the job resumed from the checkpoint of step {resumed['step']} (generation "
        f"{before.generation}), without it. Send the request again to retry."
    )
    after = faulty.job()
    assert (after.status, after.generation, after.param_count) == (
        "training",
        before.generation,
        before.param_count,
    )
    assert faulty.admin.architecture(faulty.job_id)["records"] == records
    assert len(faulty.admin.generations(faulty.job_id).generations) == len(generations)
    assert not faulty.log.since(mark, "generation")
    observed = [o for o in faulty.log.observations(mark) if o["step"] > resumed["step"]]
    assert observed
    assert {(o["generation"], o["param_count"]) for o in observed} == {
        (before.generation, before.param_count)
    }
    statuses = [e.data for e in faulty.log.since(mark, "status") if "status" in e.data]
    expected = (
        f"workers restarted after a failure; resumed from the checkpoint of step "
        f"{resumed['step']} (generation {before.generation})"
    )
    assert any(s["status"] == "pending" and s["reason"] == expected for s in statuses), statuses


def test_crash_right_after_the_growth_checkpoint(faulty: Faulty) -> None:
    """The other side of the growth: the workers die once its checkpoint is complete, before the
    growth's event reached the supervisor (it comes with the first step of the grown model)."""
    before = faulty.job()
    mark, start, outcome = faulty.deepen_into_crash("checkpoint", after="act2")
    resumed = start.data["resumed_from"]
    generation = resumed["generation"]
    # Consistently after the growth: the checkpoint, the command, the job, the generation records
    # (opened by the supervisor from the checkpoint's lineage: it never heard of the growth), the
    # architecture and every observation since say generation G + 1.
    assert (generation, resumed["kind"]) == (before.generation + 1, "growth")
    assert outcome.status == "done", outcome
    assert outcome.detail == (
        f"grown to generation {generation} (the workers restarted after the growth's checkpoint)"
    )
    job = faulty.job()
    assert (job.status, job.generation, job.param_count) == (
        "training",
        generation,
        resumed["param_count"],
    )
    generations = faulty.admin.generations(faulty.job_id).generations
    assert [g.generation for g in generations] == list(range(generation + 1))
    assert generations[-1].param_count == resumed["param_count"]
    assert generations[-1].op is not None and generations[-1].op["after"] == "act2"
    assert generations[-1].policy == "manual"
    wait_until(
        lambda: len(faulty.admin.architecture(faulty.job_id)["records"]) == generation,
        timeout=60,
        what=f"the architecture of generation {generation}",
    )
    observed = [o for o in faulty.log.observations(mark) if o["step"] > resumed["step"]]
    assert observed
    assert {(o["generation"], o["param_count"]) for o in observed} == {
        (generation, resumed["param_count"])
    }
    print(
        f"\ncrash after the growth checkpoint: resumed at generation {generation} ({outcome.detail})"
    )


def _mlflow_ids(faulty: Faulty) -> tuple[str | None, dict[int, str]]:
    key = faulty.store.keys.job(faulty.job_id)
    info = faulty.store.client.hgetall(f"{key}:mlflow")
    runs = faulty.store.client.hgetall(f"{key}:mlflow:runs")
    return info.get("experiment_id"), {int(g): r for g, r in runs.items()}


def _outbox(faulty: Faulty) -> int:
    return int(faulty.store.client.llen(f"{faulty.store.keys.job(faulty.job_id)}:mlflow:outbox"))


def test_mlflow_outage_does_not_stop_training_and_is_backfilled(faulty: Faulty) -> None:
    from mlflow.tracking import MlflowClient

    mlflow_server = faulty.stack.mlflow
    assert mlflow_server is not None
    key = faulty.store.keys.job(faulty.job_id)
    mark = faulty.log.mark()
    step_at_stop = faulty.step()
    mlflow_server.stop()
    stopped = time.monotonic()
    steps = [step_at_stop]
    grew = None
    felt = False
    try:
        while time.monotonic() - stopped < OUTAGE_S:
            time.sleep(min(10.0, max(0.0, OUTAGE_S - (time.monotonic() - stopped))))
            steps.append(faulty.step())
            felt = felt or bool(faulty.store.client.hget(f"{key}:mlflow", "last_error"))
            if grew is None:  # a generation opened during the outage must reach MLflow too
                command = faulty.admin.grow(faulty.job_id, "widen", factor=1.5)
                grew = faulty.admin.wait_command(faulty.job_id, command.id, timeout=60)
                assert grew.status == "done", grew
        step_at_restart = faulty.step()
        pending = _outbox(faulty)
    finally:
        mlflow_server.start()  # the same port and store (the tests after this one need it)

    # Training went on through the outage, and the outage was felt by the tracker.
    assert all(b > a for a, b in itertools.pairwise(steps)), steps
    assert felt, "the tracker never saw the outage"
    assert pending > 0
    faulty.log.poll()
    outage = [o for o in faulty.log.observations(mark) if o["step"] <= step_at_restart]
    assert len(outage) >= 10, f"only {len(outage)} observations during the outage"
    generation = faulty.job().generation
    assert grew is not None and grew.result is not None
    assert grew.result["generation"] == generation

    # Back: everything reaches MLflow, with its original steps.
    wait_until(
        lambda: _outbox(faulty) < 50 and set(_mlflow_ids(faulty)[1]) == set(range(generation + 1)),
        timeout=240,
        what="the tracker to catch up after the outage",
    )
    experiment_id, run_ids = _mlflow_ids(faulty)
    assert experiment_id is not None
    client = MlflowClient(tracking_uri=mlflow_server.url)
    runs = client.search_runs([experiment_id], max_results=100)
    # The generation runs (the job's parent run above them has no generation).
    by_generation = {
        int(r.data.tags["lifelong.generation"]): r
        for r in runs
        if "lifelong.generation" in r.data.tags
    }
    assert set(by_generation) == set(range(generation + 1))
    assert {g: r.info.run_id for g, r in by_generation.items()} == run_ids
    assert by_generation[generation].data.tags["mlflow.parentRunId"] == run_ids[generation - 1]
    missing: list[tuple[int, int]] = []
    for gen in {o["generation"] for o in outage}:
        logged = {m.step for m in client.get_metric_history(run_ids[gen], "train_loss")}
        missing += [
            (gen, o["step"]) for o in outage if o["generation"] == gen and o["step"] not in logged
        ]
    assert not missing, (
        f"{len(missing)} observations of the outage are not in MLflow: {missing[:5]}"
    )
    print(
        f"\nmlflow outage: {OUTAGE_S:.0f} s, steps {step_at_stop} → {step_at_restart}, "
        f"{len(outage)} observations and generation {generation} opened meanwhile, "
        f"{pending} operations queued, all in MLflow afterwards"
    )


def test_load_of_8_pushers_against_the_training_job(faulty: Faulty) -> None:
    before = faulty.store.dataset_summary(faulty.job_id)
    step_before = faulty.step()
    mark = faulty.log.mark()
    result = run_load(
        faulty.url,
        faulty.job_id,
        clients=8,
        duration=LOAD_S,
        rate=5.0,
        batch=64,
        features=64,
        classes=10,
        api_key=KEYS["writer"],
    )
    print(f"\nload: {result.describe()}")
    assert result.errors == 0, dict(result.statuses)
    assert result.acknowledged >= 8 * LOAD_S  # at least one push per client-second was answered
    shards = ShardStore(str(faulty.stack.data_root))
    counts = check_stored(faulty.store, shards, faulty.job_id, result.acked_ids)
    assert counts == {
        "stored": before.train_samples + before.val_samples + len(result.acked_ids),
        "load": len(result.acked_ids),
        "unacknowledged": 0,
    }
    after = faulty.store.dataset_summary(faulty.job_id)
    assert after.train_samples + after.val_samples == counts["stored"]
    assert faulty.step() > step_before
    faulty.log.wait(
        lambda e: e.type == "observation" and e.data["dataset_size"] > before.train_samples,
        after=mark,
        timeout=120,
        what="the training loop to take in the pushed data",
    )


def test_no_secret_in_logs_mlflow_or_answers(faulty: Faulty) -> None:
    from mlflow.tracking import MlflowClient

    secrets = [key.encode() for key in KEYS.values()]
    # Error answers: a wrong key, a key of too low a role, a malformed header.
    answers = [
        httpx.get(f"{faulty.url}/v1/jobs", headers={"Authorization": f"Bearer {KEYS['admin']}x"}),
        httpx.post(
            f"{faulty.url}/v1/jobs/{faulty.job_id}/stop",
            headers={"Authorization": f"Bearer {KEYS['reader']}"},
        ),
        httpx.get(f"{faulty.url}/v1/jobs", headers={"Authorization": KEYS["admin"]}),
    ]
    assert [a.status_code for a in answers] == [401, 403, 401]
    for answer in answers:
        assert not any(s[:12] in answer.content for s in secrets), answer.text
    # Every file the stack wrote: logs of the API, Ray, MLflow; Redis' append-only file; data.
    leaks = []
    files = [p for p in faulty.stack.workdir.rglob("*") if p.is_file() and not p.is_symlink()]
    for path in files:
        try:
            content = path.read_bytes()
        except OSError:
            continue
        leaks += [f"{path}: {s[:4].decode()}…" for s in secrets if s in content]
    assert not leaks, leaks
    # MLflow: every run's params and tags.
    assert faulty.stack.mlflow is not None
    experiment_id, _ = _mlflow_ids(faulty)
    client = MlflowClient(tracking_uri=faulty.stack.mlflow.url)
    values = [
        value
        for run in client.search_runs([str(experiment_id)], max_results=100)
        for value in (*run.data.params.values(), *run.data.tags.values())
    ]
    assert values
    assert not [v for v in values for s in secrets if s.decode() in v]
    print(f"\nsecrets: {len(files)} files and {len(values)} MLflow values checked")
