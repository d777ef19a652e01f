"""The Net2Net paper's comparison, reproduced small: from the same trained
teacher, Net2WiderNet against random padding and a wider model trained from scratch, and
Net2DeeperNet against a deeper model trained from scratch, on MNIST-1D generated offline.

Setup. Teacher: MLP 40 → 32 → 32 → 10, Adam lr 1e-3, batch 128, ``--teacher-steps`` steps on
8,000 training samples; its validation accuracy on a fixed set of 5,000 samples is the target.
Students (each trained ``--steps`` more steps on the same data, same batch size and optimizer):

* wider (32 → 128 in both hidden layers), from the teacher with ``net2net.widen``:
  Net2WiderNet as in the paper (``init="net2net"``: copies, outgoing weights split, exact); the
  paper's variant with noise on the copies (``noise=0.3``, not exact); Lifelong's
  ``random_zero`` (random incoming, zero outgoing, exact); random padding (``random_pad``: new
  units random in and out, not exact). The teacher's Adam state is carried over by
  ``net2net.transfer_optimizer`` (each mode's rule).
* wider model initialised at random (w128 from scratch, fresh Adam).
* deeper (a third hidden layer of 32 after the last activation), from the teacher with
  ``net2net.deepen``: Net2DeeperNet (``style="identity"``) and a zero-initialised residual
  branch (``style="residual"``); optimizer carried over.
* deeper model initialised at random (40 → 32 → 32 → 32 → 10 from scratch).

Reported, mean ± std over seeds (each seed: its own teacher, growth seed and batch order):
accuracy at the start (a function-preserving student starts at the teacher's), the steps until
validation accuracy first reaches the teacher's (evaluated every 50 steps; 0 when it starts
there), the steps until it first beats the teacher by 2 points, accuracy after 500 and 2,000 steps,
and the final accuracy. The teacher's own steps are not counted for the students (the paper's
setting: the teacher already exists).

Run: ``python -m bench.paper`` (3 seeds, 6,000-step teacher, 6,000 student steps), ``--quick``.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn import functional

import net2net
from bench._common import (
    Batches,
    evaluate,
    fmt_duration,
    mlp_model,
    mnist1d,
    pm,
    pyplot,
    save_figure,
    set_threads,
)

TRAIN = 8_000
BATCH = 128
TEACHER = 32
WIDE = 128
EVERY = 50


@dataclass(frozen=True)
class Student:
    name: str
    kind: str  # "wider" or "deeper"
    make: Callable[
        [torch.nn.Module, torch.optim.Optimizer, torch.Tensor, int],
        tuple[torch.nn.Module, torch.optim.Optimizer],
    ]
    exact: bool


def _adam(params: Any) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=1e-3)


def _widen(
    init: str, noise: float = 0.0
) -> Callable[..., tuple[torch.nn.Module, torch.optim.Optimizer]]:
    def make(
        teacher: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, seed: int
    ) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        grown = net2net.widen(
            teacher, x, widths={"fc1": WIDE, "fc2": WIDE}, init=init, noise=noise, seed=seed
        )
        return grown.model, net2net.transfer_optimizer(opt, teacher, grown)

    return make


def _deepen(style: str) -> Callable[..., tuple[torch.nn.Module, torch.optim.Optimizer]]:
    def make(
        teacher: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, seed: int
    ) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        grown = net2net.deepen(teacher, x, after="act2", style=style, seed=seed)
        return grown.model, net2net.transfer_optimizer(opt, teacher, grown)

    return make


def _scratch(widths: list[int]) -> Callable[..., tuple[torch.nn.Module, torch.optim.Optimizer]]:
    def make(
        teacher: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, seed: int
    ) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        model = mlp_model(widths, 1000 + seed)
        return model, _adam(model.parameters())

    return make


STUDENTS = (
    Student("Net2WiderNet (paper: copies, split, exact)", "wider", _widen("net2net"), True),
    Student("Net2WiderNet + noise 0.3 (paper's variant)", "wider", _widen("net2net", 0.3), False),
    Student("Net2WiderNet random_zero (Lifelong default)", "wider", _widen("random_zero"), True),
    Student("random padding", "wider", _widen("random_pad"), False),
    Student(f"wider model (w{WIDE}), random init", "wider", _scratch([WIDE, WIDE]), False),
    Student("Net2DeeperNet (identity layer)", "deeper", _deepen("identity"), True),
    Student("Net2DeeperNet, zero residual branch", "deeper", _deepen("residual"), True),
    Student(
        f"deeper model (3 × w{TEACHER}), random init", "deeper", _scratch([TEACHER] * 3), False
    ),
)


def _train(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    steps: int,
    batches: Batches,
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
) -> list[float]:
    """Train ``steps`` steps; validation accuracy at step 0 and every ``EVERY`` steps."""
    x, y, xv, yv = data
    curve = [evaluate(model, xv, yv)[1]]
    model.train()
    for step in range(1, steps + 1):
        idx = batches.next()
        opt.zero_grad(set_to_none=True)
        functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
        if step % EVERY == 0:
            curve.append(evaluate(model, xv, yv)[1])
    return curve


def run_seed(
    seed: int, teacher_steps: int, steps: int, data: tuple[torch.Tensor, ...]
) -> dict[str, Any]:
    x, y, xv, yv = data
    teacher = mlp_model([TEACHER, TEACHER], seed)
    opt = _adam(teacher.parameters())
    batches = Batches(x.shape[0], BATCH, seed)
    t_curve = _train(teacher, opt, teacher_steps, batches, (x, y, xv, yv))
    state = (
        {k: v.clone() for k, v in teacher.state_dict().items()},
        opt.state_dict(),
        batches.gen.get_state(),
        batches.order.clone(),
        batches.pos,
    )
    out: dict[str, Any] = {"teacher": t_curve[-1], "teacher_curve": t_curve, "students": {}}
    for s in STUDENTS:
        teacher.load_state_dict(state[0])
        opt.load_state_dict(state[1])
        b = Batches(x.shape[0], BATCH, seed)  # the same batches after growth for every student
        b.gen.set_state(state[2])
        b.order, b.pos = state[3].clone(), state[4]
        model, o = s.make(teacher, opt, x[:256], seed + 1)
        out["students"][s.name] = _train(model, o, steps, b, (x, y, xv, yv))
    return out


def _first(curve: Sequence[float], target: float) -> float:
    for i, a in enumerate(curve):
        if a >= target - 1e-12:
            return float(i * EVERY)
    return math.nan


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="1 seed, 1,500-step teacher and students"
    )
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--write", action="store_true", help="write the table even with --quick")
    parser.add_argument("--teacher-steps", type=int, default=None, help="full: 6000")
    parser.add_argument("--steps", type=int, default=None, help="student steps (full: 6000)")
    args = parser.parse_args(argv)
    set_threads(1)
    started = time.perf_counter()
    n_seeds = args.seeds or (1 if args.quick else 3)
    teacher_steps = args.teacher_steps or (1500 if args.quick else 6000)
    steps = args.steps or (1500 if args.quick else 6000)
    xs, ys, xvs, yvs = mnist1d()
    data = (
        torch.from_numpy(xs[:TRAIN]),
        torch.from_numpy(ys[:TRAIN]),
        torch.from_numpy(xvs),
        torch.from_numpy(yvs),
    )
    runs = [run_seed(s, teacher_steps, steps, data) for s in range(n_seeds)]
    teacher = [r["teacher"] for r in runs]

    from bench._report import table, write_section

    rows = []
    for s in STUDENTS:
        curves = [r["students"][s.name] for r in runs]
        reach = [_first(c, t) for c, t in zip(curves, teacher, strict=True)]
        beat = [_first(c, t + 0.02) for c, t in zip(curves, teacher, strict=True)]

        def steps_cell(v: list[float]) -> str:
            ok = [x for x in v if not math.isnan(x)]
            if not ok:
                return "never"
            cell = pm(ok, 0)
            return cell + (f" ({len(ok)}/{len(v)} seeds)" if len(ok) < len(v) else "")

        at = {k: [c[k // EVERY] for c in curves] if k <= steps else [] for k in (500, 2000)}
        rows.append(
            [
                s.name,
                "yes" if s.exact else "no",
                pm([c[0] for c in curves], 1, 100),
                steps_cell(reach),
                steps_cell(beat),
                pm(at[500], 1, 100),
                pm(at[2000], 1, 100),
                pm([c[-1] for c in curves], 1, 100),
                pm([max(c) for c in curves], 1, 100),
            ]
        )
    heads = ["student", "exact", "acc at start", "steps to teacher's acc", "steps to teacher + 2 pts",
             "acc @500", "acc @2000", f"final (@{steps:,})", "best"]  # fmt: skip
    wall = time.perf_counter() - started
    body = "\n".join(
        [
            f"MNIST-1D, {TRAIN:,} training samples, validation on a fixed 5,000; Adam lr 1e-3, "
            f"batch {BATCH}. Teacher: MLP 40 → {TEACHER} → {TEACHER} → 10 trained "
            f"{teacher_steps:,} steps, validation accuracy {pm(teacher, 1, 100)}%. Students train "
            f"{steps:,} more steps on the same data and batches; wider = w{WIDE}, deeper = a third "
            f"hidden layer of {TEACHER}. {n_seeds} seed(s), mean ± std; validation every "
            f"{EVERY} steps. Steps are counted from the growth (from scratch for random init).",
            "",
            table(heads, rows),
            "",
            "![paper](img/paper.png)",
            "",
            f"Wall time: {fmt_duration(wall)}.",
        ]
    )
    if args.quick and not args.write:
        print(body)
        return
    plot(runs, teacher_steps)
    write_section(
        "paper", "Net2Net paper's comparison on MNIST-1D (wider and deeper students)", body
    )


def plot(runs: list[dict[str, Any]], teacher_steps: int) -> None:
    plt: Any = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.6), sharey=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    t_mean = 100 * float(np.mean([r["teacher"] for r in runs]))
    for ax, kind in zip(axes, ("wider", "deeper"), strict=True):
        for i, s in enumerate(x for x in STUDENTS if x.kind == kind):
            c = 100 * np.mean([r["students"][s.name] for r in runs], axis=0)
            ax.plot(np.arange(len(c)) * EVERY, c, color=colours[i], lw=1.2, label=s.name)
        ax.axhline(t_mean, color="k", ls=":", lw=1, label=f"teacher ({t_mean:.1f}%)")
        ax.set_title(f"{kind} students (mean over {len(runs)} seeds)")
        ax.set_xlabel("steps after growth (random init: from scratch)")
        ax.legend(fontsize=7, loc="lower right")
    axes[0].set_ylabel("validation accuracy (%)")
    axes[0].set_ylim(30, None)
    save_figure(fig, "paper")


if __name__ == "__main__":
    main()
