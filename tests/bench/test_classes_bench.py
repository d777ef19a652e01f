"""Smoke test of the classes benchmark: a short class-incremental run of each method."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_every_method_runs_and_the_loop_grows_its_head(tmp_path: Path) -> None:
    from bench import classes

    split = classes.digits_split(0)
    lifelong = classes.run_lifelong("lifelong", split, 0, 30, tmp_path)
    assert len(lifelong.matrix) == len(classes.TASKS)
    assert [len(row) for row in lifelong.matrix] == [1, 2, 3, 4, 5]
    heads = [g for g in lifelong.growths if g.startswith("add_classes")]
    assert heads == ["add_classes→4", "add_classes→6", "add_classes→8", "add_classes→10"]
    assert 0.0 <= lifelong.forgetting <= 1.0 and 0.0 < lifelong.final <= 1.0
    assert lifelong.drift_max is not None and lifelong.drift_max > 1.0
    naive = classes.run_baseline("naive", split, 0, 30)
    joint = classes.run_baseline("joint", split, 0, 30)
    assert naive.forgetting > joint.forgetting
    text = classes.report([lifelong, naive, joint], steps=30, seeds=1)
    assert "| lifelong |" in text and "below joint" in text
