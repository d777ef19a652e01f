"""Model families: builders, validation that collects every error, the registry, entry points."""

from __future__ import annotations

from collections.abc import Iterator
from importlib import metadata

import pytest
import torch
import torch.fx
from torch import nn

from workers import models
from workers.models import (
    CNNOptions,
    Family,
    MLPOptions,
    ModelSpecError,
    build_model,
    count_parameters,
    estimate_param_count,
    families,
    mlp_small,
    register_family,
    resnet8,
    validate_model_spec,
)
from workers.spec import ModelSpec, TaskSpec

FLAT = TaskSpec(kind="classification", input_shape=(20,), num_classes=5)
SIGNAL = TaskSpec(kind="classification", input_shape=(2, 32), num_classes=4)
IMAGE = TaskSpec(kind="regression", input_shape=(3, 16, 16), num_outputs=2)

CASES = [
    (ModelSpec(family="mlp", hidden=[16, 8]), FLAT),
    (ModelSpec(family="mlp", hidden=[16], norm="batch", dropout=0.1), FLAT),
    (ModelSpec(family="mlp", hidden=[16, 16], norm="layer", activation="gelu"), IMAGE),
    (ModelSpec(family="cnn", channels=[8, 16], fc=[12]), SIGNAL),
    (ModelSpec(family="cnn", channels=[4], kernel_size=5, pool="avg", norm="none"), IMAGE),
    (ModelSpec(family="resnet", widths=[4, 8]), SIGNAL),
    (ModelSpec(family="resnet", widths=[4, 8, 8], blocks_per_stage=2, projection="always"), IMAGE),
]


@pytest.mark.parametrize(("spec", "task"), CASES, ids=lambda v: getattr(v, "family", ""))
def test_builds_trace_and_predict_the_right_shape(spec: ModelSpec, task: TaskSpec) -> None:
    torch.manual_seed(0)
    model = build_model(spec, task).eval()
    x = torch.randn(6, *task.input_shape)
    out = model(x)
    assert out.shape == (6, task.output_dim)
    head = model.get_submodule("head")
    assert isinstance(head, nn.Linear)
    assert head.out_features == task.output_dim
    traced = torch.fx.symbolic_trace(model)
    torch.testing.assert_close(traced(x), out, atol=0.0, rtol=0.0)
    assert estimate_param_count(spec, task) == count_parameters(model)


def test_mlp_layers_have_readable_names() -> None:
    model = build_model(ModelSpec(family="mlp", hidden=[8, 4], norm="batch"), FLAT)
    names = [name for name, _ in model.named_children()]
    assert names == ["flatten", "fc1", "norm1", "act1", "fc2", "norm2", "act2", "head"]
    assert count_parameters(model) == (20 * 8 + 8) + 2 * 8 + (8 * 4 + 4) + 2 * 4 + (4 * 5 + 5)


def test_resnet_uses_projections_where_the_shape_changes() -> None:
    model = build_model(ModelSpec(family="resnet", widths=[4, 4, 8]), SIGNAL)
    assert isinstance(model.get_submodule("stage1_block1.shortcut"), nn.Identity)
    assert isinstance(model.get_submodule("stage2_block1.shortcut"), nn.Identity) is False
    assert model.get_submodule("stage2_block1.conv1").stride == (2,)
    assert isinstance(model.get_submodule("stage3_block1.shortcut.conv"), nn.Conv1d)


def test_defaults_and_presets() -> None:
    options = validate_model_spec(ModelSpec(family="mlp"), FLAT)
    assert options == MLPOptions(hidden=(64, 64))
    small = mlp_small(20, 5)
    assert [m.out_features for m in small if isinstance(m, nn.Linear)] == [64, 64, 5]
    net = resnet8(3, 2, 10)
    assert net(torch.randn(2, 3, 8, 8)).shape == (2, 10)


def test_cnn_on_a_flat_input_explains_what_to_change() -> None:
    spec = ModelSpec(family="cnn", channels=[8], kernel_size=4, colour="red")
    with pytest.raises(ModelSpecError) as info:
        validate_model_spec(spec, FLAT)
    # An unknown key with the accepted ones, and the input shape that does not fit: one message.
    errors = info.value.errors
    assert len(errors) == 3
    assert errors[0] == "unknown option 'colour'"
    assert "accepts: activation, channels, dropout, fc, global_pool" in errors[1]
    assert "needs input_shape (channels, length)" in errors[2]

    spec = ModelSpec(family="cnn", channels=[8, 0], kernel_size=4)
    with pytest.raises(ModelSpecError) as info:
        validate_model_spec(spec, FLAT)
    errors = info.value.errors
    assert len(errors) == 3
    assert errors[0] == "channels[1] = 0 must be between 1 and 65536"
    assert "kernel_size 4 must be odd" in errors[1] and "use 3 or 5" in errors[1]
    assert "needs input_shape (channels, length)" in errors[2]
    assert "input_shape to [1, 20]" in errors[2] and "family 'mlp'" in errors[2]
    assert str(info.value).startswith("invalid model spec: channels[1] = 0")


def test_too_many_pooling_stages_for_the_length() -> None:
    task = TaskSpec(input_shape=(1, 6), num_classes=2)
    with pytest.raises(ModelSpecError) as info:
        validate_model_spec(ModelSpec(family="cnn", channels=[4, 4, 4]), task)
    (error,) = info.value.errors
    assert "at least 8" in error and "smallest spatial size is 6" in error
    assert "at most 2 conv layers" in error
    # Without pooling the same net fits.
    validate_model_spec(ModelSpec(family="cnn", channels=[4, 4, 4], pool="none"), task)
    with pytest.raises(ModelSpecError, match="use at most 3 stages"):
        validate_model_spec(ModelSpec(family="resnet", widths=[4, 4, 4, 4]), task)


def test_unknown_family_lists_the_available_ones() -> None:
    with pytest.raises(ModelSpecError) as info:
        build_model(ModelSpec(family="transformer"), FLAT)
    assert (
        info.value.errors
        == ["unknown model family 'transformer'; available: cnn, gpt, mlp, resnet"]
        or "available: cnn, gpt, mlp, resnet" in info.value.errors[0]
    )


def test_wrong_types_are_reported_per_field() -> None:
    spec = ModelSpec(family="mlp", hidden="wide", dropout=1.5, norm="group")
    with pytest.raises(ModelSpecError) as info:
        validate_model_spec(spec, FLAT)
    fields = [e.split(":")[0] for e in info.value.errors]
    assert fields == ["hidden", "norm", "dropout"]
    assert "'none', 'batch' or 'layer'" in info.value.errors[1]


@pytest.fixture
def clean_registry() -> Iterator[None]:
    saved = dict(models._registry)
    saved_loaded = models._entry_points.loaded
    yield
    models._registry.clear()
    models._registry.update(saved)
    models._entry_points.loaded = saved_loaded
    models._entry_points.errors.clear()


def test_register_family(clean_registry: None) -> None:
    from tests.workers.plugin_family import FAMILY

    register_family(FAMILY)
    with pytest.raises(ValueError, match="already registered"):
        register_family(FAMILY)
    model = build_model(ModelSpec(family="tiny-linear"), FLAT)
    assert model(torch.randn(3, 20)).shape == (3, 5)
    with pytest.raises(ModelSpecError, match="unknown option 'width'"):
        validate_model_spec(ModelSpec(family="tiny-linear", width=3), FLAT)


def test_entry_points_add_families(clean_registry: None, monkeypatch: pytest.MonkeyPatch) -> None:
    good = metadata.EntryPoint(
        name="tiny-linear", value="tests.workers.plugin_family:FAMILY", group="lifelong.models"
    )
    broken = metadata.EntryPoint(
        name="broken", value="tests.workers.no_such_module:FAMILY", group="lifelong.models"
    )
    calls: list[str] = []

    def fake_entry_points(*, group: str) -> list[metadata.EntryPoint]:
        calls.append(group)
        return [good, broken]

    monkeypatch.setattr(models.metadata, "entry_points", fake_entry_points)
    models._entry_points.loaded = False
    assert sorted(families()) == ["cnn", "gpt", "mlp", "resnet", "tiny-linear"]
    assert isinstance(families()["tiny-linear"], Family)
    assert calls == ["lifelong.models"]  # loaded once
    with pytest.raises(ModelSpecError, match="entry point failed to load: ModuleNotFoundError"):
        build_model(ModelSpec(family="broken"), FLAT)


def test_options_are_frozen_and_reject_unknown_keys() -> None:
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        CNNOptions.model_validate({"channels": [4], "stride": 2})
