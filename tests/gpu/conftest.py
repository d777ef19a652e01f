"""Tests that need a CUDA device: marked ``gpu``, skipped, with the reason said, where torch sees
none (the CPU build of torch, or no GPU). Run them with ``pytest -m gpu tests/gpu`` on a machine
with a GPU and a CUDA build of torch (docs/deploy.md, "Running on CUDA")."""

from __future__ import annotations

import pytest
import torch

NO_CUDA = (
    "needs a CUDA device: torch {version} sees none (torch.cuda.is_available() is False); these "
    "tests run on a GPU machine with a CUDA build of torch: make bench-gpu, or pytest -m gpu"
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped without one)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=NO_CUDA.format(version=torch.__version__))
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)
