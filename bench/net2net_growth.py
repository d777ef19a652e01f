"""Net2Net growth benchmarks: how long growth takes, and what each init mode and depth style learns.

``python -m bench.net2net_growth`` runs three parts and writes each to its own section of
``docs/benchmarks.md``:

* ``speed``: widening every width group of a ~10M-parameter CNN (ResNet-18 layout, 32×32 inputs)
  and a ~10M-parameter MLP (BatchNorm) by 2×, including tracing and verification, against one
  forward+backward pass of the grown model on a batch of 128; plus ``transfer_optimizer`` (Adam).
* ``modes``: every ``init=`` mode of ``net2net.widen`` on MNIST-1D (generated offline): the loss
  spike after growth with the optimizer state carried or reset, validation accuracy after further
  training, and whether the new units diverge from their sources (cosine similarity of incoming
  weights), under Adam and under SGD.
* ``depth``: ``deepen(style="identity")`` against ``style="residual"`` on the same problem.
* ``units``: a tiny GPT widened ×2 by every ``init`` mode (the default, ``random_zero``, first) and trained on with
  AdamW on a seeded token stream: exact at growth, the loss spike, and whether the new stream
  channels, heads and MLP units stay copies of their sources.
* ``gpt``: widening ×2 and deepening by one identity block (``style="block"``) of ~10M and ~100M
  GPTs: the transform's time against one training step of the grown model, and its peak memory.
* ``zoo``: every transformer of the test zoo widened ×2 and ×1.5 and deepened by a block: the
  error relative to the output scale, or the refusal, and whether the heads grew.

``--only speed`` (or modes, depth, units, gpt, zoo) runs one part; ``--quick`` shrinks everything for a smoke run
(and writes nothing unless ``--write`` is given).
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

import net2net
from bench._report import table, write_section
from tests.net2net import gpt_units
from tests.net2net.gpt_units import LMTask
from tests.net2net.transformer_zoo import GPT, GPTConfig
from tests.net2net.zoo import ZOO, Case, max_err
from tests.net2net.zoo import build as build_case

# -- models ------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for 32×32 inputs (11.2M parameters at width 64)."""

    def __init__(self, width: int = 64, classes: int = 10) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU()
        )
        chans = [(w, w, 1), (w, w, 1), (w, 2 * w, 2), (2 * w, 2 * w, 1)]
        chans += [(2 * w, 4 * w, 2), (4 * w, 4 * w, 1), (4 * w, 8 * w, 2), (8 * w, 8 * w, 1)]
        self.layers = nn.Sequential(*(BasicBlock(a, b, s) for a, b, s in chans))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8 * w, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


def big_mlp(hidden: int = 2048) -> nn.Module:
    """784 → 3 × (Linear, BatchNorm, ReLU) → 10: 10.0M parameters at hidden 2048."""
    layers: list[nn.Module] = []
    width = 784
    for _ in range(3):
        layers += [nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, 10))
    return nn.Sequential(*layers)


def small_mlp(width: int, act: type[nn.Module] = nn.ReLU, bn: bool = False) -> nn.Module:
    """MNIST-1D classifier: 40 → width → width → 10."""
    layers: list[nn.Module] = [nn.Linear(40, width)]
    layers += [nn.BatchNorm1d(width)] if bn else []
    layers += [act(), nn.Linear(width, width)]
    layers += [nn.BatchNorm1d(width)] if bn else []
    layers += [act(), nn.Linear(width, 10)]
    return nn.Sequential(*layers)


# -- speed -------------------------------------------------------------------------------------------


def _timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def _fwd_bwd(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()


def _speed_row(
    name: str,
    model: nn.Module,
    make: Callable[[int], torch.Tensor],
    batch_size: int,
    repeats: int,
) -> list[str]:
    """Time tracing, widening ×2 and the optimizer transfer of one model, and a step of the
    grown one."""
    model.train()
    example = make(8)  # the batch growth traces and verifies on
    batch = make(batch_size)
    labels = torch.randint(0, 10, (batch.shape[0],))
    groups_s, groups = _timed(lambda m=model, e=example: net2net.width_groups(m, e), repeats)
    widen_s, grown = _timed(
        lambda m=model, e=example: net2net.widen(m, e, factor=2.0, init="net2net"), repeats
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    _fwd_bwd(model, batch[:8], labels[:8])
    opt.step()
    transfer_s, _ = _timed(
        lambda o=opt, m=model, g=grown: net2net.transfer_optimizer(o, m, g), repeats
    )
    student = grown.model.train()
    _fwd_bwd(student, batch, labels)  # warm-up
    step_s, _ = _timed(lambda s=student, b=batch, y=labels: _fwd_bwd(s, b, y), repeats)
    row = [
        name,
        f"{net2net.count_params(model) / 1e6:.1f}M → {net2net.count_params(student) / 1e6:.1f}M",
        str(len(groups)),
        f"{groups_s:.2f}",
        f"{widen_s:.2f}",
        f"{transfer_s:.2f}",
        f"{step_s:.2f}",
        f"{widen_s / step_s:.2f}",
        f"{grown.max_abs_error:.1e}",
    ]
    print(row, flush=True)
    return row


def speed(quick: bool) -> str:
    torch.manual_seed(0)
    cases: list[tuple[str, nn.Module, Callable[[int], torch.Tensor]]] = [
        (
            "MLP 784-2048×3-10, BatchNorm",
            big_mlp(512 if quick else 2048),
            lambda b: torch.randn(b, 784),
        ),
        (
            "ResNet-18, 32×32 inputs",
            ResNet18(16 if quick else 64),
            lambda b: torch.randn(b, 3, 32, 32),
        ),
    ]
    repeats = 1 if quick else 3
    batch_size = 32 if quick else 128
    rows = [_speed_row(name, model, make, batch_size, repeats) for name, model, make in cases]
    headers = [
        "model",
        "parameters",
        "groups",
        "width_groups s",
        "widen ×2 s",
        "transfer_optimizer s",
        f"fwd+bwd grown, batch {batch_size} s",
        "widen / step",
        "max abs error",
    ]
    return (
        'Every width group widened by 2× (`init="net2net"`), timed end to end: tracing with '
        "torch.fx, the shape pass, the weight surgery and the verification forward, on an "
        "example batch of 8. `width_groups` is the tracing and group inference alone. The step is "
        "one forward+backward pass of the *grown* model in train mode. Medians of "
        f"{repeats} runs.\n\n" + table(headers, rows)
    )


# -- MNIST-1D training helpers --------------------------------------------------------------------


@dataclass
class Data:
    x: torch.Tensor
    y: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor


def mnist1d(samples: int) -> Data:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = samples
    d = make_dataset(args)  # offline, deterministic
    x = torch.tensor(np.asarray(d["x"]), dtype=torch.float32)
    xv = torch.tensor(np.asarray(d["x_test"]), dtype=torch.float32)
    mu, sd = x.mean(0), x.std(0)
    return Data(
        (x - mu) / sd,
        torch.tensor(np.asarray(d["y"])).long(),
        (xv - mu) / sd,
        torch.tensor(np.asarray(d["y_test"])).long(),
    )


def train_loss(model: nn.Module, data: Data) -> float:
    with torch.no_grad():
        return F.cross_entropy(model(data.x), data.y).item()


def accuracy(model: nn.Module, data: Data) -> float:
    flag = model.training
    model.eval()
    with torch.no_grad():
        acc = (model(data.x_val).argmax(1) == data.y_val).float().mean().item()
    model.train(flag)
    return 100.0 * acc


def train(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    data: Data,
    steps: int,
    gen: torch.Generator,
    *,
    track: int = 0,
) -> list[float]:
    """``steps`` minibatch steps (batch 128); the full training loss after each of the first
    ``track`` steps (eval mode: no dropout noise, running statistics)."""
    losses = []
    model.train()
    for s in range(steps):
        idx = torch.randint(0, len(data.x), (128,), generator=gen)
        opt.zero_grad()
        F.cross_entropy(model(data.x[idx]), data.y[idx]).backward()
        opt.step()
        if s < track:
            model.eval()
            losses.append(train_loss(model, data))
            model.train()
    return losses


def new_unit_cosines(grown: net2net.Grown, before: nn.Module) -> torch.Tensor:
    """Cosine similarity between each new unit's incoming weights and its source unit's."""
    out = []
    for name, src in grown.mappings.items():
        w = grown.model.get_submodule(name).weight.detach().flatten(1)
        n_old = before.get_submodule(name).weight.shape[0]
        new = torch.arange(n_old, len(src))
        out.append(F.cosine_similarity(w[new], w[src[new]], dim=1))
    return torch.cat(out)


def _ms(values: Sequence[float], fmt: str = "{:.1f}") -> str:
    mean = statistics.mean(values)
    sd = statistics.pstdev(values) if len(values) > 1 else 0.0
    return f"{fmt.format(mean)} ± {fmt.format(sd)}"


# -- init modes ------------------------------------------------------------------------------------

MODES: list[tuple[str, dict[str, Any]]] = [
    ("net2net (exact)", {"init": "net2net"}),
    ("net2net, split=random", {"init": "net2net", "split": "random"}),
    ("net2net, noise 0.1", {"init": "net2net", "noise": 0.1}),
    ("copy_zero", {"init": "copy_zero"}),
    ("copy_zero, noise 0.1", {"init": "copy_zero", "noise": 0.1}),
    ("random_zero", {"init": "random_zero"}),
    ("random_pad", {"init": "random_pad"}),
]


def _modes_seed(
    data: Data,
    seed: int,
    teacher_w: int,
    factor: float,
    steps: tuple[int, int, int],
    *,
    results: dict[tuple[str, str], list[tuple[float, float, float, float, float]]],
) -> tuple[float, float]:
    """One seed: train the teacher, grow it with every mode and optimizer state, train on; the
    teacher trained on for the same steps is the baseline. Returns both teachers' accuracies."""
    pre, post, track = steps
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = small_mlp(teacher_w)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    train(model, opt, data, pre, gen)
    before = train_loss(model, data)
    before_acc = accuracy(model, data)
    for label, kwargs in MODES:
        for state in ("carry", "reset"):
            grown = net2net.widen(model, data.x[:256], factor=factor, seed=seed, **kwargs)
            opt2 = net2net.transfer_optimizer(opt, model, grown, state=state)
            g2 = torch.Generator().manual_seed(1000 + seed)
            losses = train(grown.model, opt2, data, post, g2, track=track)
            cos = new_unit_cosines(grown, model)
            results.setdefault((label, state), []).append(
                (
                    max(losses) / before,
                    accuracy(grown.model, data),
                    float(cos.max()),
                    float(cos.min()),
                    grown.max_abs_error,
                )
            )
    cont = small_mlp(teacher_w)
    cont.load_state_dict(model.state_dict())
    opt_c = torch.optim.Adam(cont.parameters(), lr=1e-3)
    opt_c.load_state_dict(opt.state_dict())
    train(cont, opt_c, data, post, torch.Generator().manual_seed(1000 + seed))
    return before_acc, accuracy(cont, data)


def modes(quick: bool) -> str:
    torch.set_num_threads(1)
    data = mnist1d(2000 if quick else 6000)
    seeds = [0] if quick else [0, 1, 2]
    pre, post, track = (200, 200, 20) if quick else (1500, 1500, 50)
    teacher_w, factor = 32, 4.0
    results: dict[tuple[str, str], list[tuple[float, float, float, float, float]]] = {}
    baseline: list[float] = []
    before_acc: list[float] = []
    for seed in seeds:
        acc_before, acc_baseline = _modes_seed(
            data, seed, teacher_w, factor, (pre, post, track), results=results
        )
        before_acc.append(acc_before)
        baseline.append(acc_baseline)
        print(f"seed {seed} done", flush=True)
    rows = []
    for label, _ in MODES:
        for state in ("carry", "reset"):
            r = results[(label, state)]
            rows.append(
                [
                    label,
                    state,
                    f"{max(x[4] for x in r):.1e}",
                    _ms([x[0] for x in r], "{:.3f}"),
                    _ms([x[1] for x in r]),
                    f"{max(x[2] for x in r):.4f}",
                    f"{min(x[3] for x in r):.4f}",
                ]
            )
    head = [
        "init",
        "optimizer state",
        "max abs error at growth",
        f"spike: max loss in {track} steps / loss before",
        f"val. acc. after {post} steps",
        "max cos(new, source)",
        "min cos(new, source)",
    ]
    sym = symmetry(data, quick)
    return (
        f"MNIST-1D ({len(data.x)} training samples, validation {len(data.x_val)}), MLP 40-"
        f"{teacher_w}-{teacher_w}-10 (ReLU) trained {pre} Adam steps (lr 1e-3, batch 128), then "
        f"every hidden group widened ×{factor:g} ({teacher_w}→{int(teacher_w * factor)}) and "
        f"trained {post} more steps; {len(seeds)} seed(s), mean ± std. The spike is the highest "
        f"full training loss over the first {track} steps after growth relative to the loss just "
        "before. 'carry' is `transfer_optimizer`'s rule; 'reset' a fresh Adam with the same "
        "hyper-parameters. Cosines compare each new unit's incoming weights with its source "
        f"unit's after the {post} steps (1.0: still a copy). Teacher accuracy at growth: "
        f"{_ms(before_acc)}; teacher trained on for the same steps: {_ms(baseline)}.\n\n"
        + table(head, rows)
        + "\n\n"
        + sym
    )


def symmetry(data: Data, quick: bool) -> str:
    """Do copies diverge? Min/max cosine of new units after training, Adam against SGD."""
    steps = 200 if quick else 1500
    rows = []
    optimizers: dict[str, Callable[[Any], torch.optim.Optimizer]] = {
        "Adam lr 1e-3": lambda p: torch.optim.Adam(p, lr=1e-3),
        "SGD lr 0.05, momentum 0.9": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    }
    for opt_name, make in optimizers.items():
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(0)
        model = small_mlp(32)
        opt = make(model.parameters())
        train(model, opt, data, steps, gen)
        for label, kwargs in MODES[:2] + MODES[3:4]:
            grown = net2net.widen(model, data.x[:256], factor=2.0, seed=0, **kwargs)
            opt2 = net2net.transfer_optimizer(opt, model, grown)
            train(grown.model, opt2, data, steps, torch.Generator().manual_seed(7))
            cos = new_unit_cosines(grown, model)
            rows.append([opt_name, label, f"{float(cos.min()):.4f}", f"{float(cos.max()):.4f}"])
    return (
        f"Symmetry of copies (×2, {steps} steps before and after growth, seed 0): cosine of each "
        "new unit's incoming weights with its source's.\n\n"
        + table(["optimizer", "init", "min cos", "max cos"], rows)
    )


# -- depth -------------------------------------------------------------------------------------------


def depth(quick: bool) -> str:
    torch.set_num_threads(1)
    data = mnist1d(2000 if quick else 6000)
    seeds = [0] if quick else [0, 1, 2]
    pre, post, track = (200, 200, 20) if quick else (1500, 1500, 50)
    variants: list[tuple[str, type[nn.Module], bool, str | None]] = [
        ("ReLU MLP: keep training", nn.ReLU, False, None),
        ("ReLU MLP: deepen identity after act 1", nn.ReLU, False, "identity"),
        ("ReLU MLP: deepen residual after act 1", nn.ReLU, False, "residual"),
        ("BN-ReLU MLP: keep training", nn.ReLU, True, None),
        ("BN-ReLU MLP: deepen identity (+calibrated BN)", nn.ReLU, True, "identity"),
        ("BN-ReLU MLP: deepen residual", nn.ReLU, True, "residual"),
        ("GELU MLP: keep training", nn.GELU, False, None),
        ("GELU MLP: deepen residual after act 1", nn.GELU, False, "residual"),
    ]
    rows = []
    for label, act, bn, style in variants:
        res = []
        for seed in seeds:
            torch.manual_seed(seed)
            gen = torch.Generator().manual_seed(seed)
            model = small_mlp(32, act, bn)
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            train(model, opt, data, pre, gen)
            before, acc0 = train_loss(model, data), accuracy(model, data)
            student, opt2, err = model, opt, 0.0
            if style is not None:
                after = "2"  # the first hidden activation (Linear, [BN,] act)
                grown = net2net.deepen(
                    model, data.x[:256], after=after, style=style, calibration=data.x[:512]
                )
                student, err = grown.model, grown.max_abs_error
                opt2 = net2net.transfer_optimizer(opt, model, grown)
            g2 = torch.Generator().manual_seed(1000 + seed)
            losses = train(student, opt2, data, post, g2, track=track)
            res.append((acc0, max(losses) / before, accuracy(student, data), err))
        rows.append(
            [
                label,
                f"{max(r[3] for r in res):.1e}",
                _ms([r[0] for r in res]),
                _ms([r[1] for r in res], "{:.3f}"),
                _ms([r[2] for r in res]),
            ]
        )
        print(rows[-1], flush=True)
    head = [
        "variant",
        "max abs error at growth",
        "val. acc. at growth",
        f"spike (max loss in {track} steps / before)",
        f"val. acc. after {post} steps",
    ]
    return (
        f"MNIST-1D, MLP 40-32-32-10 trained {pre} Adam steps (lr 1e-3), then one layer inserted "
        f"after the first hidden activation and {post} more steps with the optimizer state "
        f"carried (new layers start without state); {len(seeds)} seed(s), mean ± std.\n\n"
        + table(head, rows)
    )


# -- new units of a GPT ---------------------------------------------------------------------------

GPT_MODES: list[tuple[str, dict[str, Any]]] = [
    ("random_zero (default)", {}),
    *MODES[:5],
    MODES[6],
]  # the default first, then the others; MODES[5] is random_zero


def _units_seed(seed: int, pre: int, post: int, track: int) -> list[tuple[float, ...]]:
    """One seed: a tiny GPT trained ``pre`` AdamW steps, widened ×2 by every mode, trained
    ``post`` more steps with the state carried. Per mode: error at growth, exact, spike, final
    loss, and the max cosine of new units to their sources for the stream, the heads, the MLPs."""
    torch.manual_seed(seed)
    task = LMTask.make(vocab=65, context=16, batch=16, seed=seed)
    teacher = GPT(GPTConfig())
    opt = gpt_units.adamw(teacher)
    gpt_units.train(teacher, opt, task, pre)
    before = gpt_units.eval_loss(teacher, task)
    out = []
    for _, kwargs in GPT_MODES:
        grown = net2net.widen(teacher, task.eval_x[:4], factor=2, seed=seed, **kwargs)
        old = {name: o for name, (o, _) in grown.widths.items()}
        run = copy.deepcopy(task)  # every mode sees the same batches
        opt2 = net2net.transfer_optimizer(opt, teacher, grown)
        losses = gpt_units.train(grown.model, opt2, run, post, track=track)
        cos = gpt_units.copy_cosines(grown, old)
        final = gpt_units.eval_loss(grown.model, run)
        exact = float(grown.exact)
        out.append(
            (
                grown.max_abs_error,
                exact,
                max(losses) / before,
                before,
                final,
                *(cos[k] for k in ("stream", "heads", "mlp")),
            )
        )
    return out


def units(quick: bool) -> str:
    torch.set_num_threads(1)
    seeds = [0] if quick else [0, 1, 2]
    pre, post, track = (100, 100, 20) if quick else (300, 200, 50)
    per_seed = [_units_seed(seed, pre, post, track) for seed in seeds]
    rows = []
    for i, (label, _) in enumerate(GPT_MODES):
        r = [s[i] for s in per_seed]
        worst = [max(x[k] for x in r) for k in (5, 6, 7)]
        rows.append(
            [
                label,
                "yes" if all(x[1] for x in r) else "no",
                f"{max(x[0] for x in r):.1e}",
                _ms([x[2] for x in r], "{:.3f}"),
                _ms([x[4] for x in r], "{:.3f}"),
                *(f"{w:.4f}" for w in worst),
                "yes" if max(worst) < 0.99 else "no",
            ]
        )
        print(rows[-1], flush=True)
    head = [
        "init",
        "exact at growth",
        "max abs error of the logits at growth",
        f"spike: max loss in {track} steps / loss before",
        f"loss after {post} steps",
        "max cos, stream channels",
        "max cos, heads",
        "max cos, MLP units",
        "copies diverge (all < 0.99)",
    ]
    before = _ms([s[0][3] for s in per_seed], "{:.3f}")
    return (
        "A nanoGPT-style GPT (vocab 65, context 16, 2 blocks, 2 heads, d = 32, tied LM head, "
        f"the test zoo's) trained {pre} AdamW steps (lr 3e-3, weight decay 0.1 on matrices, "
        "batch 16) on a seeded Markov-chain token stream (3 successors per token), then every "
        f"group widened ×2 with each `init` (`factor=2`) and trained {post} more steps with the "
        f"optimizer state carried; {len(seeds)} seed(s), mean ± std. Losses are on a fixed batch "
        f"of 64 windows; the loss before growth is {before}. The spike is the highest loss over "
        f"the first {track} steps after growth over the loss just before. A cosine compares a new "
        "unit's incoming weights with its source's after training (the largest over new units "
        "and seeds; 1.0: still a copy): stream channels (embedding columns and output-projection "
        "rows), heads (the head's q, k and v rows), MLP units (rows of `c_fc`).\n\n"
        + table(head, rows)
    )


# -- GPT growth cost ---------------------------------------------------------------------------------

GPT_SIZES: list[tuple[str, GPTConfig]] = [
    (
        "GPT ~10M (6 × 384, 6 heads)",
        GPTConfig(
            vocab_size=65, block_size=256, n_layer=6, n_head=6, n_embd=384, attention="nanogpt"
        ),
    ),
    (
        "GPT ~100M (12 × 768, 12 heads)",
        GPTConfig(
            vocab_size=16384, block_size=256, n_layer=12, n_head=12, n_embd=768, attention="nanogpt"
        ),
    ),
]


class PeakRSS:
    """The peak resident set size while the block runs, above the RSS at its start (Linux:
    ``clear_refs`` resets the high-water mark VmHWM, which the kernel then tracks exactly). Freed
    memory is first handed back to the system (``malloc_trim``), so that the start is what is
    live and the block's allocations show up in the RSS instead of reusing freed pages."""

    def __enter__(self) -> PeakRSS:
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")
        self.start = _status_kb("VmRSS")
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak = _status_kb("VmHWM") - self.start

    @property
    def gib(self) -> float:
        return self.peak / 2**20


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {key}")


def _gpt_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    gpt_units.lm_loss(model, x, y).backward()


def _gpt_row(name: str, cfg: GPTConfig, op: str, batch: int, example: int) -> list[str]:
    """Grow one GPT (``op``: widen ×2 or deepen by one block), time it and its AdamW transfer,
    its peak memory, and one training step of the grown model."""
    torch.manual_seed(0)
    teacher = GPT(cfg)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, cfg.vocab_size, (batch, cfg.block_size), generator=gen)
    opt = torch.optim.AdamW(teacher.parameters(), lr=1e-4)
    _gpt_step(teacher, x[:1, :16], x[:1, 1:17])  # a small step gives the optimizer its state
    opt.step()
    ex = x[:example]
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        if op == "widen":
            grown = net2net.widen(teacher, ex, factor=2, init="net2net")
        else:
            last = f"transformer.h.{cfg.n_layer - 1}"
            grown = net2net.deepen(teacher, ex, after=last, style="block")
        grow_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        new_opt = net2net.transfer_optimizer(opt, teacher, grown)
        transfer_s = time.perf_counter() - t0
    student = grown.model.train()
    weights = sum(p.numel() * p.element_size() for p in student.parameters())
    del new_opt
    t0 = time.perf_counter()
    _gpt_step(student, x, torch.roll(x, -1, 1))
    step_s = time.perf_counter() - t0
    ratio, mem_ratio = grow_s / step_s, mem.peak * 1024 / (3 * weights)
    row = [
        name,
        "widen ×2" if op == "widen" else "deepen: one identity block",
        f"{net2net.count_params(teacher) / 1e6:.1f}M → {net2net.count_params(student) / 1e6:.1f}M",
        f"{grow_s:.2f}",
        f"{transfer_s:.2f}",
        f"{step_s:.2f}",
        f"{ratio:.2f}" + ("" if ratio <= 1 else " (missed)"),
        f"{mem.gib:.2f}",
        f"{3 * weights / 2**30:.2f}",
        f"{mem_ratio:.2f}" + ("" if mem_ratio <= 1.5 else " (missed)"),
        f"{grown.max_abs_error:.1e}",
    ]
    print(row, flush=True)
    return row


def gpt(quick: bool) -> str:
    torch.set_num_threads(2)
    sizes = GPT_SIZES[:1] if quick else GPT_SIZES
    batch, example = (2, 1) if quick else (8, 2)
    tiny, idx = GPT(GPTConfig()), torch.zeros(1, 16, dtype=torch.long)
    net2net.deepen(
        net2net.widen(tiny, idx, factor=2, init="net2net").model,
        idx,
        after="transformer.h.1",
        style="block",
    )  # warm-up
    rows = [_gpt_row(n, c, op, batch, example) for n, c in sizes for op in ("widen", "deepen")]
    head = [
        "model",
        "growth",
        "parameters",
        "transform s",
        "transfer_optimizer (AdamW) s",
        f"fwd+bwd grown, batch {batch} × {sizes[0][1].block_size} s",
        "transform / step (target ≤ 1)",
        "peak extra RSS GiB",
        "3 × grown weights GiB",
        "peak / (3 × grown weights) (target ≤ 1.5)",
        "max abs error",
    ]
    return (
        "nanoGPT-style GPTs (nanoGPT's own attention code, float32, tied LM head) on the CPU, one "
        'run each. *Transform* is `net2net.widen(model, x, factor=2, init="net2net")` (every '
        'group ×2, the paper\'s copies) or `net2net.deepen(model, x, after=<last block>, style="block")`, end to end: '
        "tracing, the shape pass that gives the teacher's output, the copy and weight surgery and "
        f"the verification forward of the grown model, on an example batch of {example} × "
        f"{sizes[0][1].block_size} tokens. The step is one forward+backward pass of the *grown* "
        "model in train mode on the batch in the header (target: the transform costs at most one "
        "step). *Peak extra RSS* is the process's peak resident memory during the transform and "
        "`transfer_optimizer` (AdamW, from a teacher optimizer with state) above the resident "
        "memory just before (teacher and its AdamW state): it includes the grown model and its "
        "AdamW state, which stay. The target is at most 1.5 × the bytes of the grown model's "
        "weights plus its AdamW state (exp_avg, exp_avg_sq), that is 1.5 × 3 × the grown weights' "
        "bytes. '(missed)' marks a target that is missed.\n\n" + table(head, rows)
    )


# -- the transformer zoo --------------------------------------------------------------------------

TRANSFORMER_ZOO = ZOO[[c.name for c in ZOO].index("gpt") :]  # the zoo's transformers, in order
# the start of a refusal's message → a short reason for the table
_REASONS = (
    ("use an integer factor", "a norm over the stream needs an integer factor"),
    ("post-norm", "post-norm block, norm(x + f(x))"),
    ("no block list", "no block list (nn.ModuleList/nn.Sequential)"),
    ("must grow by the same factor", "linked groups grow by one factor"),
)


def _refused(err: net2net.GrowthError) -> str:
    msg = str(err)
    short = next((r for key, r in _REASONS if key in msg), msg.split(";", maxsplit=1)[0][:80])
    return f"refused: {short}"


def _heads(model: nn.Module) -> int:
    """Query heads over the model: the ``n_head``/``num_heads`` attributes of its modules."""
    return sum(
        int(getattr(m, a))
        for m in model.modules()
        for a in ("n_head", "num_heads")
        if type(getattr(m, a, None)) is int
    )


def _relative(model: nn.Module, x: torch.Tensor, op: Callable[[], net2net.Grown]) -> str:
    """The grown model's max abs error over the teacher's max |output|, or the refusal."""
    try:
        grown = op()
    except net2net.GrowthError as refusal:
        return _refused(refusal)
    err, scale = max_err(model, grown.model, x)
    return f"{err / scale:.1e}"


def _free_widths(model: nn.Module, x: torch.Tensor, factor: float) -> dict[str, int]:
    """×factor (rounded up to ``multiple_of``) for the groups that take any factor: no norm over
    them and no link to another group's width (heads and FFNs, not the stream)."""
    return {
        g.name: -(-math.ceil(g.width * factor) // g.multiple_of) * g.multiple_of
        for g in net2net.width_groups(model, x)
        if not g.integer_factor and not g.grows_with
    }


def _block(summary: dict[str, Any]) -> str | None:
    """The first block of a block list (where style="block" applies, exact or not)."""
    return next(
        (c["after"] for c in summary["deepen_candidates"] if "block" in c["added_params"]), None
    )


def _zoo_row(case: Case) -> list[str]:
    model, x = build_case(case)
    summary = net2net.summarize(model, x)
    wide = net2net.widen(model, x, factor=2)
    block = _block(summary)
    deepen = (
        _relative(model, x, lambda: net2net.deepen(model, x, after=block, style="block"))
        if block is not None
        else "refused: no block list (nn.ModuleList/nn.Sequential)"
    )
    before, after = _heads(model), _heads(wide.model)
    free = _free_widths(model, x, 1.5)
    row = [
        case.name,
        f"{summary['param_count']:,}",
        _relative(model, x, lambda: wide),
        _relative(model, x, lambda: net2net.widen(model, x, factor=2, init="net2net")),
        _relative(model, x, lambda: net2net.widen(model, x, factor=1.5)),
        (
            _relative(model, x, lambda: net2net.widen(model, x, widths=free, init="net2net"))
            if free
            else "no such group (all normalised or linked)"
        ),
        f"`{block}`: {deepen}" if block is not None else deepen,
        f"yes, {before} → {after}" if after > before else f"no ({before})",
    ]
    print(row, flush=True)
    return row


def zoo(quick: bool) -> str:
    torch.set_num_threads(1)
    cases = TRANSFORMER_ZOO[:2] if quick else TRANSFORMER_ZOO
    rows = [_zoo_row(case) for case in cases]
    head = [
        "model (tests/net2net/zoo.py)",
        "parameters",
        "widen ×2, default init",
        '×2, init="net2net"',
        "widen ×1.5",
        'heads and FFN ×1.5, init="net2net"',
        'deepen by a block (style="block")',
        "heads grew (×2)",
    ]
    return (
        "Every transformer of the test zoo (tests/net2net/zoo.py, tests/net2net/transformer_zoo.py; "
        "tiny sizes, float32, norms with non-default affine parameters), grown on its example "
        "batch. Figures are the grown model's max abs error relative to the teacher's output "
        "scale, max |f_new(x) − f(x)| / max |f(x)|, in eval mode. *widen ×2* grows every group "
        "(stream, heads, FFN) with `factor=2`, with the default init (`random_zero`) and with "
        'the paper\'s copies (`init="net2net"`); *widen ×1.5* uses the default init; *heads and FFN '
        "×1.5* grows, with the paper's copies and their split outgoing weights, the groups that no "
        "norm normalises and whose width no other group's is computed from (×1.5 rounded up to "
        "whole units); *deepen by a block* inserts a copy of the first block of the block list with its branches' output "
        "layers at zero. *Heads grew*: the query heads over the model (the `n_head`/`num_heads` "
        "attributes) before and after widen ×2.\n\n" + table(head, rows)
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", choices=["speed", "modes", "depth", "units", "gpt", "zoo"], action="append"
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    parser.add_argument("--write", action="store_true", help="write even with --quick")
    args = parser.parse_args(argv)
    parts = args.only or ["speed", "modes", "depth", "units", "gpt", "zoo"]
    write = args.write or not args.quick
    sections = {
        "speed": ("net2net-growth", "net2net: growth cost", speed),
        "modes": ("net2net-init-modes", "net2net: init modes under Adam", modes),
        "depth": ("net2net-depth", "net2net: identity layer vs zero-initialised residual", depth),
        "units": ("net2net-gpt-units", "net2net: do a GPT's new units learn? (init modes)", units),
        "gpt": (
            "net2net-gpt-growth",
            "net2net: GPT growth cost (widen ×2, deepen by a block)",
            gpt,
        ),
        "zoo": ("net2net-transformer-zoo", "net2net: the transformer zoo grows", zoo),
    }
    for part in parts:
        name, title, fn = sections[part]
        body = fn(args.quick)
        if write:
            write_section(name, title, body)
        else:
            print(f"## {title}\n\n{body}\n")


if __name__ == "__main__":
    main()
