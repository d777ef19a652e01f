"""When, where and how much to grow: policies, guards, and the controller that explains itself.

The saturation signals an observation carries (``Observation.group_signals``) are measured by the
workers (``workers.signals``); nothing here needs torch.
"""

from growth_policy._registry import (
    get_policy,
    register_policy,
    registered_policies,
    unregister_policy,
)
from growth_policy.config import (
    DataScalingConfig,
    DeepenConfig,
    DriftConfig,
    GrowthPolicyConfig,
    GuardsConfig,
    MemoryConfig,
    PlateauConfig,
    SaturationConfig,
    ScheduleConfig,
    ShrinkPerturbConfig,
    WidenConfig,
    growth_config_for_task,
    with_task_defaults,
)
from growth_policy.controller import Controller, derive_seed
from growth_policy.planning import (
    Limits,
    Plan,
    check_op,
    growth_op_from_request,
    plan_deepen,
    plan_widen,
)
from growth_policy.policies import (
    Policy,
    PolicyContext,
    Verdict,
    data_scaling,
    data_target,
    drift,
    manual,
    plateau,
    schedule,
)
from growth_policy.shape import (
    ModelShape,
    SummaryError,
    estimate_memory_bytes,
    parse_summary,
)
from growth_policy.types import Decision, GrowthKind, GrowthOp, GrowthRequest, Observation

__all__ = [
    "Controller",
    "DataScalingConfig",
    "Decision",
    "DeepenConfig",
    "DriftConfig",
    "GrowthKind",
    "GrowthOp",
    "GrowthPolicyConfig",
    "GrowthRequest",
    "GuardsConfig",
    "Limits",
    "MemoryConfig",
    "ModelShape",
    "Observation",
    "Plan",
    "PlateauConfig",
    "Policy",
    "PolicyContext",
    "SaturationConfig",
    "ScheduleConfig",
    "ShrinkPerturbConfig",
    "SummaryError",
    "Verdict",
    "WidenConfig",
    "check_op",
    "data_scaling",
    "data_target",
    "derive_seed",
    "drift",
    "estimate_memory_bytes",
    "get_policy",
    "growth_config_for_task",
    "growth_op_from_request",
    "manual",
    "parse_summary",
    "plan_deepen",
    "plan_widen",
    "plateau",
    "register_policy",
    "registered_policies",
    "schedule",
    "unregister_policy",
    "with_task_defaults",
]
