"""Rebuild a grown architecture from a base model and growth records."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ._deepen import deepen_impl
from ._errors import GrowthError
from ._outputs import add_classes_impl
from ._types import Grown
from ._widen import RECORD_FORMAT, widen_head_size_impl, widen_impl


def _dummy_inputs(spec: Any, model: nn.Module) -> tuple[torch.Tensor, ...]:
    device = next((t.device for t in list(model.parameters()) + list(model.buffers())), None)
    out = []
    for item in spec:
        dtype = getattr(torch, str(item["dtype"]), None)
        if not isinstance(dtype, torch.dtype):
            raise GrowthError(f"replay: unknown input dtype {item['dtype']!r} in a record")
        out.append(torch.zeros([int(n) for n in item["shape"]], dtype=dtype, device=device))
    return tuple(out)


def replay(model: nn.Module, records: Sequence[Mapping[str, Any]]) -> nn.Module:
    """Apply growth ``records`` (each a ``Grown.record``) to ``model`` in order and return the
    rebuilt module: same architecture, same module and parameter names and shapes as the model
    the records came from. Deterministic, and it needs no training data (each record carries its
    seed and the input shapes). Load the weights afterwards (``load_state_dict``); applied to the
    same base weights, replay also reproduces the grown weights. ``model`` is left untouched."""
    current = model
    for i, rec in enumerate(records):
        if not isinstance(rec, Mapping) or "op" not in rec:
            raise GrowthError(f"replay: record {i} is not a growth record (a dict with 'op')")
        if int(rec.get("format", 0)) > RECORD_FORMAT:
            raise GrowthError(
                f"replay: record {i} has format {rec.get('format')}, newer than this net2net "
                f"({RECORD_FORMAT}); upgrade net2net"
            )
        op = rec["op"]
        try:
            grown = _replay_one(current, rec, _dummy_inputs(rec["input"], current))
        except GrowthError as err:
            raise GrowthError(f"replay: record {i} ({op}): {err}") from err
        except KeyError as err:
            raise GrowthError(f"replay: record {i} ({op}) lacks the field {err}") from err
        current = grown.model
    if current is model:
        from ._widen import copy_model

        current = copy_model(model, "replay")
    return current


def _replay_one(
    current: nn.Module, rec: Mapping[str, Any], inputs: tuple[torch.Tensor, ...]
) -> Grown:
    """One record applied to ``current`` (a new module; the weights are loaded afterwards)."""
    op = rec["op"]
    if op == "widen" and rec.get("head_size"):
        sizes = {str(k): int(v[1]) for k, v in dict(rec["head_size"]).items()}
        return widen_head_size_impl(current, inputs, sizes, seed=int(rec["seed"]), check=False)
    elif op == "widen":
        return widen_impl(
            current,
            inputs,
            factor=None,
            widths={str(k): int(v[1]) for k, v in dict(rec["widths"]).items()},
            init=str(rec["init"]),
            noise=float(rec["noise"]),
            split=str(rec["split"]),
            seed=int(rec["seed"]),
            check=False,
            expect={str(k): int(v[0]) for k, v in dict(rec["widths"]).items()},
        )
    elif op == "deepen":
        return deepen_impl(
            current,
            inputs,
            after=str(rec["after"]),
            style=str(rec["style"]),
            calibration=None,
            seed=int(rec["seed"]),
            check=False,
            expect_width=int(rec["width"]),
        )
    elif op == "add_classes":
        return add_classes_impl(
            current,
            inputs,
            classes=int(rec["classes"][1]),
            head=str(rec["head"]),
            init=str(rec["init"]),
            prior=float(rec["prior"]),
            seed=int(rec["seed"]),
            check=False,
        )
    else:
        raise GrowthError(f"unknown op {op!r}")
