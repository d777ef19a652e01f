"""net2net: function-preserving growth (Net2WiderNet, Net2DeeperNet) for PyTorch models."""

from ._deepen import deepen
from ._errors import GrowthError
from ._handlers import Handler, Opaque, ParamAxes, register_handler
from ._modes import init_modes
from ._modules import Residual
from ._optim import transfer_optimizer
from ._outputs import ClassHead, add_classes
from ._replay import replay
from ._summary import count_params, predict_param_count, summarize
from ._trace import TraceContext
from ._types import Grown, WidthGroup
from ._widen import widen, widen_head_size, width_groups

__all__ = [
    "ClassHead",
    "Grown",
    "GrowthError",
    "Handler",
    "Opaque",
    "ParamAxes",
    "Residual",
    "TraceContext",
    "WidthGroup",
    "add_classes",
    "count_params",
    "deepen",
    "init_modes",
    "predict_param_count",
    "register_handler",
    "replay",
    "summarize",
    "transfer_optimizer",
    "widen",
    "widen_head_size",
    "width_groups",
]
