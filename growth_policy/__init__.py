"""When, where and how much to grow: policies, guards, and the controller that explains itself."""

from growth_policy.types import Decision, GrowthKind, GrowthOp, Observation

__all__ = ["Decision", "GrowthKind", "GrowthOp", "Observation"]
