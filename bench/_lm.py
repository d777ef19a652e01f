"""What the language-model benchmark needs besides the worker loop: the Shakespeare corpus with
nanoGPT's character vocabulary and split, the ``gpt`` specs, FLOPs with attention, nanoGPT's
learning-rate schedule, validation on fixed windows, and a bare PyTorch training loop.

Corpus. ``service/local/data/tinyshakespeare.txt`` (1,115,394 characters; provenance in the
README beside it). As nanoGPT's ``shakespeare_char/prepare.py``: the vocabulary is the sorted set
of the file's characters (65), the first 90% of the ids in file order are the training text and
the last 10% the validation text.

FLOPs per token, as nanoGPT's ``estimate_mfu`` (after the PaLM paper): training is
``6 × (weights of every matrix multiply, the tied head included) + 12 × Σ_blocks (heads × head
size) × context``, the second term the attention's ``QKᵀ`` and ``AV`` forward and backward over the
full context (causal masking not discounted); evaluation is a third of it. Embedding lookups,
norms and the softmax are left out (under 1% here).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from workers.models import build_model
from workers.spec import ModelSpec, TaskSpec

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "service" / "local" / "data" / "tinyshakespeare.txt"
CONTEXT = 64  # nanoGPT's CPU recipe: block_size 64, batch_size 12
BATCH = 12


@dataclass(frozen=True)
class Corpus:
    """The character vocabulary and the two splits as int32 ids."""

    chars: str
    train: np.ndarray
    val: np.ndarray

    @property
    def vocab_size(self) -> int:
        return len(self.chars)


def corpus(path: Path = CORPUS) -> Corpus:
    """nanoGPT's ``shakespeare_char`` preparation: sorted characters, a 90/10 split in file order."""
    text = path.read_text(encoding="utf-8")
    chars = "".join(sorted(set(text)))
    lookup = {c: i for i, c in enumerate(chars)}
    ids = np.fromiter((lookup[c] for c in text), dtype=np.int32, count=len(text))
    n = int(len(ids) * 0.9)
    return Corpus(chars, ids[:n], ids[n:])


def lm_task(vocab_size: int, context: int = CONTEXT) -> TaskSpec:
    """The benchmark's task: the ``ids`` tokenizer with the character vocabulary."""
    return TaskSpec.model_validate(
        {
            "kind": "language_modeling",
            "tokenizer": "ids",
            "vocab_size": vocab_size,
            "context_length": context,
        }
    )


def gpt_spec(n_layer: int, n_head: int, d_model: int) -> ModelSpec:
    """nanoGPT's architecture: LayerNorm without bias, GELU, learned positions, tied embeddings,
    no biases, no dropout."""
    return ModelSpec.model_validate(
        {
            "family": "gpt",
            "n_layer": n_layer,
            "n_head": n_head,
            "d_model": d_model,
            "norm": "layer",
            "positions": "learned",
            "tie_embeddings": True,
            "dropout": 0.0,
            "bias": False,
        }
    )


def shape_name(model: nn.Module) -> str:
    """``L4 H4 d128``: blocks, heads of the first block, residual width."""
    blocks: list[Any] = list(getattr(model, "blocks", []))
    heads = int(blocks[0].attn.n_head) if blocks else 0
    tok: Any = model.get_submodule("tok")
    width = int(tok.weight.shape[1])
    return f"L{len(blocks)} H{heads} d{width}"


def unigram_entropy(tokens: np.ndarray, vocab_size: int) -> float:
    """Entropy (nats) of the tokens' unigram distribution: the loss of the best model that
    ignores context, which any trained model must beat."""
    counts = np.bincount(tokens, minlength=vocab_size).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


# ----------------------------------------------------------------------------- FLOPs


def train_flops_per_token(model: nn.Module, context: int) -> float:
    """Training FLOPs per token (forward and backward), attention included (module docstring)."""
    matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    attention = 0
    for module in model.modules():
        heads, size = getattr(module, "n_head", None), getattr(module, "head_dim", None)
        if hasattr(module, "q_proj") and isinstance(heads, int) and isinstance(size, int):
            attention += heads * size
    return 6.0 * matmul + 12.0 * attention * context


# ----------------------------------------------------------------------------- schedule


@dataclass(frozen=True)
class Recipe:
    """nanoGPT's ``config/train_shakespeare_char.py`` optimiser and schedule (train.py defaults
    for what it does not set)."""

    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup: int = 100
    decay_iters: int = 2000
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.1
    grad_clip: float = 1.0

    def lr_at(self, it: int) -> float:
        """nanoGPT's ``get_lr``: linear warm-up, cosine decay to ``min_lr``, then ``min_lr``."""
        if it < self.warmup:
            return self.lr * (it + 1) / (self.warmup + 1)
        if it > self.decay_iters:
            return self.min_lr
        ratio = (it - self.warmup) / (self.decay_iters - self.warmup)
        return self.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (self.lr - self.min_lr)


def adamw(model: nn.Module, recipe: Recipe) -> torch.optim.AdamW:
    """nanoGPT's ``configure_optimizers``: weight decay on tensors of 2 or more dimensions (the
    matrices and embeddings), none on the rest."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": recipe.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=recipe.lr, betas=recipe.betas)


# ----------------------------------------------------------------------------- batches, validation


def random_windows(
    data: torch.Tensor, batch: int, context: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """nanoGPT's ``get_batch``: ``batch`` windows at uniform offsets, targets shifted by one."""
    starts = torch.randint(data.numel() - context, (batch,), generator=gen)
    rows = data[starts[:, None] + torch.arange(context + 1)]
    return rows[:, :-1], rows[:, 1:]


def val_windows(val: np.ndarray, context: int, limit: int | None = None) -> torch.Tensor:
    """Non-overlapping windows of ``context + 1`` ids over the validation text, in order: the
    whole text at most once, every window predicting ``context`` tokens."""
    n = (val.size - 1) // context
    if limit is not None:
        n = min(n, limit)
    data = torch.from_numpy(val.astype(np.int64))
    starts = torch.arange(n) * context
    return data[starts[:, None] + torch.arange(context + 1)]


@torch.no_grad()
def val_loss(model: nn.Module, windows: torch.Tensor, batch: int = 256) -> float:
    """Mean loss in nats per predicted token over the windows, in eval mode (restored after)."""
    was = model.training
    model.eval()
    total = 0.0
    for i in range(0, windows.shape[0], batch):
        rows = windows[i : i + batch]
        logits = model(rows[:, :-1])
        loss = functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1), reduction="sum"
        )
        total += float(loss)
    model.train(was)
    return total / (windows.shape[0] * (windows.shape[1] - 1))


# ----------------------------------------------------------------------------- the bare loop


@dataclass
class BareRun:
    """A bare loop's figures: tokens per second over the timed steps, its final validation loss
    (None when not measured), and the training loss of every step."""

    tokens_per_s: float
    val_loss: float | None
    seconds: float
    losses: list[float] = field(default_factory=list)


def bare_loop(
    spec: ModelSpec,
    task: TaskSpec,
    train: np.ndarray,
    *,
    steps: int,
    recipe: Recipe,
    seed: int = 0,
    timed_from: int = 10,
    val: torch.Tensor | None = None,
) -> BareRun:
    """nanoGPT's training loop, bare: the ``gpt`` family's module, AdamW as nanoGPT groups it, its
    schedule, gradient clipping, random windows of the training text; fp32 on the CPU. Tokens per
    second count the steps from ``timed_from`` on (the first ones warm the allocator up)."""
    torch.manual_seed(seed)
    model = build_model(spec, task).train()
    opt = adamw(model, recipe)
    gen = torch.Generator().manual_seed(seed)
    data = torch.from_numpy(train.astype(np.int64))
    losses = torch.zeros(steps)
    started = time.perf_counter()
    for it in range(steps):
        if it == timed_from:
            started = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = recipe.lr_at(it)
        x, y = random_windows(data, BATCH, task.context_length, gen)
        logits = model(x)
        loss = functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        opt.step()
        losses[it] = loss.detach()
    seconds = time.perf_counter() - started
    timed = max(1, steps - timed_from)
    return BareRun(
        tokens_per_s=timed * BATCH * task.context_length / seconds,
        val_loss=None if val is None else val_loss(model, val),
        seconds=seconds,
        losses=losses.tolist(),
    )
