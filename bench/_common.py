"""What the learning benchmarks share: MNIST-1D generated offline and cached, MLP sizes, FLOP
counting, seed statistics and plotting.

MNIST-1D (Greydanus 2020) is generated with ``mnist1d.data.make_dataset`` (never ``get_dataset``,
which downloads). One generation of 37,000 samples (seed 42, the package's default arguments) is
cached as ``.npz`` under ``$LIFELONG_BENCH_CACHE`` (default ``<tmp>/lifelong-bench``): the first
32,000 are the training stream, the last 5,000 the fixed validation set. About 25 s to generate on
2 cores, then a few milliseconds to load.

FLOPs. Training an MLP costs about 2 FLOPs per weight and sample forward and 4 backward (the
gradients with respect to the inputs and to the weights), so ``6 × params × samples``; biases are
counted as weights (their share is under 1%). Evaluation costs ``2 × params × samples``.
"""

from __future__ import annotations

import itertools
import math
import os
import statistics
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional

TRAIN_SAMPLES = 32_000
VAL_SAMPLES = 5_000
INPUT_DIM = 40
CLASSES = 10


def cache_dir() -> Path:
    root = os.environ.get("LIFELONG_BENCH_CACHE") or str(
        Path(tempfile.gettempdir()) / "lifelong-bench"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def mnist1d(
    train: int = TRAIN_SAMPLES, val: int = VAL_SAMPLES
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_val, y_val)``: float32 (N, 40) and int64 (N,), cached on disk."""
    total = train + val
    path = cache_dir() / f"mnist1d-{total}-seed42.npz"
    if not path.exists():
        from mnist1d.data import get_dataset_args, make_dataset

        started = time.perf_counter()
        args = get_dataset_args()
        args.num_samples = total
        data = make_dataset(args)  # offline; shuffled; normalised over the whole set
        x = np.concatenate([data["x"], data["x_test"]]).astype(np.float32)
        y = np.concatenate([data["y"], data["y_test"]]).astype(np.int64)
        tmp = path.with_suffix(f".{os.getpid()}.npz")
        np.savez(tmp, x=x, y=y)
        tmp.replace(path)
        print(f"generated MNIST-1D ({total:,} samples) in {time.perf_counter() - started:.0f} s")
    with np.load(path, allow_pickle=False) as f:
        x, y = f["x"], f["y"]
    if x.shape[0] < total:
        raise RuntimeError(f"{path} holds {x.shape[0]} samples, fewer than {total}")
    return x[:train], y[:train], x[-val:], y[-val:]


def mlp_params(widths: Sequence[int], input_dim: int = INPUT_DIM, classes: int = CLASSES) -> int:
    """Parameters of ``input → widths… → classes`` with biases."""
    dims = [input_dim, *widths, classes]
    return sum(a * b + b for a, b in itertools.pairwise(dims))


def train_flops(params: int, samples: int) -> float:
    """Forward and backward: ``6 × params × samples``."""
    return 6.0 * params * samples


def eval_flops(params: int, samples: int) -> float:
    return 2.0 * params * samples


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    v = [float(x) for x in values if x is not None and not math.isnan(float(x))]
    if not v:
        return math.nan, math.nan
    return statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0


def pm(values: Iterable[float], digits: int = 1, scale: float = 1.0) -> str:
    """``"mean ± std"`` of values × scale (just the mean for one value)."""
    v = [float(x) * scale for x in values]
    m, s = mean_std(v)
    if math.isnan(m):
        return "–"
    if len(v) == 1:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def fmt_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"


def set_threads(n: int = 1) -> None:
    """One intra-op thread: the 2 cores here are shared, and the Ray worker uses one too."""
    torch.set_num_threads(n)


def save_figure(fig: object, name: str) -> Path:
    """Save a matplotlib figure as ``docs/img/<name>.png``; returns the path."""
    from bench._report import ROOT

    path = ROOT / "docs" / "img" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")  # type: ignore[attr-defined]
    import matplotlib.pyplot as plt

    plt.close(fig)  # type: ignore[arg-type]
    return path


def pyplot() -> object:
    """``matplotlib.pyplot`` with a non-interactive backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ----------------------------------------------------------------------------- plain training


def mlp_model(widths: Sequence[int], seed: int) -> torch.nn.Module:
    """The workers' MLP (``workers.models.mlp``: fc_i → act_i, head), seeded."""
    from workers.models import build_model
    from workers.spec import ModelSpec, TaskSpec

    torch.manual_seed(seed)
    task = TaskSpec(kind="classification", input_shape=(INPUT_DIM,), num_classes=CLASSES)
    return build_model(ModelSpec(family="mlp", hidden=list(widths)), task)


class Batches:
    """Mini-batch indices: a fresh permutation per epoch from a seeded generator."""

    def __init__(self, n: int, batch: int, seed: int) -> None:
        self.n, self.batch = n, batch
        self.gen = torch.Generator().manual_seed(seed)
        self.order = torch.randperm(n, generator=self.gen)
        self.pos = 0

    def next(self) -> torch.Tensor:
        if self.pos + self.batch > self.n:
            self.order, self.pos = torch.randperm(self.n, generator=self.gen), 0
        idx = self.order[self.pos : self.pos + self.batch]
        self.pos += self.batch
        return idx


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(cross-entropy, accuracy) on a whole set, in eval mode."""
    was = model.training
    model.eval()
    out = model(x)
    loss = float(functional.cross_entropy(out, y))
    acc = float((out.argmax(1) == y).float().mean())
    model.train(was)
    return loss, acc
