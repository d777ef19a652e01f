"""Smoke tests of the learning benchmarks on tiny streams (in-process, no Ray): stages start at
their boundary step, growth through the loop is exact, retraining restarts, and a Net2Net student
starts at its teacher's accuracy."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow


def test_stream_stages_start_at_their_boundary_and_growth_is_exact(tmp_path: Path) -> None:
    from bench import stream
    from workers.sources import read_jsonl

    data = stream.Stream(tmp_path, stages=(300, 600, 1200))
    method = stream.methods()["default"]
    result = stream.run_one(data, method, seed=0, steps_per_stage=150, engine="local")
    assert len(result.stage_acc) == 3
    assert all(0.0 < a <= 1.0 for a in result.stage_acc)
    assert result.growths and result.train_flops > 0
    for g in result.growths:
        if g["op"] == "widen":
            assert g["acc_after"] == pytest.approx(g["acc_before"], abs=1e-9)
            assert g["params_after"] > g["params_before"]
    # The loop saw each stage's data from the step after its boundary (observed every 50 steps).
    (events,) = tmp_path.glob("default-s0-local-*.jsonl")
    sizes = {r["step"]: r["dataset_size"] for r in read_jsonl(events) if r["type"] == "observation"}
    assert sizes[150] == 300 and sizes[200] == 600
    assert sizes[300] == 600 and sizes[350] == 1200
    assert max(sizes) == 450  # stopped at the end of the last stage


def test_retraining_restarts_at_every_stage(tmp_path: Path) -> None:
    from bench import stream

    data = stream.Stream(tmp_path, stages=(300, 600))
    method = stream.methods()["retrain-large"]
    result = stream.run_one(data, method, seed=0, steps_per_stage=100, engine="local")
    assert len(result.stage_acc) == 2
    assert not result.growths
    # FLOPs = 6 × params × samples; a pass over n samples takes ceil(n / 128) steps, the last one
    # partial, and each stage's fresh run takes 100 steps.
    samples = 0
    for n in (300, 600):
        steps_per_pass = -(-n // 128)
        full, rest = divmod(100, steps_per_pass)
        samples += full * n + min(rest * 128, n)
    assert result.train_flops == pytest.approx(6 * result.final_params * samples, rel=1e-9)


def test_paper_students_that_preserve_the_function_start_at_the_teacher() -> None:
    from bench import paper
    from bench._common import mnist1d

    xs, ys, xv, yv = mnist1d()
    data = tuple(torch.from_numpy(a) for a in (xs[:2000], ys[:2000], xv[:1000], yv[:1000]))
    run = paper.run_seed(0, 100, 50, data)
    for s in paper.STUDENTS:
        start = run["students"][s.name][0]
        if s.exact:
            assert start == pytest.approx(run["teacher"], abs=1e-9), s.name
    scratch = run["students"][f"wider model (w{paper.WIDE}), random init"][0]
    assert scratch < run["teacher"]
