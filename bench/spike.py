"""No loss spike after growth: the loss over the steps after a widen, with the
optimizer state carried over by ``net2net.transfer_optimizer`` against a reset optimizer, for Adam
and SGD with momentum, per init mode.

Setup. A teacher MLP 40 → 32 → 32 → 10 trains on 8,000 MNIST-1D samples (batch 128) for
``--teacher-steps`` steps with the optimizer under test (Adam lr 1e-3; SGD lr 0.02, momentum 0.9).
It is widened ×2 (32 → 64 in both groups) with each ``net2net.init_modes()`` mode and training
goes on for ``--after`` steps on the same batches, with ``transfer_optimizer(state="carry")`` and
with ``state="reset"`` (same class and hyper-parameters, no state). The teacher itself, trained on
without growth over the same batches, is the reference.

Loss = cross-entropy on a fixed probe of 2,048 training samples, measured after every step (eval
mode), so that it is not the noise of a mini-batch. Reported per mode, state and optimizer, mean ±
std over seeds:

* ``peak``: the highest probe loss in the first 50 steps after growth divided by the probe loss
  just before it (1.000 = never above where it stood);
* ``excess``: the mean over those 50 steps of (loss − the teacher's loss at the same step), i.e.
  what growth cost or bought against not growing;
* ``at +200``: the probe loss 200 steps after growth relative to the teacher's at that step.

Run: ``python -m bench.spike`` (3 seeds), ``--quick`` (1 seed, shorter teacher).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.nn import functional

import net2net
from bench._common import (
    Batches,
    fmt_duration,
    mean_std,
    mlp_model,
    mnist1d,
    pm,
    pyplot,
    save_figure,
    set_threads,
)

OPTIMIZERS: dict[str, Callable[[Any], torch.optim.Optimizer]] = {
    "adam": lambda p: torch.optim.Adam(p, lr=1e-3),
    "sgd": lambda p: torch.optim.SGD(p, lr=0.02, momentum=0.9),
}
MODES: tuple[tuple[str, str, float], ...] = (  # (label, init, noise)
    ("net2net", "net2net", 0.0),
    ("net2net + noise 0.3", "net2net", 0.3),
    ("copy_zero", "copy_zero", 0.0),
    ("random_zero", "random_zero", 0.0),
    ("random_pad", "random_pad", 0.0),
)
TRAIN = 8_000
BATCH = 128
WIDTH = 32
PEAK_STEPS = 50


def _step(
    model: torch.nn.Module, opt: torch.optim.Optimizer, xb: torch.Tensor, yb: torch.Tensor
) -> None:
    opt.zero_grad(set_to_none=True)
    functional.cross_entropy(model(xb), yb).backward()
    opt.step()


@torch.no_grad()
def _probe(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    was = model.training
    model.eval()
    loss = float(functional.cross_entropy(model(x), y))
    model.train(was)
    return loss


def run_seed(
    seed: int, opt_name: str, *, teacher_steps: int, after: int, x: torch.Tensor, y: torch.Tensor
) -> dict[str, Any]:
    """One teacher, then every mode × state from the same point; probe losses per step."""
    probe_x, probe_y = x[:2048], y[:2048]
    teacher = mlp_model([WIDTH, WIDTH], seed)
    opt = OPTIMIZERS[opt_name](teacher.parameters())
    batches = Batches(x.shape[0], BATCH, seed)
    for _ in range(teacher_steps):
        idx = batches.next()
        _step(teacher, opt, x[idx], y[idx])
    before = _probe(teacher, probe_x, probe_y)
    # The batches after growth: the same for every variant and for the teacher going on.
    later = [batches.next() for _ in range(after)]
    ref_state = (
        {k: v.clone() for k, v in teacher.state_dict().items()},
        opt.state_dict(),
    )

    def go_on(model: torch.nn.Module, o: torch.optim.Optimizer) -> list[float]:
        out = [_probe(model, probe_x, probe_y)]
        for idx in later:
            _step(model, o, x[idx], y[idx])
            out.append(_probe(model, probe_x, probe_y))
        return out

    curves: dict[str, list[float]] = {}
    exact: dict[str, float] = {}
    rule: dict[str, str] = {}
    for label, init, noise in MODES:
        for state in ("carry", "reset"):
            teacher.load_state_dict(ref_state[0])
            opt.load_state_dict(ref_state[1])
            grown = net2net.widen(
                teacher, probe_x[:256], factor=2.0, init=init, noise=noise, seed=seed + 1
            )
            if state == "carry":  # what the default rule does here: state kept, or none
                auto = net2net.transfer_optimizer(opt, teacher, grown)
                rule[label] = "carry" if auto.state else "reset"
            new_opt = net2net.transfer_optimizer(opt, teacher, grown, state=state)
            curves[f"{label}|{state}"] = go_on(grown.model, new_opt)
            exact[label] = float(grown.max_abs_error)
    teacher.load_state_dict(ref_state[0])
    opt.load_state_dict(ref_state[1])
    curves["teacher (no growth)"] = go_on(teacher, opt)
    return {"before": before, "curves": curves, "max_abs_error": exact, "auto": rule}


def measures(run: dict[str, Any], key: str) -> tuple[float, float, float]:
    before = run["before"]
    c = np.array(run["curves"][key])
    ref = np.array(run["curves"]["teacher (no growth)"])
    peak = float(c[: PEAK_STEPS + 1].max() / before)
    excess = float((c[1 : PEAK_STEPS + 1] - ref[1 : PEAK_STEPS + 1]).mean())
    at = min(200, len(c) - 1)
    return peak, excess, float(c[at] / ref[at])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, shorter teacher")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--write", action="store_true", help="write the table even with --quick")
    parser.add_argument("--teacher-steps", type=int, default=None, help="full: 3000")
    parser.add_argument("--after", type=int, default=300, help="steps after growth")
    args = parser.parse_args(argv)
    set_threads(1)
    started = time.perf_counter()
    n_seeds = args.seeds or (1 if args.quick else 3)
    teacher_steps = args.teacher_steps or (1000 if args.quick else 3000)
    xs, ys, _, _ = mnist1d()
    x, y = torch.from_numpy(xs[:TRAIN]), torch.from_numpy(ys[:TRAIN])
    runs = {
        o: [
            run_seed(s, o, teacher_steps=teacher_steps, after=args.after, x=x, y=y)
            for s in range(n_seeds)
        ]
        for o in OPTIMIZERS
    }
    from bench._report import table, write_section

    rows = []
    for o, rs in runs.items():
        rule = rs[0]["auto"]
        for label, _, _ in MODES:
            cells: list[str] = []
            for state in ("carry", "reset"):
                ms = [measures(r, f"{label}|{state}") for r in rs]
                cells += [pm([m[0] for m in ms], 3), pm([m[1] for m in ms], 3)]
            ms_c = [measures(r, f"{label}|carry") for r in rs]
            ms_r = [measures(r, f"{label}|reset") for r in rs]
            better = (
                "carry"
                if mean_std(m[0] for m in ms_c)[0] <= mean_std(m[0] for m in ms_r)[0]
                else "reset"
            )
            at = [pm([m[2] for m in ms_c], 3), pm([m[2] for m in ms_r], 3)]
            err = max(r["max_abs_error"][label] for r in rs)
            rows.append([o, label, f"{err:.1e}", *cells, *at, better, rule[label]])
        ref = [measures(r, "teacher (no growth)") for r in rs]
        rows.append([o, "teacher, no growth (reference)", "–", pm([m[0] for m in ref], 3),
                     "0", "–", "–", "1", "–", "–", "–"])  # fmt: skip
    heads = ["optimizer", "init", "max abs error at growth", "peak (carry)", "excess (carry)",
             "peak (reset)", "excess (reset)", "at +200 vs teacher (carry)",
             "at +200 vs teacher (reset)", "lower peak", "net2net's rule ('auto')"]  # fmt: skip
    wall = time.perf_counter() - started
    body = "\n".join(
        [
            f"Teacher MLP 40 → {WIDTH} → {WIDTH} → 10 trained {teacher_steps:,} steps on "
            f"{TRAIN:,} MNIST-1D samples (batch {BATCH}); widened ×2 with each init mode; "
            f"{args.after} more steps on the same batches with the optimizer state carried "
            "(`transfer_optimizer(state='carry')`) or reset. Adam lr 1e-3; SGD lr 0.02, "
            f"momentum 0.9. {n_seeds} seed(s), mean ± std. Loss: cross-entropy on a fixed probe of "
            f"2,048 training samples after every step. peak: highest loss in the first "
            f"{PEAK_STEPS} steps after growth ÷ the loss just before (1.000: no spike). excess: "
            f"mean over those steps of (loss − the teacher's loss, trained on without growth on "
            "the same batches); negative = better than not growing. at +200: loss ÷ the teacher's, "
            "200 steps after growth.",
            "",
            table(heads, rows),
            "",
            "![spike](img/spike.png)",
            "",
            f"Wall time: {fmt_duration(wall)}.",
        ]
    )
    if args.quick and not args.write:
        print(body)
        return
    plot(runs)
    write_section("spike", "Loss after growth: carried against reset optimizer state", body)


def plot(runs: dict[str, list[dict[str, Any]]]) -> None:
    plt: Any = pyplot()
    fig, axes = plt.subplots(1, len(runs), figsize=(13, 4.6), sharey=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (o, rs) in zip(np.atleast_1d(axes), runs.items(), strict=True):
        for i, (label, _, _) in enumerate(MODES):
            for state, ls in (("carry", "-"), ("reset", "--")):
                c = np.mean([r["curves"][f"{label}|{state}"] for r in rs], axis=0)
                ax.plot(c / np.mean([r["before"] for r in rs]), ls=ls, color=colours[i], lw=1.1,
                        label=f"{label} ({state})")  # fmt: skip
        ref = np.mean([r["curves"]["teacher (no growth)"] for r in rs], axis=0)
        ax.plot(
            ref / np.mean([r["before"] for r in rs]), color="k", lw=1.5, label="teacher, no growth"
        )
        ax.set_title(f"{o}: probe loss after widening ×2 (÷ loss before)")
        ax.set_xlabel("steps after growth")
        ax.set_xscale("symlog", linthresh=10)
        ax.set_ylim(0.6, 1.6 if o == "adam" else 2.8)
        ax.axhline(1.0, color="0.7", lw=0.8)
    np.atleast_1d(axes)[0].legend(fontsize=6.5, ncol=2)
    save_figure(fig, "spike")


if __name__ == "__main__":
    main()
