"""A virtual environment with mlflow and torch and none of Lifelong's packages, built once and cached.

Tests load released models in it, as a user of the registry would: ``python -m venv``, then pip
with the indexes this project uses (torch first, alone, for the CPU wheel; then mlflow under the
project's lock file). The folder is keyed by the pins, under ``$LIFELONG_TEST_CACHE`` (default
``~/.cache/lifelong-tests``); a stamp file marks a finished build, a lock file serialises builders.

Run ``python -m tests.clean_env`` to build it ahead of the tests.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PINS = ("torch==2.13.0", "mlflow==3.17.2")


def cache_root() -> Path:
    return Path(os.environ.get("LIFELONG_TEST_CACHE", "~/.cache/lifelong-tests")).expanduser()


def clean_python() -> Path:
    """The Python of the clean environment, built on first use."""
    lock = (ROOT / "requirements" / "lock.txt").read_bytes()
    key = hashlib.sha256(repr(PINS).encode() + lock).hexdigest()[:12]
    folder = cache_root() / f"release-env-{key}"
    python = folder / "bin" / "python"
    stamp = folder / ".built"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with (folder.parent / f".release-env-{key}.lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        if stamp.exists():
            return python
        shutil.rmtree(folder, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, PINS[0]], check=True)
        constraints = ["-c", str(ROOT / "requirements" / "lock.txt")]
        subprocess.run([*pip, *constraints, PINS[1]], check=True)
        stamp.write_text("\n".join(PINS))
    return python


if __name__ == "__main__":
    print(clean_python())
