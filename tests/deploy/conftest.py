"""The deploy tests reuse the e2e helpers (digits data)."""

from tests.e2e.conftest import digits

__all__ = ["digits"]
