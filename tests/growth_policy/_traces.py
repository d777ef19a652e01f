"""Synthetic summaries and observation traces for the growth-policy tests.

``mlp_summary`` builds the dict that ``net2net.summarize`` returns for an MLP (the format documented in
``growth_policy/shape.py``), so that these tests do not depend on net2net internals. ``simulate`` runs a
controller over a staged stream with a simple loss model and applies its decisions to the widths.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from growth_policy import Controller, Decision, Observation


def mlp_params(in_dim: int, widths: list[int], out_dim: int) -> int:
    dims = [in_dim, *widths, out_dim]
    return sum(a * b + b for a, b in itertools.pairwise(dims))


def _ref(group: str, width: int) -> dict[str, Any]:
    return {"terms": [[group, width, 1]], "div": 1}


def mlp_summary(
    in_dim: int, widths: list[int], out_dim: int, *, exact: bool = True
) -> dict[str, Any]:
    """What ``net2net.summarize`` says of ``fc0 → act0 → … → head`` with these hidden widths:
    groups ``fc0 … fc{n-1}``, every tensor's dims, and the deepen candidates in module order."""
    groups = []
    params: list[dict[str, Any]] = []
    prev: int | dict[str, Any] = in_dim
    for k, w in enumerate(widths):
        g = f"fc{k}"
        nxt = f"fc{k + 1}" if k + 1 < len(widths) else "head"
        groups.append(
            {
                "name": g,
                "width": w,
                "producers": [g],
                "consumers": [nxt],
                "norms": [],
                "multiple_of": 1,
                "integer_factor": False,
            }
        )
        params.append({"name": f"{g}.weight", "dims": [_ref(g, w), prev]})
        params.append({"name": f"{g}.bias", "dims": [_ref(g, w)]})
        prev = _ref(g, w)
    params.append({"name": "head.weight", "dims": [out_dim, prev]})
    params.append({"name": "head.bias", "dims": [out_dim]})

    def candidate(after: str, w: int) -> dict[str, Any]:
        return {
            "after": after,
            "kind": "linear",
            "width": w,
            "identity_exact": exact,
            "residual_exact": True,
            "added_params": {"identity": w * w + w if exact else None, "residual": 2 * (w * w + w)},
        }

    # net2net lists every module after which a layer could go, in module order.
    candidates = [candidate(m, w) for k, w in enumerate(widths) for m in (f"fc{k}", f"act{k}")]
    candidates.append(candidate("head", out_dim))
    return {
        "groups": groups,
        "blocked_groups": [],
        "params": params,
        "deepen_candidates": candidates,
        "param_count": mlp_params(in_dim, widths, out_dim),
    }


def make_obs(**kw: Any) -> Observation:
    """An observation with plain defaults; override what the test is about."""
    base: dict[str, Any] = {
        "step": 1000,
        "generation": 0,
        "generation_step": 1000,
        "samples_seen": 128_000,
        "passes": 10.0,
        "dataset_size": 1000,
        "train_loss": 1.0,
        "val_loss": 1.02,
        "param_count": 1098,
    }
    base.update(kw)
    return Observation(**base)


LossModel = Callable[[int, int, int, int], tuple[float, float]]


def default_loss(step: int, gen_step: int, dataset_size: int, params: int) -> tuple[float, float]:
    """Train loss decays to a floor set by capacity per sample; val sits 5% above it."""
    floor = 0.2 + 0.5 / (1.0 + params / dataset_size)
    train = floor + 1.5 * math.exp(-gen_step / 200.0)
    return train, train * 1.05


@dataclass
class Run:
    decisions: list[tuple[Observation, Decision]] = field(default_factory=list)
    widths: list[int] = field(default_factory=list)

    @property
    def growths(self) -> list[tuple[Observation, Decision]]:
        return [(o, d) for o, d in self.decisions if d.op is not None]


def simulate(
    controller: Controller,
    *,
    stages: list[int],
    steps_per_stage: int,
    every: int = 50,
    batch: int = 128,
    widths: list[int] | None = None,
    in_dim: int = 40,
    out_dim: int = 10,
    loss: LossModel = default_loss,
    start_step: int = 0,
    run: Run | None = None,
) -> Run:
    """Feed a staged stream to ``controller`` and apply each growth to the MLP widths."""
    run = run if run is not None else Run(widths=list(widths or [16, 16]))
    ws = run.widths
    gen = run.decisions[-1][0].generation if run.decisions else 0
    gen_step = run.decisions[-1][0].generation_step if run.decisions else 0
    seen = run.decisions[-1][0].samples_seen if run.decisions else 0
    step = start_step
    for size in stages:
        for _ in range(steps_per_stage // every):
            step += every
            gen_step += every
            seen += every * batch
            params = mlp_params(in_dim, ws, out_dim)
            train, val = loss(step, gen_step, size, params)
            obs = Observation(
                step=step,
                generation=gen,
                generation_step=gen_step,
                samples_seen=seen,
                passes=seen / size,
                dataset_size=size,
                train_loss=train,
                val_loss=val,
                param_count=params,
                summary=mlp_summary(in_dim, ws, out_dim),
            )
            d = controller.observe(obs)
            run.decisions.append((obs, d))
            if d.op is not None and d.op.op == "widen":
                if d.op.factor is not None:
                    ws[:] = [math.ceil(w * d.op.factor - 1e-9) for w in ws]
                else:
                    assert d.op.widths is not None
                    ws[:] = [d.op.widths.get(f"fc{k}", w) for k, w in enumerate(ws)]
                gen, gen_step = gen + 1, 0
            elif d.op is not None and d.op.op == "deepen":
                k = int(str(d.op.after).removeprefix("act"))
                ws.insert(k + 1, ws[k])
                gen, gen_step = gen + 1, 0
            elif d.op is not None and d.op.op == "shrink_perturb":
                gen, gen_step = gen + 1, 0
    return run
