"""Compute that follows the data, end to end over REST: real Redis, MLflow server, Ray and API.

A job on a small dataset converges and says why; its worker process then uses (near) no CPU; a
resume command wakes it, it converges again, and a push wakes it within the freshness bound.
"""

from __future__ import annotations

import time

import numpy as np
import psutil
import pytest

from service.client import LifelongClient
from service.local.stack import Stack
from tests.e2e.conftest import digits_job, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# A push reaches a converged loop through its blocking read of the manifest log, at once; the
# status then goes through the supervisor. Bound: the loop's poll interval (1 s) plus the status
# round trip, with room for a loaded 2-core machine.
FRESHNESS_S = 5.0
CPU_WINDOW_S = 5.0
MAX_IDLE_CPU = 0.05  # of one core, while converged (a training worker uses about 1.0)


def _worker_pids(client: LifelongClient, job_id: str) -> list[int]:
    starts = [
        e.data for e in client.events(job_id, follow=False)
        if e.type == "status" and e.data.get("loop") == "starting"
    ]  # fmt: skip
    assert starts, "no 'starting' event with the workers' pids"
    pids = [int(p) for p in starts[-1]["pids"]]
    assert pids and all(psutil.pid_exists(p) for p in pids)
    return pids


def _cpu_share(pids: list[int], seconds: float) -> float:
    """CPU seconds the processes used over ``seconds`` of wall time, per second (1.0 = a core)."""
    procs = [psutil.Process(p) for p in pids]

    def used() -> float:
        return sum(sum(p.cpu_times()[:2]) for p in procs)  # user + system

    before, started = used(), time.monotonic()
    time.sleep(seconds)
    return (used() - before) / (time.monotonic() - started)


def _converged(client: LifelongClient, job_id: str, timeout: float) -> object:
    return wait_until(
        lambda: (j := client.get_job(job_id)).status == "converged" and j,
        timeout=timeout, what="the job to converge",
    )  # fmt: skip


def test_a_converged_job_uses_no_cpu_and_a_push_wakes_it(
    stack: Stack, client: LifelongClient, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = digits
    options = {"patience": 5, "min_improvement": 0.01, "wake_from": "best"}
    spec = {**digits_job("e2e-converged"), "compute": options}
    job = client.create_job(spec)
    client.push(job.id, x[:200], y[:200])
    wait_until(lambda: client.get_job(job.id).status in ("training", "converged"),
               timeout=120, what="the job to train")  # fmt: skip
    pids = _worker_pids(client, job.id)
    training_cpu = _cpu_share(pids, 2.0) if client.get_job(job.id).status == "training" else None

    converged = _converged(client, job.id, timeout=180)
    reason = converged.reason or ""  # type: ignore[attr-defined]
    assert reason.startswith("converged: the validation loss has not gone below "), reason
    assert "patience 5 observations" in reason and "no new data has arrived" in reason
    assert "holding the best weights" in reason
    step = converged.metrics["step"]  # type: ignore[attr-defined]
    compute = converged.metrics["compute"]  # type: ignore[attr-defined]
    assert compute["steps"] >= step and compute["flops"] > 0
    assert 0 < compute["busy_s"] <= compute["elapsed_s"]
    event = next(
        e.data for e in reversed(list(client.events(job.id, follow=False)))
        if e.type == "status" and e.data.get("loop") == "converged"
    )  # fmt: skip
    assert event["numbers"]["patience"] == 5 and event["numbers"]["dataset_size"] > 150
    assert event["held"] == "best" and event["held_val_loss"] == pytest.approx(
        event["numbers"]["best_val_loss"]
    )

    # Converged: the worker process uses (near) no CPU, and takes no step.
    idle_cpu = _cpu_share(pids, CPU_WINDOW_S)
    assert idle_cpu < MAX_IDLE_CPU, f"worker CPU while converged: {idle_cpu:.3f} of a core"
    if training_cpu is not None:  # the same measurement sees a training worker
        assert training_cpu > 5 * max(idle_cpu, 0.01), (training_cpu, idle_cpu)
    job_now = client.get_job(job.id)
    assert job_now.status == "converged" and job_now.metrics["step"] == step

    # A resume command wakes it; with no new data it converges again.
    resume = client.resume(job.id)
    assert client.wait_command(job.id, resume.id, timeout=30).status == "done"
    wait_until(lambda: client.get_job(job.id).metrics["step"] > step, timeout=30,
               what="steps after the resume")  # fmt: skip
    again = _converged(client, job.id, timeout=180)
    step = again.metrics["step"]  # type: ignore[attr-defined]

    # A push wakes it within the freshness bound, and the new data is trained on.
    pushed = time.monotonic()
    client.push(job.id, x[200:400], y[200:400])
    woken = wait_until(
        lambda: (j := client.get_job(job.id)).status != "converged" and j,
        timeout=FRESHNESS_S * 4, what="the push to wake the job", every=0.1,
    )  # fmt: skip
    delay = time.monotonic() - pushed
    assert woken.status in ("training", "growing"), woken.status  # type: ignore[attr-defined]
    assert delay < FRESHNESS_S, f"woken {delay:.1f}s after the push"
    print(f"worker CPU: {training_cpu} training, {idle_cpu:.4f} converged (of a core, over "
          f"{CPU_WINDOW_S:g} s); woken {delay:.2f} s after the push")  # fmt: skip
    trained = wait_until(
        lambda: (j := client.get_job(job.id)).metrics["step"] > step and j, timeout=30,
        what="steps on the new data",
    )  # fmt: skip
    assert trained.metrics["dataset_size"] > converged.metrics["dataset_size"]  # type: ignore[attr-defined]
    statuses = [
        e.data for e in client.events(job.id, follow=False)
        if e.type == "status" and "status" in e.data
    ]  # fmt: skip
    reasons = [s.get("reason") for s in statuses if s["status"] == "training"]
    assert "woken by a command" in reasons and "woken by new data" in reasons

    # MLflow has the convergence on generation 0's run: its reason and its numbers.
    from mlflow.tracking import MlflowClient

    assert stack.mlflow is not None
    mlflow = MlflowClient(tracking_uri=stack.mlflow.url)

    def tracked() -> object:
        gens = client.generations(job.id).generations
        run_id = gens[0].mlflow_run_id if gens else None
        if not run_id:
            return None
        run = mlflow.get_run(run_id)
        return run if "lifelong.converged" in run.data.tags else None

    run = wait_until(tracked, timeout=60, what="the convergence in MLflow")
    assert run.data.tags["lifelong.converged"].startswith("converged: ")  # type: ignore[attr-defined]
    history = mlflow.get_metric_history(run.info.run_id, "converged")  # type: ignore[attr-defined]
    ordered = sorted(history, key=lambda m: (m.step, m.timestamp))
    assert [m.value for m in ordered][:3] == [1.0, 0.0, 1.0]  # converged, resumed, converged
    assert mlflow.get_metric_history(run.info.run_id, "duty_cycle")  # type: ignore[attr-defined]

    stop = client.stop(job.id)
    assert client.wait_command(job.id, stop.id, timeout=120).status == "done"
