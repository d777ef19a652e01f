"""Run a command with a Redis server that answers, and say which one.

Uses ``$REDIS_URL`` when set, else the server on 127.0.0.1:6379 when it answers, else starts its own
``redis-server`` on a free port, exports ``REDIS_URL`` for the command and stops that server (by PID)
afterwards. Standard library only, so it runs before anything is installed.

    python deploy/with_redis.py -- pytest -q
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from urllib.parse import urlparse


def _ping(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def main(argv: list[str]) -> int:
    if "--" in argv:
        argv = argv[argv.index("--") + 1 :]
    if not argv:
        print("usage: with_redis.py -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    env = dict(os.environ)
    url = env.get("REDIS_URL")
    if url:
        return _with_given(url, argv, env)
    if _ping("127.0.0.1", 6379):
        env["REDIS_URL"] = "redis://127.0.0.1:6379/0"
        print("with_redis: using the Redis server on 127.0.0.1:6379", file=sys.stderr)
        return subprocess.call(argv, env=env)
    return _with_own_server(argv, env)


def _with_given(url: str, argv: list[str], env: dict[str, str]) -> int:
    """Run under ``$REDIS_URL``, once it answers."""
    parsed = urlparse(url)
    if parsed.scheme in ("redis", "rediss") and not _ping(
        parsed.hostname or "127.0.0.1", parsed.port or 6379
    ):
        print(f"with_redis: REDIS_URL={url} does not answer", file=sys.stderr)
        return 1
    return subprocess.call(argv, env=env)


def _with_own_server(argv: list[str], env: dict[str, str]) -> int:
    """Start a redis-server on a free loopback port, run the command, stop the server."""
    binary = shutil.which("redis-server")
    if binary is None:
        print("with_redis: no Redis answers and redis-server is not installed", file=sys.stderr)
        return 1
    port = _free_port()
    workdir = tempfile.mkdtemp(prefix="lifelong-redis-")
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", workdir],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not _ping("127.0.0.1", port):
            if server.poll() is not None or time.monotonic() > deadline:
                print("with_redis: redis-server did not start", file=sys.stderr)
                return 1
            time.sleep(0.05)
        env["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
        print(f"with_redis: started redis-server pid {server.pid} on port {port}", file=sys.stderr)
        return subprocess.call(argv, env=env)
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
