"""The docker-compose topology as plain processes on one machine, for machines without Docker.

Brings up a Ray head and a second Ray node (``ray start --head`` / ``ray start --address``), a Redis
server with AOF on its own port, an MLflow tracking server backed by a fresh database on the local
PostgreSQL, and the Lifelong API, all configured through the same environment variables as the
compose file. It waits for each to be healthy, prints where each one is, and tears everything down
by PID (each Ray node is stopped through its own ``ray start --block`` process, never ``ray stop``).

    deploy/local-cluster            # up until Ctrl-C
    python -m deploy.local_cluster --help
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from service.processes import MlflowServer, free_port, stop_process, wait_for_http

BIN = Path(sys.executable).parent


def _ray_bin() -> str:
    return str(BIN / "ray") if (BIN / "ray").exists() else "ray"


@dataclass
class RayNode:
    """One ``ray start --block`` process and everything it started (its own temp dir)."""

    name: str
    args: list[str]
    env: dict[str, str]
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._log = (self.workdir / f"{self.name}.log").open("ab")
        self.proc = subprocess.Popen(
            [_ray_bin(), "start", *self.args, f"--temp-dir={self.workdir / 'ray'}", "--block"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM the ``ray start --block`` process, which stops the node's own processes."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                stop_process(self.proc, timeout=10)
        self._sweep()
        if self._log is not None:
            self._log.close()
            self._log = None

    def _sweep(self) -> None:
        # Any process still holding this node's temp dir on its command line is ours to stop.
        marker = str(self.workdir / "ray")
        out = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True, check=False)
        for pid in (int(p) for p in out.stdout.split()):
            if pid != os.getpid():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@dataclass
class LocalCluster:
    """Ray head + worker node, Redis (AOF), MLflow on PostgreSQL, and the API, as processes."""

    workdir: Path
    postgres_dsn: str = "postgresql://postgres@127.0.0.1:5432"
    cpus_per_node: int = 1
    node_memory: int = 3 * 1024**3
    object_store_memory: int = 300 * 1024**2
    with_api: bool = True
    api_env: dict[str, str] = field(default_factory=dict)
    ray_port: int = 0
    redis_port: int = 0
    api_port: int = 0
    auth_token: str = field(default_factory=lambda: secrets.token_hex(32))
    database: str = field(default_factory=lambda: f"lifelong_mlflow_{secrets.token_hex(4)}")
    head: RayNode | None = None
    worker: RayNode | None = None
    mlflow: MlflowServer | None = None
    redis_proc: subprocess.Popen[bytes] | None = None
    api_proc: subprocess.Popen[bytes] | None = None
    _logs: list[IO[bytes]] = field(default_factory=list, repr=False)
    _database_created: bool = field(default=False, repr=False)

    # --- addresses -------------------------------------------------------------------------
    @property
    def ray_address(self) -> str:
        return f"127.0.0.1:{self.ray_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def data_root(self) -> Path:
        return self.workdir / "data"

    def env(self) -> dict[str, str]:
        """The environment every process of the cluster (and a driver joining it) runs with."""
        env = dict(os.environ)
        env.update(
            {
                "RAY_ADDRESS": self.ray_address,
                "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN": self.auth_token,
                "RAY_USAGE_STATS_ENABLED": "0",
                "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
                "MLFLOW_DISABLE_TELEMETRY": "true",
                "REDIS_URL": self.redis_url,
                "LIFELONG_DATA_ROOT": str(self.data_root),
                "LIFELONG_STATE_DIR": str(self.workdir / "state"),
            }
        )
        if self.mlflow is not None:
            env["MLFLOW_TRACKING_URI"] = self.mlflow.url
        return env

    # --- life cycle --------------------------------------------------------------------------
    def start(self) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_root.mkdir(parents=True, exist_ok=True)
        try:
            self._start_redis()
            self._start_mlflow()
            self._start_ray()
            if self.with_api:
                self._start_api()
        except BaseException:
            self.stop()
            raise
        return self

    def _node_args(self, port_base: int) -> list[str]:
        return [
            "--node-ip-address=127.0.0.1",
            f"--num-cpus={self.cpus_per_node}",
            f"--memory={self.node_memory}",
            f"--object-store-memory={self.object_store_memory}",
            f"--min-worker-port={port_base}",
            f"--max-worker-port={port_base + 499}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--metrics-export-port={free_port()}",
        ]

    def _start_ray(self) -> None:
        self.ray_port = self.ray_port or free_port()
        # Worker port ranges apart from each other, from Ray's default 10002-19999 and from the
        # ephemeral ports (32768 and up) that free_port() hands out.
        base = 20000 + (os.getpid() % 12) * 1000
        self.head = RayNode(
            "ray-head",
            [
                "--head",
                f"--port={self.ray_port}",
                "--include-dashboard=false",
                f"--ray-client-server-port={free_port()}",
                *self._node_args(base),
            ],
            self.env(),
            self.workdir / "ray-head",
        )
        self.head.start()
        self._wait_ray_nodes(1)
        self.worker = RayNode(
            "ray-worker",
            [f"--address={self.ray_address}", *self._node_args(base + 500)],
            self.env(),
            self.workdir / "ray-worker",
        )
        self.worker.start()
        self._wait_ray_nodes(2)

    def alive_ray_nodes(self) -> int:
        """How many Ray nodes the cluster's GCS reports alive."""
        code = (
            "import ray; ray.init(address='auto', logging_level='ERROR'); "
            "print(sum(1 for n in ray.nodes() if n['Alive']))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=self.env(),
            timeout=60, check=False,
        )  # fmt: skip
        try:
            return int(out.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return 0

    def _wait_ray_nodes(self, count: int, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for node in (self.head, self.worker):
                if node is not None and node.proc is not None and node.proc.poll() is not None:
                    raise RuntimeError(f"{node.name} exited; see {node.workdir}/{node.name}.log")
            if self.alive_ray_nodes() >= count:
                return
            time.sleep(1.0)
        raise TimeoutError(f"Ray did not reach {count} alive nodes within {timeout:.0f}s")

    def _start_redis(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self.redis_port = self.redis_port or free_port()
        rdir = self.workdir / "redis"
        rdir.mkdir(parents=True, exist_ok=True)
        log = (rdir / "redis.log").open("ab")
        self._logs.append(log)
        self.redis_proc = subprocess.Popen(
            [binary, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--dir", str(rdir),
             "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        import redis

        client = redis.Redis(port=self.redis_port)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if self.redis_proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        client.close()

    def _start_mlflow(self) -> None:
        import psycopg2

        conn = psycopg2.connect(f"{self.postgres_dsn}/postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{self.database}"')
        conn.close()
        self._database_created = True
        self.mlflow = MlflowServer(
            workdir=self.workdir / "mlflow",
            backend_store_uri=f"{self.postgres_dsn.replace('postgresql://', 'postgresql+psycopg2://', 1)}/{self.database}",
        )
        self.mlflow.start()

    def _start_api(self) -> None:
        self.api_port = self.api_port or free_port()
        env = self.env()
        env.update(self.api_env)
        log = (self.workdir / "api.log").open("ab")
        self._logs.append(log)
        self.api_proc = subprocess.Popen(
            [str(BIN / "lifelong"), "serve", "--host", "127.0.0.1", "--port", str(self.api_port)],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
        wait_for_http(f"{self.api_url}/readyz", timeout=120, proc=self.api_proc)

    def stop_worker_node(self) -> None:
        """Stop the second Ray node (a node failure, as the fault tests inject it)."""
        if self.worker is not None:
            self.worker.stop()

    def stop(self) -> None:
        if self.api_proc is not None:
            stop_process(self.api_proc)
        for node in (self.worker, self.head):
            if node is not None:
                node.stop()
        if self.mlflow is not None:
            self.mlflow.stop()
        if self._database_created:
            self._drop_database()
        if self.redis_proc is not None:
            stop_process(self.redis_proc)
        for log in self._logs:
            log.close()
        self._logs.clear()

    def _drop_database(self) -> None:
        import psycopg2

        try:
            conn = psycopg2.connect(f"{self.postgres_dsn}/postgres")
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
            conn.close()
        except psycopg2.Error as exc:
            print(f"local-cluster: could not drop {self.database}: {exc}", file=sys.stderr)

    def describe(self) -> str:
        lines = [
            f"Ray head        {self.ray_address} (pid {self.head.proc.pid if self.head and self.head.proc else '-'})",
            f"Ray worker node pid {self.worker.proc.pid if self.worker and self.worker.proc else '-'}",
            f"Redis (AOF)     {self.redis_url} (pid {self.redis_proc.pid if self.redis_proc else '-'})",
            f"MLflow          {self.mlflow.url if self.mlflow else '-'} (PostgreSQL database {self.database})",
        ]
        if self.with_api:
            lines.append(
                f"API             {self.api_url} (pid {self.api_proc.pid if self.api_proc else '-'})"
            )
        lines.append(f"Data root       {self.data_root}")
        lines.append(f"Logs            {self.workdir}")
        return "\n".join(lines)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:  # fmt: skip
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Lifelong's cluster topology as local processes.")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a new temp folder")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--cpus-per-node", type=int, default=1)
    parser.add_argument("--no-api", action="store_true", help="bring up everything but the API")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lifelong-cluster-"))
    cluster = LocalCluster(
        workdir=workdir, postgres_dsn=args.postgres, cpus_per_node=args.cpus_per_node,
        with_api=not args.no_api,
    )  # fmt: skip
    stop = False

    def _on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    started = time.monotonic()
    with cluster:
        print(f"local cluster up in {time.monotonic() - started:.0f}s:\n{cluster.describe()}")
        print(f"\nexport RAY_ADDRESS={cluster.ray_address} RAY_AUTH_MODE=token "
              f"RAY_AUTH_TOKEN=<in {workdir}/ray-token> REDIS_URL={cluster.redis_url}")  # fmt: skip
        (workdir / "ray-token").write_text(cluster.auth_token)
        (workdir / "ray-token").chmod(0o600)
        print("Ctrl-C tears everything down.", flush=True)
        while not stop:
            time.sleep(0.5)
        print("tearing down ...", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
