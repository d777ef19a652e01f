"""System speed of the whole service: start-up, job start, data and command latency, the demo.

Measured on the real embedded stack (Redis with AOF, one Ray node, MLflow server, the API), over
REST only, in one run:

- the stack's start-up, per part;
- ``POST /v1/jobs`` (with a first push right after it) to the first training step, read from the
  job's event stream: this is mostly Ray Train starting its controller and workers;
- a push to the first observation that counts its samples (the loop picks new shards up at its
  next pass);
- ``POST …/grow`` to the command being done (the growth is applied at the next observation);
- the demo's wall time (``lifelong demo``): the default demo in the full version; in the quick
  version the same demo with 5-second stages, and the table says which.

    python -m bench.system            # full: 3 jobs, the default demo
    python -m bench.system --quick    # 1 job, the demo with short stages
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from rich.console import Console
from sklearn.datasets import load_digits

from bench._report import table, write_section
from service.client import LifelongClient
from service.local.demo import DemoConfig, run_demo
from service.local.stack import Stack

SPEC = {
    "name": "bench-system",
    "task": {"kind": "classification", "input_shape": [64], "num_classes": 10},
    "model": {"family": "mlp", "hidden": [32, 32]},
    "batch_size": 64,
    "growth": {"policies": ["manual"]},
}


def _wait(check: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if check():
            return time.perf_counter() - started
        time.sleep(0.05)
    raise TimeoutError(f"{what} did not happen within {timeout:.0f}s")


def measure_job(client: LifelongClient, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """One job: create+push → first step, push → trained on, grow → done; then stop it."""
    started = time.perf_counter()
    job = client.create_job(SPEC)
    client.push(job.id, x[:600], y[:600])

    def stepping() -> bool:
        return int((client.get_job(job.id).metrics or {}).get("step", 0)) > 0

    _wait(stepping, 300, "the first training step")
    first_step = time.perf_counter() - started
    version = client.push(job.id, x[600:1200], y[600:1200]).train_samples
    pushed = time.perf_counter()

    def counted() -> bool:
        metrics = client.get_job(job.id).metrics or {}
        return int(metrics.get("dataset_size", 0)) >= version

    _wait(counted, 120, "the pushed samples to be trained on")
    trained_on = time.perf_counter() - pushed
    asked = time.perf_counter()
    command = client.grow(job.id, "widen", factor=2)
    done = client.wait_command(job.id, command.id, timeout=120, interval=0.05)
    grow_s = time.perf_counter() - asked
    if done.status != "done":
        raise RuntimeError(f"growth failed: {done.detail}")
    stop = client.stop(job.id)
    client.wait_command(job.id, stop.id, timeout=120)
    return {"first_step_s": first_step, "push_to_trained_s": trained_on, "grow_s": grow_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    jobs = 1 if args.quick else 3
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    y = y.astype(np.int64)
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory(prefix="lifelong-bench-") as tmp:
        stack = Stack(workdir=Path(tmp) / "stack", ray_nodes=1)
        started = time.perf_counter()
        stack.start()
        up_s = time.perf_counter() - started
        try:
            assert stack.api is not None
            with LifelongClient(stack.api.url, api_key=stack.admin_key) as client:
                results = [measure_job(client, x, y) for _ in range(jobs)]
        finally:
            stack.stop()
        for part, seconds in stack.timings.items():
            rows.append([f"stack start-up: {part}", f"{seconds:.1f}", "1"])
        rows.append(["stack start-up: all", f"{up_s:.1f}", "1"])
        for key, label in (
            ("first_step_s", "POST /v1/jobs (+ first push) → first training step"),
            ("push_to_trained_s", "push → its samples in the training set (next pass)"),
            ("grow_s", "POST …/grow → command done (at the next observation)"),
        ):
            values = [r[key] for r in results]
            spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
            rows.append([label, f"{statistics.mean(values):.2f}{spread}", str(len(values))])
        demo_cfg = DemoConfig(workdir=Path(tmp) / "demo")
        label = "lifelong demo (default: 5 stages, 25 s each, 35 s final)"
        if args.quick:
            demo_cfg = DemoConfig(workdir=Path(tmp) / "demo", stage_seconds=5.0, final_seconds=5.0)
            label = "lifelong demo, quick (5 stages, 5 s each)"
        demo = run_demo(demo_cfg, Console(quiet=True))
        rows.append([label, f"{demo['wall_s']:.0f}", "1"])
    body = (
        "Seconds, mean ± standard deviation over the runs counted. The job is an MLP (64 → 32 → "
        "32 → 10) on scikit-learn digits, one Ray worker; the demo is `lifelong demo` "
        "(MNIST-1D, 12,000 training samples in 5 stages).\n\n"
        + table(["what", "seconds", "runs"], rows)
    )
    write_section("system", "System speed: start-up, job start, latencies, demo", body)


if __name__ == "__main__":
    main()
