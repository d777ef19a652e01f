"""What a task means for training: the loss, the metric, and how a model is evaluated.

Classification trains with cross-entropy and reports accuracy; regression trains with the mean
squared error and reports it as its metric too (lower is better). Language modelling trains with
the cross-entropy of every position of a window (the next token's id), reports its loss in nats per
token and its perplexity, ``exp(loss)``, as the metric (lower is better).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional

from workers.spec import TaskSpec

LOGITS_PER_BATCH = 1 << 24
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def targets(labels: torch.Tensor, task: TaskSpec) -> torch.Tensor:
    """Labels as the loss wants them: int64 class indices (N,), float32 targets (N, outputs), or
    int64 next-token ids (N, T) for language modelling."""
    if task.kind == "language_modeling":
        return labels.long()
    if task.kind == "classification":
        return labels.long().reshape(-1)
    return labels.float().reshape(labels.shape[0], -1)


def loss_fn(task: TaskSpec) -> LossFn:
    """The training loss of ``task`` (mean over the batch; over every token for language
    modelling)."""
    if task.kind == "language_modeling":
        return token_cross_entropy
    if task.kind == "classification":
        return functional.cross_entropy
    return functional.mse_loss


def token_cross_entropy(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy, in nats per token, of logits (N, T, V) for the next ids (N, T)."""
    return functional.cross_entropy(logits.flatten(0, 1), ids.flatten())


def perplexity(loss: float) -> float:
    """``exp(loss)`` of a loss in nats per token (capped so that it stays a float)."""
    return math.exp(min(loss, 700.0))


@torch.no_grad()
def evaluate(
    model: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    task: TaskSpec,
    *,
    batch_size: int = 1024,
    device: torch.device | None = None,
) -> tuple[float, float]:
    """``(mean loss, metric)`` of ``model`` on a dataset, in eval mode (restored afterwards).
    Language modelling: ``features`` and ``labels`` are windows (N, T) of ids and of the ids that
    follow; the loss is the mean over every token, in nats, and the metric the perplexity.

    Losses are summed per sample in float64, so the result does not depend on ``batch_size`` beyond
    float32 rounding inside the model.
    """
    n = features.shape[0]
    if n == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    device = device or next(model.parameters()).device
    if task.kind == "language_modeling":  # at most about 2**24 logits per batch
        batch_size = max(1, min(batch_size, LOGITS_PER_BATCH // features[0].numel() // task.vocab))
    was_training = model.training
    model.eval()
    total_loss = 0.0
    total_metric = 0.0
    try:
        for start in range(0, n, batch_size):
            x = features[start : start + batch_size].to(device, non_blocking=True)
            y = targets(labels[start : start + batch_size], task).to(device, non_blocking=True)
            out = model(x)
            if task.kind == "language_modeling":  # summed here, divided by the token count below
                flat = out.float().flatten(0, 1)
                total_loss += functional.cross_entropy(flat, y.flatten(), reduction="sum").item()
                total_metric += y.numel()
            elif task.kind == "classification":
                total_loss += functional.cross_entropy(out, y, reduction="sum").double().item()
                total_metric += (out.argmax(dim=1) == y).sum().item()
            else:
                # Per-sample mean over outputs, summed over samples: the batch mean in the end.
                per_sample = functional.mse_loss(out, y, reduction="none").reshape(out.shape[0], -1)
                total_loss += per_sample.mean(dim=1).double().sum().item()
        if task.kind == "language_modeling":
            loss = total_loss / total_metric
            metric = perplexity(loss)
        else:
            loss = total_loss / n
            metric = total_metric / n if task.kind == "classification" else loss
    finally:
        model.train(was_training)
    return loss, metric
