"""Exports of a model: ONNX checked with onnxruntime and a torch.export program checked with torch,
against the model's own output, on the zoo's MLP, CNN and ResNet (grown ones included)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from safetensors.torch import load

import net2net
from service.runtime.exports import export
from workers.models import build_model
from workers.spec import ModelSpec, TaskSpec

pytestmark = pytest.mark.slow  # torch's ONNX exporter takes a second or two per model

ZOO = {
    "mlp": ({"kind": "classification", "input_shape": [64], "num_classes": 10},
            {"family": "mlp", "hidden": [32, 16]}),
    "cnn": ({"kind": "classification", "input_shape": [1, 12, 12], "num_classes": 10},
            {"family": "cnn"}),
    "resnet": ({"kind": "regression", "input_shape": [3, 8, 8], "num_outputs": 3},
               {"family": "resnet"}),
}  # fmt: skip


def _model(family: str) -> tuple[torch.nn.Module, TaskSpec]:
    task, spec = ZOO[family]
    torch.manual_seed(0)
    task_spec = TaskSpec.model_validate(task)
    model = build_model(ModelSpec.model_validate(spec), task_spec)
    # Trained-looking BatchNorm statistics, so that eval mode is not the identity.
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, *task_spec.input_shape))
    return model.eval(), task_spec


def _inputs(task: TaskSpec, n: int = 17) -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.standard_normal((n, *task.input_shape)).astype(np.float32)


@pytest.mark.parametrize("family", sorted(ZOO))
def test_onnx_matches_torch(family: str) -> None:
    import onnxruntime as ort

    model, task = _model(family)
    session = ort.InferenceSession(
        export(model, "onnx", list(task.input_shape), {}), providers=["CPUExecutionProvider"]
    )
    for n in (1, 17):  # the batch dimension is dynamic
        x = _inputs(task, n)
        (got,) = session.run(["outputs"], {"features": x})
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        assert got.shape == expected.shape == (n, task.output_dim)
        assert float(np.abs(got - expected).max()) <= 1e-5


def test_onnx_of_a_grown_mlp_matches_torch() -> None:
    import onnxruntime as ort

    model, task = _model("mlp")
    grown = net2net.widen(model, torch.randn(8, 64), factor=2.0, seed=0).model.eval()
    session = ort.InferenceSession(export(grown, "onnx", [64], {}))
    x = _inputs(task)
    (got,) = session.run(None, {"features": x})
    with torch.no_grad():
        expected = grown(torch.from_numpy(x)).numpy()
    assert float(np.abs(got - expected).max()) <= 1e-5


def test_pt2_and_safetensors_round_trip(tmp_path: object) -> None:
    model, task = _model("cnn")
    x = torch.from_numpy(_inputs(task))
    program = torch.export.load(io.BytesIO(export(model, "pt2", list(task.input_shape), {})))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), rtol=0, atol=1e-6)
    weights = load(export(model, "safetensors", list(task.input_shape), {"generation": 0}))
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(weights[name], tensor, rtol=0, atol=0)
