"""A generation's model in formats that other tools load: safetensors, ONNX and ``torch.export``.

* ``safetensors``: the weights; the architecture (base spec and growth records) in the file's
  metadata under ``lifelong.architecture``.
* ``onnx``: the model through torch's exporter (``torch.onnx.export(..., dynamo=True)``), with a
  dynamic batch dimension; input ``features`` ``(n, *input_shape)``, output ``outputs`` (logits of
  a classifier, values of a regressor).
* ``pt2``: a ``torch.export`` program (``torch.export.load``), weights included, no pickle.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

ExportFormat = Literal["safetensors", "onnx", "pt2"]
FORMATS: tuple[ExportFormat, ...] = ("safetensors", "onnx", "pt2")
MEDIA_TYPES: dict[ExportFormat, str] = {
    "safetensors": "application/x-safetensors",
    "onnx": "application/onnx",
    "pt2": "application/zip",
}
SUFFIXES: dict[ExportFormat, str] = {"safetensors": "safetensors", "onnx": "onnx", "pt2": "pt2"}


def example_input(input_shape: list[int] | tuple[int, ...], rows: int = 2) -> torch.Tensor:
    """Zeros of ``rows`` samples (at least 2, so the batch dimension stays dynamic)."""
    return torch.zeros((max(2, rows), *input_shape), dtype=torch.float32)


def exported_program(model: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """The model as a ``torch.export`` program with a dynamic batch dimension (eval mode)."""
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    model.eval()
    with torch.no_grad():
        return torch.export.export(model, (example,), dynamic_shapes=({0: batch},))


def to_safetensors(model: nn.Module, architecture: dict[str, Any]) -> bytes:
    from safetensors.torch import save

    # copies: tied weights (a GPT's embedding and head) share memory, which safetensors refuses
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    return bytes(save(state, metadata={"lifelong.architecture": json.dumps(architecture)}))


def to_pt2(model: nn.Module, example: torch.Tensor) -> bytes:
    program = exported_program(model, example)
    program._example_inputs = None  # no torch.save'd sample inputs in the archive
    with tempfile.TemporaryDirectory(prefix="lifelong-export-") as folder:
        path = Path(folder) / "model.pt2"
        torch.export.save(program, path)
        return path.read_bytes()


def to_onnx(model: nn.Module, example: torch.Tensor) -> bytes:
    """The model as ONNX (torch's dynamo exporter, weights embedded)."""
    model.eval()
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    with torch.no_grad():
        program = torch.onnx.export(
            model,
            (example,),
            input_names=["features"],
            output_names=["outputs"],
            dynamic_shapes=({0: batch},),
            dynamo=True,
            verbose=False,
        )
    assert program is not None
    with tempfile.TemporaryDirectory(prefix="lifelong-export-") as folder:
        path = Path(folder) / "model.onnx"
        program.save(str(path), external_data=False)
        return path.read_bytes()


def export(
    model: nn.Module, fmt: ExportFormat, input_shape: list[int], architecture: dict[str, Any]
) -> bytes:
    """The model in ``fmt``."""
    if fmt == "safetensors":
        return to_safetensors(model, architecture)
    example = example_input(input_shape)
    if architecture.get("task", {}).get("kind") == "language_modeling":
        example = example.to(torch.int64)  # token ids
    if fmt == "onnx":
        return to_onnx(model, example)
    return to_pt2(model, example)
