"""Run every benchmark under ``bench/``: ``python -m bench`` (or ``make bench``).

By default each runs its quick version (a smoke run of the same code, under 15 minutes in all on
2 cores); ``--full`` runs the full versions (about 1.5 hours here: most of it the stream's 3 seeds
× 11 methods through Ray). ``--only NAME`` (repeatable) picks benchmarks; ``--write`` also lets
the quick versions write their tables into ``docs/benchmarks.md`` too (full versions always
write; without ``--write`` a quick run only prints, so the page keeps the full runs' tables). Each
benchmark runs in its own process, one after the other; a failure is reported and the others still
run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from bench._report import NO_WRITE_ENV

ROOT = Path(__file__).resolve().parents[1]

# name -> (quick arguments, full arguments, arguments that make a quick run write its table)
BENCHMARKS: dict[str, tuple[list[str], list[str], list[str]]] = {
    "shard_format": (["--repeats", "5"], [], []),
    "ingest": (["--quick"], [], []),
    # at least 550 steps: its table needs one periodic checkpoint (every 500 steps)
    "worker_throughput": (["--steps", "550", "--bare-steps", "200", "--samples", "20000"], [], []),
    "net2net_growth": (["--quick"], [], ["--write"]),
    "paper": (["--quick"], [], ["--write"]),
    "spike": (["--quick"], [], ["--write"]),
    "stream": (["--quick"], [], ["--write"]),
    "idle": (["--quick"], [], ["--write"]),
    "memory": (["--quick"], [], ["--write"]),
    "freshness": (["--quick"], [], ["--write"]),
    "classes": (["--quick"], [], ["--write"]),
    "load": (["--duration", "15"], [], []),
    "system": (["--quick"], [], []),
    "lm_stream": (["--quick"], [], ["--write"]),
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="the full versions (slow)")
    parser.add_argument("--only", action="append", choices=sorted(BENCHMARKS), default=None)
    parser.add_argument("--write", action="store_true", help="quick runs write their tables too")
    args = parser.parse_args()
    names = [n for n in BENCHMARKS if args.only is None or n in args.only]
    present = [n for n in names if (ROOT / "bench" / f"{n}.py").exists()]
    times: list[tuple[str, float, int]] = []
    for name in present:
        quick, full, write = BENCHMARKS[name]
        argv = full if args.full else quick + (write if args.write else [])
        command = [sys.executable, "-m", f"bench.{name}", *argv]
        print(f"\n=== {' '.join(['python', *command[1:]])}", flush=True)
        started = time.perf_counter()
        env = dict(os.environ)
        if not args.full and not args.write:
            env[NO_WRITE_ENV] = "1"  # a quick run prints its table; the page keeps the full one
        code = subprocess.call(command, cwd=ROOT, env=env)
        times.append((name, time.perf_counter() - started, code))
    print("\n=== summary")
    for name, seconds, code in times:
        print(f"{name:20s} {seconds:7.0f} s  {'ok' if code == 0 else f'FAILED (exit {code})'}")
    print(f"{'total':20s} {sum(t for _, t, _ in times):7.0f} s")
    for name in names:
        if name not in present:
            print(f"{name:20s} not present under bench/ (skipped)")
    sys.exit(max((c for _, _, c in times), default=0))


if __name__ == "__main__":
    main()
