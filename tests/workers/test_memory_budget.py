"""A job's dataset grows to ten times its per-rank memory budget on the real worker loop: the reader's
resident bytes never exceed the budget, and the process's RSS stays flat once the history streams.

The loop runs in a fresh process (``bench.memory``'s growth run), so the RSS is the loop's own.
Margin: the RSS may grow by at most 24 MiB from the first streamed observation to the end, while the
dataset grows by over 70 MiB (8 MiB budget, 80 MiB of decoded samples at the end); a reader that kept
its history would grow by all of it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

MIB = 1 << 20
BUDGET = 8 * MIB


def test_resident_memory_stays_within_the_budget_as_the_dataset_grows(tmp_path: Path) -> None:
    params = json.dumps({"root": str(tmp_path), "budget": BUDGET})
    out = subprocess.run(
        [sys.executable, "-m", "bench.memory", "--child", "grow", params],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    records = json.loads(out.stdout.strip().splitlines()[-1])["records"]
    assert not records[0]["streamed"] and records[0]["dataset_bytes"] < BUDGET
    assert records[-1]["streamed"] and records[-1]["dataset_bytes"] >= 10 * BUDGET
    peak = max(r["resident_bytes"] for r in records)
    assert 0 < peak <= BUDGET, f"the reader held {peak:,} bytes under a budget of {BUDGET:,}"
    assert max(r["val_resident_bytes"] for r in records) == 5_000 * (64 * 4 + 8)
    streamed = [r for r in records if r["streamed"]]
    growth = max(r["rss"] for r in streamed) - streamed[0]["rss"]
    grown = records[-1]["dataset_bytes"] - streamed[0]["dataset_bytes"]
    assert grown > 70 * MIB
    assert growth <= 24 * MIB, (
        f"RSS grew {growth / MIB:.1f} MiB while the data grew {grown / MIB:.0f}"
    )
