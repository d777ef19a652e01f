"""The one error type of net2net."""

from __future__ import annotations


class GrowthError(ValueError):
    """A growth request that net2net refuses.

    The message names the op (``widen``/``deepen``/``replay``/``transfer_optimizer``), the module and
    the width group concerned, and says what to change. A refused call leaves its input model (and
    optimizer) untouched.
    """
