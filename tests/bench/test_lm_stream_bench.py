"""Smoke test of the language-model benchmark (``bench/lm_stream.py``): its quick version runs the
baseline, the stream and the schedules with tiny models in this process, and its tables hold
every row, with losses that are finite and below the unigram entropy of the training text."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # about 20 s: a dozen jobs through the worker loop


def _rows(out: str) -> dict[str, list[str]]:
    return {
        line.split(" | ")[0].lstrip("| "): [c.strip(" |") for c in line.split(" | ")]
        for line in out.splitlines()
        if line.startswith("| ")
    }


def test_the_quick_version_has_every_row_and_learns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench import lm_stream

    monkeypatch.setenv("LIFELONG_BENCH_CACHE", str(tmp_path))
    lm_stream.main(["--quick"])
    rows = _rows(capsys.readouterr().out)
    folder = tmp_path / "lm-stream-results" / "quick"
    entropy = json.loads((folder / "meta.json").read_text())["unigram_entropy"]
    assert 3.0 < entropy < math.log(65)

    # The baseline: the bare loop and the job, each with its validation loss and rate.
    for name in (
        "bare PyTorch loop (before the job)",
        "Lifelong job (worker loop), everything included",
    ):
        loss, rate = float(rows[name][1]), float(rows[name][3].replace(",", ""))
        assert math.isfinite(loss) and loss < entropy, (name, loss)
        assert rate > 0
    baseline = json.loads((folder / "baseline.json").read_text())
    assert baseline["job_val_loss"] == pytest.approx(
        float(rows["Lifelong job (worker loop), everything included"][1]), abs=1e-4
    )

    # The stream: every method, six stage-end losses each, all finite, the last below the entropy.
    registry = lm_stream.methods(lm_stream.QUICK.small, lm_stream.QUICK.large)
    for method in (registry[name] for name in lm_stream.MAIN_METHODS):
        cells = rows[method.label]
        losses = [float(c) for c in cells[2:8]]
        assert all(math.isfinite(v) for v in losses), (method.name, losses)
        assert losses[-1] < entropy, (method.name, losses)
        assert float(cells[9]) > 0  # GFLOP
    # Retraining spends each stage from scratch: as many FLOPs as the fixed large model.
    assert rows[registry["retrain-large"].label][10] == "100%"

    # The schedules: one row each.
    for schedule in lm_stream.SCHEDULES:
        assert any(k.startswith(schedule) for k in rows), schedule
