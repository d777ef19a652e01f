"""Load: concurrent pushers against a job that trains, then an exact count of what was stored.

``run_load(url, job_id, ...)`` runs ``clients`` threads for ``duration`` seconds; each sends a batch
of ``batch`` samples every ``1 / rate`` seconds (``rate=0``: back to back), with its own keep-alive
connection and a fresh Idempotency-Key per push, and never retries: an error counts as one. Every
sample carries its id in feature 0, so that the count can be checked sample by sample afterwards
(:func:`check_stored`). The reliability test (``tests/reliability/test_faults.py``) calls it
against the fault stack; ``python -m bench.load`` brings up the whole stack (Redis with AOF, Ray,
MLflow, the API), starts a job training on Ray, runs the load for 60 s, checks the count and writes
section ``load`` of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench._report import table, write_section

ID_BASE = 1_000_000  # ids start here, apart from any other data of the job; exact below 2**24
ID_STRIDE = 1_000_000  # ids of client c: ID_BASE + c * ID_STRIDE + ...


@dataclass
class LoadResult:
    clients: int
    duration: float
    rate: float
    batch: int
    latencies: list[float] = field(default_factory=list)  # seconds, acknowledged pushes only
    statuses: Counter[str] = field(default_factory=Counter)  # "201", "503", "no answer", ...
    acked_ids: list[int] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def pushes(self) -> int:
        return sum(self.statuses.values())

    @property
    def acknowledged(self) -> int:
        return self.statuses.get("201", 0)

    @property
    def errors(self) -> int:
        return self.pushes - self.acknowledged

    @property
    def error_rate(self) -> float:
        return self.errors / self.pushes if self.pushes else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else float("nan")

    def describe(self) -> str:
        return (
            f"{self.clients} clients × {self.elapsed:.0f} s: {self.pushes} pushes, "
            f"{self.acknowledged} acknowledged ({len(self.acked_ids)} samples), {self.errors} "
            f"errors ({self.error_rate:.2%}: {dict(self.statuses)}), p50 "
            f"{self.percentile(50) * 1000:.0f} ms, p99 {self.percentile(99) * 1000:.0f} ms"
        )


def _batch(first_id: int, n: int, features: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(first_id)
    x = rng.standard_normal((n, features)).astype(np.float32)
    x[:, 0] = np.arange(first_id, first_id + n, dtype=np.float32)
    return x, rng.integers(0, classes, n)


def run_load(
    url: str,
    job_id: str,
    *,
    clients: int = 8,
    duration: float = 60.0,
    rate: float = 5.0,
    batch: int = 64,
    features: int = 64,
    classes: int = 10,
    api_key: str | None = None,
    timeout: float = 30.0,
) -> LoadResult:
    """Push to ``job_id`` from ``clients`` threads for ``duration`` seconds; see the module doc."""
    if batch * (duration * (rate or 1000) + 1) >= ID_STRIDE:
        raise ValueError("too many samples per client for exact float32 ids; lower the load")
    pusher = _Pusher(
        url=url, job_id=job_id, batch=batch, features=features, classes=classes, rate=rate,
        headers={"Authorization": f"Bearer {api_key}"} if api_key else {}, timeout=timeout,
        result=LoadResult(clients=clients, duration=duration, rate=rate, batch=batch),
        deadline=time.monotonic() + duration,
    )  # fmt: skip
    started = time.monotonic()
    threads = [threading.Thread(target=pusher.run, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=duration + timeout + 10)
    pusher.result.elapsed = time.monotonic() - started
    return pusher.result


@dataclass
class _Pusher:
    """What every pushing thread shares: the target, the pace, and the result under a lock."""

    url: str
    job_id: str
    batch: int
    features: int
    classes: int
    rate: float
    headers: dict[str, str]
    timeout: float
    result: LoadResult
    deadline: float
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, index: int) -> None:
        """One client: a keep-alive connection, a fresh Idempotency-Key per push, no retries."""
        next_id = ID_BASE + index * ID_STRIDE
        due = time.monotonic()
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=self.timeout) as http:
            while True:
                if self.rate:
                    due += 1.0 / self.rate
                if time.monotonic() >= self.deadline:
                    return
                self._push(http, next_id)
                next_id += self.batch
                if self.rate and due > time.monotonic():
                    left = max(0.0, self.deadline - time.monotonic())
                    time.sleep(min(due - time.monotonic(), left))

    def _push(self, http: httpx.Client, first_id: int) -> None:
        from service.client import encode_batch

        body, content_type = encode_batch(
            *_batch(first_id, self.batch, self.features, self.classes)
        )
        began = time.perf_counter()
        try:
            response = http.post(
                f"/v1/jobs/{self.job_id}/data",
                content=body,
                headers={"Content-Type": content_type, "Idempotency-Key": str(uuid.uuid4())},
            )
            status = str(response.status_code)
        except httpx.TransportError as exc:
            status = f"no answer ({type(exc).__name__})"
        seconds = time.perf_counter() - began
        with self.lock:
            self.result.statuses[status] += 1
            if status == "201":
                self.result.latencies.append(seconds)
                self.result.acked_ids.extend(range(first_id, first_id + self.batch))


def check_stored(store: Any, shards: Any, job_id: str, acked_ids: list[int]) -> dict[str, int]:
    """Read back every shard the manifest lists: each acknowledged id is there exactly once.

    Returns the counts; raises AssertionError on a missing or duplicated sample, or when the
    manifest's totals disagree with the shards.
    """
    stored: Counter[int] = Counter()
    total = 0
    for info in store.load_manifest(job_id).shards:
        x, _ = shards.read(info, verify=True)
        total += len(x)
        stored.update(int(v) for v in x.reshape(len(x), -1)[:, 0] if v >= ID_BASE)
    summary = store.dataset_summary(job_id)
    if summary.train_samples + summary.val_samples != total:
        raise AssertionError(f"manifest totals {summary} disagree with {total} stored samples")
    wanted = set(acked_ids)
    missing = wanted - set(stored)
    duplicated = [i for i, n in stored.items() if n > 1]
    unacknowledged = set(stored) - wanted
    if missing or duplicated:
        raise AssertionError(
            f"{len(missing)} acknowledged samples missing, {len(duplicated)} stored twice"
        )
    return {"stored": total, "load": sum(stored.values()), "unacknowledged": len(unacknowledged)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rate", type=float, default=5.0, help="pushes/s per client (0: max)")
    parser.add_argument("--batch", type=int, default=64, help="samples per push")
    parser.add_argument("--no-write", action="store_true", help="print, do not write the page")
    args = parser.parse_args()

    from sklearn.datasets import load_digits

    from service.client import LifelongClient
    from service.local.stack import Stack
    from service.state.store import RedisStore
    from workers.shards import ShardStore

    x, y = load_digits(return_X_y=True)
    spec = {
        "name": "load",
        "task": {"kind": "classification", "input_shape": [64], "num_classes": 10},
        "model": {"family": "mlp", "hidden": [32, 32]},
        "batch_size": 64,
        "growth": {"policies": ["manual"]},
    }
    api_env = {"LIFELONG_OBSERVE_EVERY": "50", "LIFELONG_CHECKPOINT_EVERY": "500"}
    with tempfile.TemporaryDirectory(prefix="lifelong-load-") as tmp:
        stack = Stack(Path(tmp), cpus_per_node=2, api_env=api_env)
        with stack:
            assert stack.api is not None and stack.redis is not None
            client = LifelongClient(stack.api.url, api_key=stack.admin_key, timeout=60)
            job = client.create_job(spec)
            client.push(job.id, x.astype(np.float32), y)
            deadline = time.monotonic() + 300
            while client.get_job(job.id).status != "training":
                if time.monotonic() > deadline:
                    raise TimeoutError("the job did not start training within 300 s")
                time.sleep(1)
            steps_before = int(client.get_job(job.id).metrics.get("step", 0))
            result = run_load(
                stack.api.url,
                job.id,
                clients=args.clients,
                duration=args.duration,
                rate=args.rate,
                batch=args.batch,
                api_key=stack.admin_key,
            )
            after = client.get_job(job.id)
            store = RedisStore(stack.redis.url, "lifelong:")
            counts = check_stored(store, ShardStore(str(stack.data_root)), job.id, result.acked_ids)
            store.close()
            client.close()
    print(result.describe())
    steps = int(after.metrics.get("step", 0)) - steps_before
    offered = "as fast as answered" if not args.rate else f"{args.rate:g} pushes/s each"
    rows = [
        [
            args.clients,
            f"{result.elapsed:.0f}",
            offered,
            args.batch,
            f"{result.pushes:,}",
            f"{result.acknowledged / result.elapsed:.1f}",
            f"{len(result.acked_ids) / result.elapsed:,.0f}",
            f"{result.error_rate:.2%}",
            f"{result.percentile(50) * 1000:.0f}",
            f"{result.percentile(99) * 1000:.0f}",
            f"{counts['load']:,} / {len(result.acked_ids):,}",
            f"{steps:,}",
        ]
    ]
    body = (
        "Concurrent clients push batches of 64-feature samples (safetensors, one keep-alive "
        "connection and a fresh Idempotency-Key per push, no retries) to a job that trains on Ray "
        "meanwhile, through the whole stack of `service.local.stack.Stack` (Redis with AOF fsynced on "
        "every write, a Ray head with 2 CPUs, MLflow, the API as `lifelong serve`). Afterwards "
        "every shard the manifest lists is read back: *stored / acknowledged* counts the load's "
        "samples found, each acknowledged sample exactly once. *steps* are the job's training "
        "steps during the load. Latency is measured by the client, acknowledged pushes only. "
        "Everything shares the machine's 2 cores.\n\n"
        + table(
            [
                "clients",
                "seconds",
                "offered",
                "samples/push",
                "pushes",
                "pushes/s",
                "samples/s",
                "errors",
                "p50 ms",
                "p99 ms",
                "stored / acknowledged",
                "steps",
            ],
            rows,
        )
    )
    if args.no_write:
        print(body)
    else:
        write_section("load", "Load: pushers against a training job", body)


if __name__ == "__main__":
    main()
