"""How new units start: the ``init=`` modes of :func:`net2net.widen`, as data."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class InitMode:
    """One way to initialise the new units of a widened group.

    ``incoming``: the new units' incoming weights (rows of the producers) are copies of their
    source unit's (``"copy"``, plus ``noise`` if given) or fresh random draws (``"random"``).
    ``outgoing``: their outgoing weights (columns of the consumers) share the source's weight
    (``"split"``, the paper), start at zero (``"zero"``) or are random (``"random"``).
    ``optimizer``: what :func:`net2net.transfer_optimizer` does by default after this mode for
    optimizers without a rule of their own (Adam, AdamW), chosen by measurement (``"carry"`` the
    state over with the mappings, or ``"reset"`` it); SGD's momentum is reset after every widen.
    """

    name: str
    incoming: Literal["copy", "random"]
    outgoing: Literal["split", "zero", "random"]
    noise: bool  # accepts noise > 0
    exact: str
    symmetry: str
    learns_under_adam: bool
    optimizer: Literal["carry", "reset"]
    scale: Literal["matched", "default"] = "matched"  # spread of random draws (see _mapping)


# widen's default: exact, and its new units differ from the start and learn under Adam/AdamW
# (docs/benchmarks.md: "net2net: init modes under Adam", "net2net: do a GPT's new units learn?
# (init modes)"); the paper's "net2net" copies stay copies there
DEFAULT_INIT = "random_zero"

INIT_MODES: dict[str, InitMode] = {
    m.name: m
    for m in (
        InitMode(
            name="net2net",
            incoming="copy",
            outgoing="split",
            noise=True,
            exact="yes with noise=0 (any split); noise > 0 perturbs the copies, not exact",
            symmetry=(
                "only through noise (or dropout): with split='equal' the copies receive identical "
                "updates under any optimizer and stay copies; split='random' breaks it slowly "
                "under Adam and SGD alike (the copies' outgoing weights receive equal additive "
                "updates and stop being proportional; see docs/net2net.md)"
            ),
            learns_under_adam=False,
            optimizer="carry",
        ),
        InitMode(
            name="copy_zero",
            incoming="copy",
            outgoing="zero",
            noise=True,
            exact=(
                "yes (zero outgoing weights hide the new units); with noise > 0 not exact in "
                "groups that a LayerNorm/RMSNorm normalises"
            ),
            symmetry=(
                "the new units' outgoing weights start at zero and move away from the source's, "
                "so the backpropagated signals differ and the incoming weights diverge"
            ),
            learns_under_adam=True,
            optimizer="carry",
        ),
        InitMode(
            name="random_zero",
            incoming="random",
            outgoing="zero",
            noise=False,
            exact=(
                "yes; in groups that a LayerNorm/RMSNorm normalises the new units are copies "
                "instead (random values would shift the norm's statistics)"
            ),
            symmetry="the new units have random incoming weights: different from the start",
            learns_under_adam=True,
            optimizer="carry",
        ),
        InitMode(
            name="random_pad",
            incoming="random",
            outgoing="random",
            noise=False,
            exact="no: the random outgoing weights change the function",
            symmetry="random incoming and outgoing weights",
            learns_under_adam=True,
            optimizer="carry",
            scale="default",
        ),
    )
}


def init_modes() -> dict[str, dict[str, Any]]:
    """The ``init=`` modes of :func:`net2net.widen` and their properties (JSON-serialisable).
    The default is ``"random_zero"``; ``"net2net"`` is the paper's exact copies."""
    return {name: asdict(mode) for name, mode in INIT_MODES.items()}
