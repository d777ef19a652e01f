"""Numbers as people read them in reasons: 1.2M parameters, 3.4%, 2,000 samples."""

from __future__ import annotations

import math


def count(n: float) -> str:
    """1234 → '1.2k', 4_700_000 → '4.7M'; small counts stay exact."""
    if not math.isfinite(n):
        return str(n)
    a = abs(n)
    for limit, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if a >= limit:
            return f"{n / limit:.0f}{suffix}" if a / limit >= 100 else f"{n / limit:.1f}{suffix}"
    return f"{n:.0f}"


def pct(x: float) -> str:
    """0.004 → '0.4%'; two significant digits below 10%."""
    if not math.isfinite(x):
        return "∞%" if x > 0 else str(x)
    v = 100.0 * x
    return f"{v:.2g}%" if abs(v) < 10 else f"{v:.0f}%"


def num(x: float) -> str:
    """A ratio or factor: 1.85, 2, 0.25."""
    return f"{x:.3g}"


def gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.2f} GiB"
