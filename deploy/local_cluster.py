"""The docker-compose topology as plain processes on one machine, for machines without Docker.

A Ray head and a second Ray node (``ray start --head`` / ``ray start --address``), a Redis server with
AOF on its own port, an MLflow tracking server on a fresh database of the local PostgreSQL, and the
Lifelong API, configured through the same environment variables as ``docker-compose.yml``. It waits
for each to be healthy, prints where each one is, and on Ctrl-C (or SIGTERM) tears everything down
by PID. The machinery is :class:`service.local.stack.Stack`, which ``lifelong up`` uses for one node.

    deploy/local-cluster
    python -m deploy.local_cluster --help
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path

from service.local.stack import Stack


def cluster(
    workdir: Path,
    *,
    postgres: str = "postgresql://postgres@127.0.0.1:5432",
    cpus_per_node: int = 1,
    node_memory: int = 3 * 1024**3,
    with_api: bool = True,
    api_env: dict[str, str] | None = None,
) -> Stack:
    """The local cluster's stack (not started): two Ray nodes, MLflow on PostgreSQL."""
    return Stack(
        workdir=workdir,
        ray_nodes=2,
        cpus_per_node=cpus_per_node,
        node_memory=node_memory,
        postgres_dsn=postgres,
        with_api=with_api,
        api_env=api_env or {},
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Lifelong's cluster topology as local processes.")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a new temp folder")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--cpus-per-node", type=int, default=1)
    parser.add_argument("--no-api", action="store_true", help="bring up everything but the API")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lifelong-cluster-"))
    stack = cluster(
        workdir, postgres=args.postgres, cpus_per_node=args.cpus_per_node,
        with_api=not args.no_api,
    )  # fmt: skip
    stop = False

    def _on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    started = time.monotonic()
    with stack:
        token = workdir / "ray-token"
        token.write_text(stack.auth_token)
        token.chmod(0o600)
        print(f"local cluster up in {time.monotonic() - started:.0f}s:\n{stack.describe()}")
        print(
            f"\nTo join it: export RAY_ADDRESS={stack.ray_address} RAY_AUTH_MODE=token "
            f"RAY_AUTH_TOKEN=$(cat {token}) REDIS_URL={stack.redis.url if stack.redis else ''}"
        )
        if stack.api is not None:
            print(
                f"API: export LIFELONG_API_URL={stack.api.url} "
                f"LIFELONG_API_KEY_FILE={stack.admin_key_file}   # its admin key, mode 0600"
            )
        print("Ctrl-C tears everything down.", flush=True)
        while not stop:
            time.sleep(0.5)
        print("tearing down ...", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
