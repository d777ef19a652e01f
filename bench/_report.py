"""Write a benchmark's table into its own section of ``docs/benchmarks.md``.

Each benchmark owns one section, delimited by HTML comments, and rewrites only that section, so the
benchmarks can run in any order and the page keeps one current table per benchmark::

    <!-- bench:net2net-growth -->
    ... written by the benchmark ...
    <!-- /bench:net2net-growth -->
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Set by ``python -m bench`` for quick runs, so that they never replace the full runs' tables.
NO_WRITE_ENV = "LIFELONG_BENCH_NO_WRITE"
PAGE = ROOT / "docs" / "benchmarks.md"
HEADER = (
    "# Benchmarks\n\n"
    "Every table on this page is written by the benchmark named in its section, from a run of the\n"
    "committed code; the command and the machine are given with each. Nothing here is typed by hand.\n"
)


def machine() -> str:
    """A one-line description of the machine the benchmark ran on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{os.cpu_count()} CPU cores ({cpu}), {gpu}, Python {platform.python_version()}, "
        f"torch {torch.__version__}"
    )


def git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            # The page that benchmarks write, and their plots, do not make the code dirty.
            [
                "git",
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                ":!docs/benchmarks.md",
                ":!docs/img",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + (" (with uncommitted changes)" if dirty else "")  # fmt: skip


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table; floats are printed as given by the caller (format them first)."""
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(out)


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in [Path(sys.executable).name, "-m", *_module_argv()])


def _module_argv() -> list[str]:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    name = spec.name if spec is not None else Path(sys.argv[0]).stem
    return [name, *sys.argv[1:]]


def write_section(name: str, title: str, body: str, *, page: Path = PAGE) -> None:
    """Replace (or append) the section ``name`` of the benchmarks page and print it."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = (
        f"<!-- bench:{name} -->\n## {title}\n\n"
        f"Command: `{command_line()}`  \nMachine: {machine()}  \n"
        f"Revision: {git_revision()}, {stamp}\n\n{body.strip()}\n<!-- /bench:{name} -->"
    )
    print(section)
    if os.environ.get(NO_WRITE_ENV):
        print(f"({NO_WRITE_ENV} is set: {page.name} was not changed)")
        return
    page.parent.mkdir(parents=True, exist_ok=True)
    text = page.read_text() if page.exists() else HEADER
    pattern = re.compile(
        rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S
    )
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    page.write_text(text)
