"""The MLflow pyfunc model of a release: a ``torch.export`` program and safetensors weights.

MLflow copies this file into every released model ("models from code") and runs it when the
model is loaded, so it imports nothing but the standard library, numpy, torch and mlflow: a
release loads where none of Lifelong's packages are installed. Nothing is unpickled: the program
is a ``torch.export`` archive (JSON graph, raw tensor bytes), the weights are read from the
safetensors file by the small reader below (the ``safetensors`` package is not needed either), and
the settings are JSON.

``predict`` takes a float32 array ``(n, *input_shape)`` and answers the softmax probabilities
``(n, num_classes)`` of a classifier, or the outputs ``(n, num_outputs)`` of a regressor: the same
numbers as the service's ``/predict``. A language model takes token ids ``(n, context_length)``
and answers the probabilities ``(n, vocab)`` of the token after each row.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch

_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def read_safetensors(path: str) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file: an 8-byte little-endian header length, a JSON header
    of ``name -> {dtype, shape, data_offsets}``, then the raw little-endian bytes."""
    with Path(path).open("rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
        data = bytearray(f.read())
    tensors: dict[str, torch.Tensor] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        dtype = _DTYPES[info["dtype"]]
        flat = torch.frombuffer(data, dtype=dtype, count=(end - start) // dtype.itemsize,
                                offset=start) if end > start else torch.empty(0, dtype=dtype)  # fmt: skip
        tensors[name] = flat.reshape(info["shape"]).clone()
    return tensors


class ReleasedModel(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
    """A released generation of a Lifelong job, served by torch alone."""

    def load_context(self, context: Any) -> None:
        self.settings = json.loads(Path(context.artifacts["settings"]).read_text())
        program = torch.export.load(context.artifacts["program"])
        module = program.module()
        module.load_state_dict(read_safetensors(context.artifacts["weights"]), strict=True)
        self.module = module

    def predict(self, context: Any, model_input: Any, params: Any = None) -> np.ndarray:
        shape = tuple(self.settings["input_shape"])
        if self.settings["kind"] == "language_modeling":  # ids (n, context_length)
            ids = np.asarray(model_input, dtype=np.int64).reshape((-1, *shape))
            with torch.no_grad():
                logits = self.module(torch.from_numpy(np.ascontiguousarray(ids)))
            return np.asarray(torch.softmax(logits[:, -1], dim=-1).numpy())
        features = np.asarray(model_input, dtype=np.float32)
        if features.shape[1:] != shape:
            features = features.reshape((-1, *shape))
        with torch.no_grad():
            out = self.module(torch.from_numpy(np.ascontiguousarray(features)))
        if self.settings["kind"] == "classification":
            out = torch.softmax(out, dim=-1)
        return np.asarray(out.detach().numpy())


mlflow.models.set_model(ReleasedModel())
