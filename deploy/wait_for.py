"""Wait until services answer, with retry, then run a command (the start-up wait of every container).

    python deploy/wait_for.py --tcp redis:6379 --http http://mlflow:5000/health -- lifelong serve

Each ``--tcp HOST:PORT`` must accept a connection and each ``--http URL`` must answer 200 before the
command starts; both are retried every second until ``--timeout`` seconds pass (then exit 1 with the
last error). Standard library only.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
import urllib.error
import urllib.request


def _tcp_ready(target: str) -> str | None:
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return None
    except (OSError, ValueError) as exc:
        return f"{target}: {exc}"


def _http_ready(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return None if response.status == 200 else f"{url}: HTTP {response.status}"
    except (urllib.error.URLError, OSError) as exc:
        return f"{url}: {exc}"


def wait(tcp: list[str], http: list[str], timeout: float) -> str | None:
    """Return None when everything answers, else the last error after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        errors = [e for e in (*map(_tcp_ready, tcp), *map(_http_ready, http)) if e]
        if not errors:
            return None
        if time.monotonic() >= deadline:
            return "; ".join(errors)
        print(f"wait_for: waiting for {errors[0]}", file=sys.stderr, flush=True)
        time.sleep(1.0)


def main(argv: list[str]) -> int:
    command: list[str] = []
    if "--" in argv:
        command = argv[argv.index("--") + 1 :]
        argv = argv[: argv.index("--")]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tcp", action="append", default=[], metavar="HOST:PORT")
    parser.add_argument("--http", action="append", default=[], metavar="URL")
    parser.add_argument("--timeout", type=float, default=180.0)
    args = parser.parse_args(argv)
    error = wait(args.tcp, args.http, args.timeout)
    if error is not None:
        print(f"wait_for: gave up after {args.timeout:.0f}s: {error}", file=sys.stderr)
        return 1
    if command:
        os.execvp(command[0], command)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
