"""When, where and how much to grow: policies, guards, and the controller that explains itself."""

from growth_policy.config import (
    DataScalingConfig,
    DeepenConfig,
    GrowthPolicyConfig,
    GuardsConfig,
    MemoryConfig,
    PlateauConfig,
    SaturationConfig,
    ScheduleConfig,
    WidenConfig,
)
from growth_policy.policies import (
    Policy,
    PolicyContext,
    Verdict,
    data_scaling,
    data_target,
    manual,
    plateau,
    register_policy,
    registered_policies,
    schedule,
    unregister_policy,
)
from growth_policy.types import Decision, GrowthKind, GrowthOp, Observation

__all__ = [
    "DataScalingConfig",
    "Decision",
    "DeepenConfig",
    "GrowthKind",
    "GrowthOp",
    "GrowthPolicyConfig",
    "GuardsConfig",
    "MemoryConfig",
    "Observation",
    "PlateauConfig",
    "Policy",
    "PolicyContext",
    "SaturationConfig",
    "ScheduleConfig",
    "Verdict",
    "WidenConfig",
    "data_scaling",
    "data_target",
    "manual",
    "plateau",
    "register_policy",
    "registered_policies",
    "schedule",
    "unregister_policy",
]
