"""Smoke test of the GPU check (``bench/gpu.py``) on the CPU: ``--device cpu --quick`` runs its
three jobs with tiny models in this process and prints its tables, so that the script is known to
work before a GPU session runs it (``make bench-gpu``)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_the_gpu_check_runs_on_the_cpu_in_its_quick_mode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench import gpu

    gpu.main(["--device", "cpu", "--quick", "--runtime", "local", "--root", str(tmp_path)])
    out = capsys.readouterr().out
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in out.splitlines()
            if line.startswith("| ")}  # fmt: skip
    # Growth: a widen and a deepen in each precision, the fp32 ones within float rounding.
    for op in ("widen", "deepen"):
        fp32, bf16 = rows[f"{op} (fp32)"], rows[f"{op} (bf16)"]
        assert fp32[5] == "≤ 1e-05: yes", fp32
        assert float(bf16[4]) < 0.05, bf16  # bf16 on a CPU: reported, not held to the GPU bound
        before, after = (int(v.replace(",", "")) for v in fp32[1].split(" → "))
        assert after > before
    # Throughput: the bare loop and the worker loop, with a ratio.
    assert float(rows["the worker loop"][2].rstrip(" |")) > 0.1
    # The pause row of the bigger model: parameters 64 → 128 wide, a pause and its parts.
    (pause,) = [r for k, r in rows.items() if k[0].isdigit()]
    assert float(pause[1]) >= 0 and pause[-1].strip(" |") == "–"  # no device memory on a CPU
    assert "`LocalRuntime(device='cpu')`" in out
