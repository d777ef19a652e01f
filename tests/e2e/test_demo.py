"""The README's first command: the demo runs to its table and plot (short stages here)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from service.local.demo import DemoConfig, run_demo

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_runs_to_its_table_and_plot(tmp_path: Path) -> None:
    out = io.StringIO()
    console = Console(file=out, width=100, force_terminal=False)
    cfg = DemoConfig(
        workdir=tmp_path / "demo", stages=(1000, 3000), stage_seconds=8.0, final_seconds=8.0,
        val_samples=500,
    )  # fmt: skip
    result = run_demo(cfg, console)
    text = out.getvalue()
    assert "Generations" in text
    assert Path(result["plot"]).stat().st_size > 10_000
    generations = result["generations"]
    assert generations[0]["op"] is None and generations[0]["param_count"] > 0
    # Accuracy is measured on held-out MNIST-1D: well above chance (0.1) after a few seconds.
    assert result["final_val_accuracy"] is not None and result["final_val_accuracy"] > 0.2
    assert f"lifelong ui --workdir {cfg.workdir}" in text.replace("\n", "")
