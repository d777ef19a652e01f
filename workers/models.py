"""Model families: validated options, generic builders, named presets, and the registry.

A *family* is a pydantic options model (unknown keys refused) plus a builder
``(options, task) -> nn.Module`` and a cross-check ``(options, task) -> list[str]`` that says what is
wrong with options that are valid on their own but do not fit the task (a CNN on a flat vector). The
built-in families are ``mlp``, ``cnn``, ``resnet`` and ``gpt`` (a language model, ``workers.gpt``); operators add their own through the Python entry
point group ``lifelong.models`` (each entry point names a :class:`Family`), never through code in a
request.

Every built-in model is an ``nn.Sequential`` of standard modules with readable names (``fc1``,
``act1``, ``conv2``, ``stage2_block1``, ``head``), so that it is ``torch.fx``-traceable and
``net2net`` can grow it: ``deepen(after="act1")`` names a place, width groups name layers. The output
layer is always called ``head`` and is never widened (its width is the task's output size).

Generic builders (:func:`mlp`, :func:`cnn`, :func:`resnet`) take plain arguments; presets are
``functools.partial`` of them (:data:`mlp_small`, :data:`resnet8`, ...).
"""

from __future__ import annotations

import functools
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Generic, Literal, TypeVar

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from workers import gpt as _gpt
from workers.spec import ModelSpec, TaskSpec

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "lifelong.models"
MAX_WIDTH = 65_536
MAX_LAYERS = 64

Activation = Literal["relu", "gelu", "tanh", "silu", "leaky_relu", "elu"]
_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
}


def make_activation(name: str) -> nn.Module:
    """A fresh activation module by name (see :data:`Activation`)."""
    return _ACTIVATIONS[name]()


# --------------------------------------------------------------------------------------------------
# Generic builders
# --------------------------------------------------------------------------------------------------


def mlp(
    input_dim: int,
    output_dim: int,
    hidden: Sequence[int] = (64, 64),
    *,
    activation: str = "relu",
    norm: Literal["none", "batch", "layer"] = "none",
    dropout: float = 0.0,
) -> nn.Sequential:
    """``flatten → [fc_i → norm_i → act_i → drop_i] × len(hidden) → head``.

    The input may have any per-sample shape; it is flattened to ``input_dim`` features.
    """
    layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    width = input_dim
    for i, h in enumerate(hidden, 1):
        layers[f"fc{i}"] = nn.Linear(width, h)
        if norm == "batch":
            layers[f"norm{i}"] = nn.BatchNorm1d(h)
        elif norm == "layer":
            layers[f"norm{i}"] = nn.LayerNorm(h)
        layers[f"act{i}"] = make_activation(activation)
        if dropout > 0:
            layers[f"drop{i}"] = nn.Dropout(dropout)
        width = h
    layers["head"] = nn.Linear(width, output_dim)
    return nn.Sequential(layers)


def _conv_types(spatial_dims: int) -> tuple[type[nn.Module], ...]:
    """(Conv, BatchNorm, MaxPool, AvgPool, AdaptiveAvgPool, AdaptiveMaxPool) for 1-D or 2-D."""
    if spatial_dims == 1:
        return (
            nn.Conv1d,
            nn.BatchNorm1d,
            nn.MaxPool1d,
            nn.AvgPool1d,
            nn.AdaptiveAvgPool1d,
            nn.AdaptiveMaxPool1d,
        )
    if spatial_dims == 2:
        return (
            nn.Conv2d,
            nn.BatchNorm2d,
            nn.MaxPool2d,
            nn.AvgPool2d,
            nn.AdaptiveAvgPool2d,
            nn.AdaptiveMaxPool2d,
        )
    raise ValueError(f"convolutions need 1 or 2 spatial dimensions, got {spatial_dims}")


def cnn(
    in_channels: int,
    spatial_dims: int,
    output_dim: int,
    channels: Sequence[int] = (32, 64),
    *,
    kernel_size: int = 3,
    norm: Literal["none", "batch"] = "batch",
    activation: str = "relu",
    pool: Literal["none", "max", "avg"] = "max",
    global_pool: Literal["avg", "max"] = "avg",
    fc: Sequence[int] = (),
    dropout: float = 0.0,
) -> nn.Sequential:
    """``[conv_i → norm_i → act_i → pool_i] × len(channels) → global pool → [fc_j → act] → head``.

    Convolutions keep the length (odd ``kernel_size``, "same" padding); each ``pool_i`` halves it.
    The global pool makes the head see one feature per channel, so widening the last convolution
    widens the first fully connected layer's input one-for-one.
    """
    conv_t, bn_t, maxpool_t, avgpool_t, gavg_t, gmax_t = _conv_types(spatial_dims)
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    width = in_channels
    for i, c in enumerate(channels, 1):
        layers[f"conv{i}"] = conv_t(width, c, kernel_size, padding=kernel_size // 2)
        if norm == "batch":
            layers[f"norm{i}"] = bn_t(c)
        layers[f"act{i}"] = make_activation(activation)
        if pool == "max":
            layers[f"pool{i}"] = maxpool_t(2)
        elif pool == "avg":
            layers[f"pool{i}"] = avgpool_t(2)
        width = c
    layers["global_pool"] = (gavg_t if global_pool == "avg" else gmax_t)(1)
    layers["flatten"] = nn.Flatten()
    for j, h in enumerate(fc, 1):
        layers[f"fc{j}"] = nn.Linear(width, h)
        layers[f"fc_act{j}"] = make_activation(activation)
        if dropout > 0:
            layers[f"fc_drop{j}"] = nn.Dropout(dropout)
        width = h
    layers["head"] = nn.Linear(width, output_dim)
    return nn.Sequential(layers)


class BasicBlock(nn.Module):
    """A residual block: ``act(bn2(conv2(act(bn1(conv1(x))))) + shortcut(x))``.

    ``shortcut`` is a 1×1 convolution and BatchNorm (a projection) when the channels or the stride
    change, or when ``project`` asks for it; otherwise the identity.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        stride: int,
        spatial_dims: int,
        activation: str = "relu",
        project: bool = False,
    ) -> None:
        super().__init__()
        conv_t, bn_t, *_ = _conv_types(spatial_dims)
        self.conv1 = conv_t(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = bn_t(out_channels)
        self.act1 = make_activation(activation)
        self.conv2 = conv_t(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = bn_t(out_channels)
        self.shortcut: nn.Module
        if project or stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                OrderedDict(
                    conv=conv_t(in_channels, out_channels, 1, stride=stride, bias=False),
                    bn=bn_t(out_channels),
                )
            )
        else:
            self.shortcut = nn.Identity()
        self.act2 = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        result: torch.Tensor = self.act2(out + self.shortcut(x))
        return result


def resnet(
    in_channels: int,
    spatial_dims: int,
    output_dim: int,
    widths: Sequence[int] = (16, 32, 64),
    blocks_per_stage: int = 1,
    *,
    activation: str = "relu",
    projection: Literal["auto", "always"] = "auto",
) -> nn.Sequential:
    """A small ResNet: ``stem (3×3 conv, BN, act) → stages of BasicBlocks → global avg pool → head``.

    Stage ``s`` has ``widths[s]`` channels; its first block halves the length (stride 2) from the
    second stage on. Shortcuts are projections where the shape changes (``projection="auto"``) or in
    every block (``"always"``, which decouples the widths of consecutive blocks).
    """
    conv_t, bn_t, _, _, gavg_t, _ = _conv_types(spatial_dims)
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        stem=conv_t(in_channels, widths[0], 3, padding=1, bias=False),
        stem_norm=bn_t(widths[0]),
        stem_act=make_activation(activation),
    )
    width = widths[0]
    for s, w in enumerate(widths, 1):
        for b in range(1, blocks_per_stage + 1):
            stride = 2 if (s > 1 and b == 1) else 1
            layers[f"stage{s}_block{b}"] = BasicBlock(
                width,
                w,
                stride=stride,
                spatial_dims=spatial_dims,
                activation=activation,
                project=projection == "always",
            )
            width = w
    layers["global_pool"] = gavg_t(1)
    layers["flatten"] = nn.Flatten()
    layers["head"] = nn.Linear(width, output_dim)
    return nn.Sequential(layers)


# Named presets: partials of the generic builders.
mlp_small = functools.partial(mlp, hidden=(64, 64))
mlp_wide = functools.partial(mlp, hidden=(256, 256))
cnn_small = functools.partial(cnn, channels=(16, 32))
resnet8 = functools.partial(resnet, widths=(16, 32, 64), blocks_per_stage=1)
resnet14 = functools.partial(resnet, widths=(16, 32, 64), blocks_per_stage=2)


# --------------------------------------------------------------------------------------------------
# Options (what a job spec may say) and the cross-checks against the task
# --------------------------------------------------------------------------------------------------


class MLPOptions(BaseModel):
    """Options of the ``mlp`` family."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hidden: tuple[int, ...] = Field(
        default=(64, 64), min_length=1, max_length=MAX_LAYERS, description="Hidden widths."
    )
    activation: Activation = "relu"
    norm: Literal["none", "batch", "layer"] = "none"
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)


class CNNOptions(BaseModel):
    """Options of the ``cnn`` family (input ``(C, L)`` or ``(C, H, W)``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    channels: tuple[int, ...] = Field(default=(32, 64), min_length=1, max_length=MAX_LAYERS)
    kernel_size: int = Field(default=3, ge=1, le=31)
    norm: Literal["none", "batch"] = "batch"
    activation: Activation = "relu"
    pool: Literal["none", "max", "avg"] = "max"
    global_pool: Literal["avg", "max"] = "avg"
    fc: tuple[int, ...] = Field(default=(), max_length=MAX_LAYERS)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)


class ResNetOptions(BaseModel):
    """Options of the ``resnet`` family (input ``(C, L)`` or ``(C, H, W)``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    widths: tuple[int, ...] = Field(default=(16, 32, 64), min_length=1, max_length=8)
    blocks_per_stage: int = Field(default=1, ge=1, le=16)
    activation: Activation = "relu"
    projection: Literal["auto", "always"] = "auto"


def _check_widths(name: str, widths: Sequence[int]) -> list[str]:
    return [
        f"{name}[{i}] = {w} must be between 1 and {MAX_WIDTH}"
        for i, w in enumerate(widths)
        if not 1 <= w <= MAX_WIDTH
    ]


def _conv_input_errors(family: str, task: TaskSpec) -> list[str]:
    shape = list(task.input_shape)
    if len(shape) in (2, 3):
        return []
    if len(shape) == 1:
        return [
            f"family '{family}' needs input_shape (channels, length) or (channels, height, "
            f"width), but the task's input_shape is {shape}: for a 1-D signal of {shape[0]} "
            f"values push samples shaped [1, {shape[0]}] and set input_shape to [1, {shape[0]}], "
            f"or use family 'mlp' for flat feature vectors"
        ]
    return [
        f"family '{family}' supports 1-D (channels, length) and 2-D (channels, height, width) "
        f"inputs, but the task's input_shape is {shape}; use family 'mlp' or reshape the samples"
    ]


def _cnn_accepts(task: TaskSpec) -> list[str]:
    return _conv_input_errors("cnn", task)


def _resnet_accepts(task: TaskSpec) -> list[str]:
    return _conv_input_errors("resnet", task)


def _check_mlp(options: MLPOptions, task: TaskSpec) -> list[str]:
    return _check_widths("hidden", options.hidden)


def _check_cnn(options: CNNOptions, task: TaskSpec) -> list[str]:
    errors = _check_widths("channels", options.channels) + _check_widths("fc", options.fc)
    if options.kernel_size % 2 == 0:
        errors.append(
            f"kernel_size {options.kernel_size} must be odd so that a convolution keeps the "
            f"length; use {options.kernel_size - 1} or {options.kernel_size + 1}"
        )
    if len(task.input_shape) not in (2, 3):
        return errors  # reported by _cnn_accepts
    if options.pool != "none":
        stages = len(options.channels)
        smallest = min(task.input_shape[1:])
        need = 2**stages
        if smallest < need:
            fits = max(0, int(math.log2(smallest))) if smallest >= 1 else 0
            errors.append(
                f"{stages} pooling stages halve the length {stages} times, which needs a spatial "
                f"size of at least {need}, but the smallest spatial size is {smallest}: use at "
                f"most {fits} conv layers with pool='{options.pool}', or pool='none'"
            )
    return errors


def _check_resnet(options: ResNetOptions, task: TaskSpec) -> list[str]:
    errors = _check_widths("widths", options.widths)
    if len(task.input_shape) not in (2, 3):
        return errors  # reported by _resnet_accepts
    smallest = min(task.input_shape[1:])
    downsamples = len(options.widths) - 1
    if smallest < 2**downsamples:
        errors.append(
            f"{len(options.widths)} stages halve the length {downsamples} times, which needs a "
            f"spatial size of at least {2**downsamples}, but the smallest spatial size is "
            f"{smallest}: use at most {int(math.log2(smallest)) + 1} stages"
        )
    return errors


def _build_mlp(options: MLPOptions, task: TaskSpec) -> nn.Module:
    return mlp(
        task.sample_elements,
        task.output_dim,
        options.hidden,
        activation=options.activation,
        norm=options.norm,
        dropout=options.dropout,
    )


def _build_cnn(options: CNNOptions, task: TaskSpec) -> nn.Module:
    return cnn(
        task.input_shape[0],
        len(task.input_shape) - 1,
        task.output_dim,
        options.channels,
        kernel_size=options.kernel_size,
        norm=options.norm,
        activation=options.activation,
        pool=options.pool,
        global_pool=options.global_pool,
        fc=options.fc,
        dropout=options.dropout,
    )


def _build_resnet(options: ResNetOptions, task: TaskSpec) -> nn.Module:
    return resnet(
        task.input_shape[0],
        len(task.input_shape) - 1,
        task.output_dim,
        options.widths,
        options.blocks_per_stage,
        activation=options.activation,
        projection=options.projection,
    )


# --------------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------------

OptionsT = TypeVar("OptionsT", bound=BaseModel)


def _no_checks(options: Any, task: TaskSpec) -> list[str]:
    return []


def _no_task_checks(task: TaskSpec) -> list[str]:
    return []


@dataclass(frozen=True)
class Family(Generic[OptionsT]):
    """A model family: its options model, its builder, and its checks against a task.

    ``check`` returns human-readable errors (each saying what to change) for options that are valid
    alone but do not fit the task; ``build`` may assume that ``check`` returned none.
    """

    name: str
    options: type[OptionsT]
    build: Callable[[OptionsT, TaskSpec], nn.Module]
    check: Callable[[OptionsT, TaskSpec], list[str]] = field(default=_no_checks)
    description: str = ""
    accepts: Callable[[TaskSpec], list[str]] = field(default=_no_task_checks)
    """Errors that depend on the task alone (e.g. the input rank), reported even when the options
    are invalid, so that one message lists everything to change."""


class ModelSpecError(ValueError):
    """A model spec that cannot be built; ``errors`` lists every problem, each saying what to do."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__("invalid model spec: " + "; ".join(self.errors))


@dataclass
class _EntryPoints:
    loaded: bool = False
    errors: dict[str, str] = field(default_factory=dict)


_registry: dict[str, Family[Any]] = {}
_registry_lock = threading.Lock()
_entry_points = _EntryPoints()


def register_family(family: Family[Any], *, replace: bool = False) -> None:
    """Add a family to the registry (``replace=True`` to override one of the same name)."""
    with _registry_lock:
        if family.name in _registry and not replace:
            raise ValueError(f"model family '{family.name}' is already registered")
        _registry[family.name] = family


def _load_entry_points() -> None:
    """Register the families that installed packages declare under ``lifelong.models``, once."""
    if _entry_points.loaded:
        return
    _entry_points.loaded = True
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            family = ep.load()
            if callable(family) and not isinstance(family, Family):
                family = family()
            if not isinstance(family, Family):
                raise TypeError(f"it is a {type(family).__name__}, not a workers.models.Family")
            if family.name != ep.name:
                raise ValueError(
                    f"the entry point is named '{ep.name}' but the family '{family.name}'"
                )
            register_family(family)
        except Exception as exc:  # an operator's plugin must not break the built-in families
            _entry_points.errors[ep.name] = f"{type(exc).__name__}: {exc}"
            logger.warning("model family entry point %r could not be loaded: %s", ep.name, exc)


def families() -> dict[str, Family[Any]]:
    """Every registered family by name: the built-ins and the installed entry points."""
    _load_entry_points()
    with _registry_lock:
        return dict(_registry)


def get_family(name: str) -> Family[Any]:
    known = families()
    if name not in known:
        hint = (
            f" (its entry point failed to load: {_entry_points.errors[name]})"
            if name in _entry_points.errors
            else ""
        )
        raise ModelSpecError(
            [f"unknown model family '{name}'{hint}; available: {', '.join(sorted(known))}"]
        )
    return known[name]


def _format_validation_error(exc: ValidationError) -> list[str]:
    out = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "options"
        if err["type"] == "extra_forbidden":
            out.append(f"unknown option '{where}'")
        else:
            out.append(f"{where}: {err['msg']}")
    return out


def validate_model_spec(spec: ModelSpec, task: TaskSpec) -> BaseModel:
    """The family's validated options for ``spec``, or :class:`ModelSpecError` with every problem.

    Unknown keys, out-of-range values and options that do not fit the task are all collected into
    one error, each saying what to change.
    """
    family = get_family(spec.family)
    task_errors = family.accepts(task)
    try:
        options: BaseModel = family.options.model_validate(spec.options())
    except ValidationError as exc:
        errors = _format_validation_error(exc)
        if any(e.startswith("unknown option") for e in errors):
            allowed = ", ".join(sorted(family.options.model_fields))
            errors.append(f"family '{family.name}' accepts: {allowed}")
        raise ModelSpecError(errors + task_errors) from None
    errors = family.check(options, task) + task_errors
    if errors:
        raise ModelSpecError(errors)
    return options


def build_model(spec: ModelSpec, task: TaskSpec) -> nn.Module:
    """Validate ``spec`` against ``task`` and build a freshly initialised model (CPU, train mode)."""
    options = validate_model_spec(spec, task)
    return get_family(spec.family).build(options, task)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def estimate_param_count(spec: ModelSpec, task: TaskSpec) -> int:
    """The number of parameters ``spec`` would have, without allocating them (built on ``meta``)."""
    options = validate_model_spec(spec, task)
    with torch.device("meta"):
        model = get_family(spec.family).build(options, task)
    return count_parameters(model)


register_family(
    Family(
        "mlp",
        MLPOptions,
        _build_mlp,
        _check_mlp,
        "Fully connected: hidden widths, activation, norm (batch/layer/none), dropout.",
    )
)
register_family(
    Family(
        "cnn",
        CNNOptions,
        _build_cnn,
        _check_cnn,
        "Convolutional, 1-D or 2-D: channels, kernel size, norm, pooling, fc head.",
        _cnn_accepts,
    )
)
register_family(
    Family(
        "resnet",
        ResNetOptions,
        _build_resnet,
        _check_resnet,
        "Small residual net with BatchNorm and projection shortcuts, 1-D or 2-D.",
        _resnet_accepts,
    )
)
register_family(
    Family(
        "gpt",
        _gpt.GPTOptions,
        _gpt.build,
        _gpt.check,
        "Decoder-only pre-norm transformer for language_modeling: n_layer, n_head, d_model, "
        "ffn_multiple, norm (layer/rms), positions (learned/rope), tied embeddings, dropout, bias.",
        _gpt.accepts,
    )
)
