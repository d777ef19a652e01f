"""Per-layer handlers, in a registry keyed by module type.

A handler says three things about one layer type: how its call couples width groups (``trace``),
which axes of which parameters and buffers follow those groups (``param_axes``), and how to update
its size attributes once the tensors have grown (``resize``). The graph code only ever asks the
registry; it never tests layer classes itself. Register a handler for your own layer with
:func:`register_handler`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, cast

from torch import nn

from ._errors import GrowthError
from ._layout import Layout
from ._trace import TraceContext


@dataclass(frozen=True)
class ParamAxes:
    """Which axes of one parameter (or buffer) follow width groups.

    ``out``: the axis of the module's own units (rows of a producer such as Linear, channels of a
    channelwise module such as BatchNorm). ``in_``: the axis of its input units (columns of a
    consumer); the outgoing Net2Net split is applied along it. ``fresh``: how the rows of brand-new
    units start under the random init modes: ``"random"`` (weights), ``"zero"`` (biases) or
    ``"copy"`` (gains and statistics, always copied from the source unit).
    """

    out: int | None = None
    in_: int | None = None
    fresh: Literal["random", "zero", "copy"] = "random"


class Handler:
    """How one module type takes part in growth. Subclass it and :func:`register_handler` it.

    ``activation``: an elementwise activation (deepen re-uses it after an inserted layer).
    ``idempotent``: ``act(act(x)) == act(x)``, so an identity layer followed by it is exact.
    ``batch_norm``: it normalises with batch statistics (deepen mirrors it, calibrated).
    """

    activation: bool = False
    idempotent: bool = False
    batch_norm: bool = False
    follows_inputs: bool = False  # trace sees the other tensor inputs (TraceContext.meet_inputs)

    def trace(self, module: nn.Module, ctx: TraceContext) -> Layout:
        """Declare the roles of one call of ``module`` through ``ctx`` and return the output layout
        (see :class:`TraceContext`: ``passthrough``, ``dense``, ``channelwise``, ``embed``,
        ``mix``, ``block``)."""
        return ctx.block(
            f"module '{ctx.name}' ({type(module).__name__}) in group '{{group}}' cannot be "
            "widened; its handler does not say how"
        )

    def param_axes(self, module: nn.Module) -> Mapping[str, ParamAxes]:
        """Local parameter and buffer names that follow width groups, with their axes."""
        return {}

    def resize(self, module: nn.Module, out_width: int | None, in_width: int | None) -> None:
        """Update size attributes after growth. ``out_width``: new size of the ``out`` axis
        group(s); ``in_width``: new number of input units (``None``: unchanged)."""


_REGISTRY: dict[type[nn.Module], Handler] = {}


def register_handler(module_type: type[nn.Module], handler: Handler) -> None:
    """Use ``handler`` for modules of exactly ``module_type`` (and for subclasses that keep its
    ``forward``). Registering a type again replaces its handler. A registered type is a leaf of the
    trace: net2net does not look inside it."""
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise GrowthError(
            f"register_handler: {module_type!r} is not an nn.Module subclass; pass the layer class"
        )
    if not isinstance(handler, Handler):
        raise GrowthError(
            f"register_handler: {handler!r} is not a net2net.Handler; subclass net2net.Handler"
        )
    _REGISTRY[module_type] = handler


def handler_for(module: nn.Module) -> Handler | None:
    """The registered handler of ``module``'s type, or of a base type whose forward it keeps."""
    cls = type(module)
    found = _REGISTRY.get(cls)
    if found is not None:
        return found
    for base in cls.__mro__[1:]:
        h = _REGISTRY.get(base)
        if h is not None and getattr(cls, "forward", None) is getattr(base, "forward", None):
            return h
    return None


def axes_of(module: nn.Module, free: Mapping[str, int]) -> dict[str, ParamAxes]:
    """The tensors of ``module`` that follow width groups: its handler's, and the parameters its
    own forward uses as-is (``free``: name → axis), which are per-channel and copied."""
    handler = handler_for(module)
    axes = dict(handler.param_axes(module)) if handler is not None else {}
    axes.update({name: ParamAxes(out=axis, fresh="copy") for name, axis in free.items()})
    return axes


# ---------------------------------------------------------------------------------------------
# Built-in handlers


class Dense(Handler):
    """Linear: consumes the last dim, produces a new group there."""

    def trace(self, module: nn.Module, ctx: TraceContext) -> Layout:
        return ctx.dense(-1, cast(nn.Linear, module).out_features)

    def param_axes(self, module: nn.Module) -> Mapping[str, ParamAxes]:
        return {"weight": ParamAxes(out=0, in_=1), "bias": ParamAxes(out=0, fresh="zero")}

    def resize(self, module: nn.Module, out_width: int | None, in_width: int | None) -> None:
        lin = cast(nn.Linear, module)
        if out_width is not None:
            lin.out_features = out_width
        if in_width is not None:
            lin.in_features = in_width


def _conv(module: nn.Module) -> nn.modules.conv._ConvNd:
    return cast(nn.modules.conv._ConvNd, module)


def _is_depthwise(module: nn.Module) -> bool:
    c = _conv(module)
    return c.groups > 1 and c.groups == c.in_channels == c.out_channels


class Conv(Handler):
    """Conv1d/2d/3d, grouped and depthwise. A depthwise conv (groups = in = out channels) is
    channelwise: each channel keeps its own kernel, so it passes the group's mapping through."""

    def trace(self, module: nn.Module, ctx: TraceContext) -> Layout:
        c = _conv(module)
        ch = ctx.rank - len(c.kernel_size) - 1
        spatial = list(range(ch + 1, ctx.rank))
        if _is_depthwise(module):
            return ctx.channelwise(ch, mixes=spatial)
        return ctx.dense(ch, c.out_channels, groups=c.groups, mixes=spatial)

    def param_axes(self, module: nn.Module) -> Mapping[str, ParamAxes]:
        if _is_depthwise(module):
            return {
                "weight": ParamAxes(out=0, fresh="copy"),
                "bias": ParamAxes(out=0, fresh="copy"),
            }
        return {"weight": ParamAxes(out=0, in_=1), "bias": ParamAxes(out=0, fresh="zero")}

    def resize(self, module: nn.Module, out_width: int | None, in_width: int | None) -> None:
        c = _conv(module)
        if _is_depthwise(module) and out_width is not None:
            c.in_channels = c.out_channels = c.groups = out_width
            return
        if out_width is not None:
            c.out_channels = out_width
        if in_width is not None:
            c.in_channels = in_width


class ConvTranspose(Handler):
    """ConvTranspose1d/2d/3d with groups=1 (weight is (in, out, *k))."""

    def trace(self, module: nn.Module, ctx: TraceContext) -> Layout:
        c = _conv(module)
        ch = ctx.rank - len(c.kernel_size) - 1
        spatial = list(range(ch + 1, ctx.rank))
        if c.groups != 1:
            return ctx.block(
                f"grouped transposed conv '{ctx.name}' in group '{{group}}' is not supported; "
                "use groups=1"
            )
        return ctx.dense(ch, c.out_channels, mixes=spatial)

    def param_axes(self, module: nn.Module) -> Mapping[str, ParamAxes]:
        return {"weight": ParamAxes(out=1, in_=0), "bias": ParamAxes(out=0, fresh="zero")}

    def resize(self, module: nn.Module, out_width: int | None, in_width: int | None) -> None:
        c = _conv(module)
        if out_width is not None:
            c.out_channels = out_width
        if in_width is not None:
            c.in_channels = in_width


class BatchNorm(Handler):
    """BatchNorm1d/2d/3d (and InstanceNorm): per-channel weight, bias and running statistics, all
    remapped with the group's mapping (the paper's own example of a constraint)."""

    def __init__(self, *, batch_norm: bool = True) -> None:
        self.batch_norm = batch_norm

    def trace(self, module: nn.Module, ctx: TraceContext) -> Layout:
        ch = 1 if ctx.rank > 1 else 0
        return ctx.channelwise(ch)

    def param_axes(self, module: nn.Module) -> Mapping[str, ParamAxes]:
        return {
            name: ParamAxes(out=0, fresh="copy")
            for name in ("weight", "bias", "running_mean", "running_var")
        }

    def resize(self, module: nn.Module, out_width: int | None, in_width: int | None) -> None:
        if out_width is not None:
            cast(nn.modules.batchnorm._NormBase, module).num_features = out_width


def _normalized_shape(module: nn.Module) -> tuple[int, ...]:
    return tuple(cast(nn.LayerNorm, module).normalized_shape)


class FeatureNorm(Handler):
    """LayerNorm / RMSNorm over the last dim: exact only if every unit of the group is replicated
    the same number of times (integer factors), which the mapping then guarantees."""

    def trace(self, module: nn.Module, ctx: TraceContext) -> Layout:
        shape = _normalized_shape(module)
        if len(shape) == 1:
            return ctx.channelwise(-1, balanced=True)
        dims = list(range(ctx.rank - len(shape), ctx.rank))
        ctx.mix(dims, f"norm ({type(module).__name__}) over {len(shape)} dims")
        return ctx.passthrough()

    def param_axes(self, module: nn.Module) -> Mapping[str, ParamAxes]:
        if len(_normalized_shape(module)) != 1:
            return {}
        return {"weight": ParamAxes(out=0, fresh="copy"), "bias": ParamAxes(out=0, fresh="copy")}

    def resize(self, module: nn.Module, out_width: int | None, in_width: int | None) -> None:
        if out_width is not None:
            cast(nn.LayerNorm, module).normalized_shape = (out_width,)


class Refuse(Handler):
    """A known module that cannot be widened through without changing the function."""

    def __init__(self, advice: str, dim: int = 1, kind: str = "norm") -> None:
        self.advice = advice
        self.dim = dim
        self.kind = kind

    def trace(self, module: nn.Module, ctx: TraceContext) -> Layout:
        d = ctx.dim(self.dim) if ctx.rank > 1 else 0
        lay = ctx.input_layout()
        if d in lay:
            ctx.block(
                f"{self.kind} '{ctx.name}' ({type(module).__name__}) in group '{{group}}' cannot "
                f"be widened without changing the function; {self.advice}"
            )
            return {k: v for k, v in lay.items() if k != d}
        return ctx.passthrough()


class Opaque(Handler):
    """Register a module type with this handler to make it an opaque leaf of the trace: net2net
    does not look inside it, and every group that passes through it keeps its width."""

    def trace(self, module: nn.Module, ctx: TraceContext) -> Layout:
        return ctx.block(
            f"module '{ctx.name}' ({type(module).__name__}) is registered as opaque, and group "
            "'{group}' passes through it"
        )


class Embedding(Handler):
    """Embedding: a producer whose new group is the embedding dim."""

    def trace(self, module: nn.Module, ctx: TraceContext) -> Layout:
        return ctx.embed(cast(nn.Embedding, module).embedding_dim)

    def param_axes(self, module: nn.Module) -> Mapping[str, ParamAxes]:
        return {"weight": ParamAxes(out=1)}

    def resize(self, module: nn.Module, out_width: int | None, in_width: int | None) -> None:
        if out_width is not None:
            cast(nn.Embedding, module).embedding_dim = out_width


class Elementwise(Handler):
    """Activations, Dropout, Identity: each output channel depends on its own channel only."""

    def __init__(self, *, activation: bool = True, idempotent: bool = False) -> None:
        self.activation = activation
        self.idempotent = idempotent

    def trace(self, module: nn.Module, ctx: TraceContext) -> Layout:
        return ctx.passthrough()


class PReLU(Handler):
    """PReLU with one slope per channel (dim 1)."""

    activation = True

    def trace(self, module: nn.Module, ctx: TraceContext) -> Layout:
        if cast(nn.PReLU, module).num_parameters == 1:
            return ctx.passthrough()
        return ctx.channelwise(1 if ctx.rank > 1 else 0)

    def param_axes(self, module: nn.Module) -> Mapping[str, ParamAxes]:
        if cast(nn.PReLU, module).num_parameters == 1:
            return {}
        return {"weight": ParamAxes(out=0, fresh="copy")}

    def resize(self, module: nn.Module, out_width: int | None, in_width: int | None) -> None:
        p = cast(nn.PReLU, module)
        if out_width is not None and p.num_parameters != 1:
            p.num_parameters = out_width


class Spatial(Handler):
    """Pooling, padding and upsampling over the last ``nd`` dims; channels pass through."""

    def __init__(self, nd: int | None) -> None:
        self.nd = nd

    def trace(self, module: nn.Module, ctx: TraceContext) -> Layout:
        nd = self.nd if self.nd is not None else max(ctx.rank - 2, 1)
        ctx.mix(list(range(ctx.rank - nd, ctx.rank)), "pool")
        return ctx.passthrough()


class Reshape(Handler):
    """Flatten / Unflatten: channels are followed through the reshape."""

    def trace(self, module: nn.Module, ctx: TraceContext) -> Layout:
        return ctx.reshape()


class Softmax(Handler):
    """Softmax-like modules normalise along ``module.dim``."""

    def trace(self, module: nn.Module, ctx: TraceContext) -> Layout:
        dim = cast(nn.Softmax, module).dim
        if dim is None:
            return ctx.block(f"softmax '{ctx.name}' without a dim mixes group '{{group}}'")
        ctx.mix([dim], "softmax")
        return ctx.passthrough()


def _register_builtins() -> None:
    dense, conv = Dense(), Conv()
    register_handler(nn.Linear, dense)
    c: type[nn.Module]
    for c in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
        register_handler(c, conv)
    for c in (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d):
        register_handler(c, ConvTranspose())
    for c in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm):
        register_handler(c, BatchNorm())
    for c in (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d):
        register_handler(c, BatchNorm(batch_norm=False))
    register_handler(nn.LayerNorm, FeatureNorm())
    register_handler(nn.RMSNorm, FeatureNorm())
    register_handler(nn.GroupNorm, Refuse("use BatchNorm or LayerNorm"))
    register_handler(
        nn.LocalResponseNorm, Refuse("LocalResponseNorm mixes neighbouring channels; remove it")
    )
    register_handler(nn.Embedding, Embedding())
    for c in (nn.ReLU, nn.ReLU6, nn.Hardtanh):
        register_handler(c, Elementwise(idempotent=True))
    for c in (
        nn.LeakyReLU,
        nn.GELU,
        nn.SiLU,
        nn.Tanh,
        nn.Sigmoid,
        nn.Hardswish,
        nn.Hardsigmoid,
        nn.ELU,
        nn.SELU,
        nn.CELU,
        nn.Mish,
        nn.Softplus,
        nn.Softsign,
        nn.Tanhshrink,
        nn.LogSigmoid,
        nn.Hardshrink,
        nn.Softshrink,
    ):
        register_handler(c, Elementwise())
    for c in (
        nn.Identity,
        nn.Dropout,
        nn.Dropout1d,
        nn.Dropout2d,
        nn.Dropout3d,
        nn.AlphaDropout,
        nn.FeatureAlphaDropout,
    ):
        register_handler(c, Elementwise(activation=False, idempotent=True))
    register_handler(nn.PReLU, PReLU())
    pools: list[tuple[type[nn.Module], int | None]] = [
        (nn.MaxPool1d, 1),
        (nn.MaxPool2d, 2),
        (nn.MaxPool3d, 3),
        (nn.AvgPool1d, 1),
        (nn.AvgPool2d, 2),
        (nn.AvgPool3d, 3),
        (nn.AdaptiveAvgPool1d, 1),
        (nn.AdaptiveAvgPool2d, 2),
        (nn.AdaptiveAvgPool3d, 3),
        (nn.AdaptiveMaxPool1d, 1),
        (nn.AdaptiveMaxPool2d, 2),
        (nn.AdaptiveMaxPool3d, 3),
        (nn.LPPool1d, 1),
        (nn.LPPool2d, 2),
        (nn.ZeroPad1d, 1),
        (nn.ZeroPad2d, 2),
        (nn.ZeroPad3d, 3),
        (nn.ConstantPad1d, 1),
        (nn.ConstantPad2d, 2),
        (nn.ConstantPad3d, 3),
        (nn.ReflectionPad1d, 1),
        (nn.ReflectionPad2d, 2),
        (nn.ReplicationPad1d, 1),
        (nn.ReplicationPad2d, 2),
        (nn.Upsample, None),
    ]
    for pool, nd in pools:
        register_handler(pool, Spatial(nd))
    register_handler(nn.Flatten, Reshape())
    register_handler(nn.Unflatten, Reshape())
    for c in (nn.Softmax, nn.LogSoftmax, nn.Softmin):
        register_handler(c, Softmax())


_register_builtins()
