"""The policy registry: the names ``GrowthPolicyConfig.policies`` accepts and the policies behind them.

A module of its own, which imports neither the config nor the policies, so that the config checks
names here while the policies (which read the config) register into it: ``growth_policy.policies``
adds the built-ins when it is imported, which importing ``growth_policy`` always does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from growth_policy.policies import Policy

_REGISTRY: dict[str, Policy] = {}
_BUILTIN: set[str] = set()


def add_builtins(policies: Mapping[str, Policy]) -> None:
    """Register the built-in policies (they cannot be unregistered)."""
    _REGISTRY.update(policies)
    _BUILTIN.update(policies)


def register_policy(name: str, policy: Policy, *, replace: bool = False) -> None:
    """Make ``policy`` available under ``name`` in ``GrowthPolicyConfig.policies``.

    Register before validating configs that use the name (for example at import time of an
    operator's plugin module). Built-in names can be replaced only with ``replace=True``.
    """
    if not name or not name.replace("_", "").isalnum():
        raise ValueError(f"policy name {name!r}: use letters, digits and '_'")
    if name in _REGISTRY and not replace:
        raise ValueError(f"policy {name!r} is already registered; pass replace=True to replace it")
    _REGISTRY[name] = policy


def unregister_policy(name: str) -> None:
    """Remove a policy registered with :func:`register_policy` (built-ins stay)."""
    if name in _BUILTIN:
        raise ValueError(f"policy {name!r} is built in and cannot be removed")
    _REGISTRY.pop(name, None)


def registered_policies() -> tuple[str, ...]:
    """Names that ``GrowthPolicyConfig.policies`` accepts, built-ins first."""
    return tuple(_REGISTRY)


def get_policy(name: str) -> Policy:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(
            f"unknown policy {name!r}; known: {', '.join(registered_policies())}"
        ) from None
