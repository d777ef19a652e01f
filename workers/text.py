"""Text in and out of a language model: the byte tokenizer, generation and scoring.

The ``bytes`` tokenizer maps a text to its UTF-8 bytes (256 ids, nothing to learn, nothing to
drift); with the ``ids`` tokenizer the user tokenizes and pushes ids, and ids are shown as numbers.
:func:`generate` yields one new id at a time (for streaming) and :func:`score` gives a text's loss
in nats per predicted token and its perplexity.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from workers.spec import TaskSpec


def _require_lm(task: TaskSpec) -> None:
    if task.kind != "language_modeling":
        raise ValueError(f"the task is {task.kind}, not language_modeling: it has no tokenizer")


def encode_text(text: str, task: TaskSpec) -> np.ndarray:
    """The token ids (int32) of ``text`` under the task's tokenizer: its UTF-8 bytes."""
    _require_lm(task)
    if task.tokenizer != "bytes":
        raise ValueError(
            f"the task's tokenizer is '{task.tokenizer}': push token ids, not text (text is "
            f"encoded by the 'bytes' tokenizer only)"
        )
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"the text cannot be encoded as UTF-8 at character {exc.start} ({exc.reason})"
        ) from None
    return np.frombuffer(raw, dtype=np.uint8).astype(np.int32)


def decode_tokens(ids: Sequence[int], task: TaskSpec) -> str:
    """Text for token ids: UTF-8 (invalid sequences replaced by U+FFFD) for ``bytes``, the ids
    space-separated for ``ids``."""
    _require_lm(task)
    values = [int(i) for i in ids]
    bad = [i for i in values if not 0 <= i < task.vocab]
    if bad:
        raise ValueError(f"token id {bad[0]} is outside the vocabulary [0, {task.vocab})")
    if task.tokenizer == "bytes":
        return bytes(values).decode("utf-8", errors="replace")
    return " ".join(str(i) for i in values)


def _vocab_of(model: nn.Module) -> int | None:
    head = getattr(model, "head", None)
    return int(head.out_features) if isinstance(head, nn.Linear) else None


def _check_ids(ids: Sequence[int], model: nn.Module, what: str, least: int) -> list[int]:
    values = [int(i) for i in ids]
    if len(values) < least:
        raise ValueError(f"{what} needs at least {least} token id(s), got {len(values)}")
    vocab = _vocab_of(model)
    for i in values:
        if i < 0 or (vocab is not None and i >= vocab):
            raise ValueError(f"token id {i} is outside the vocabulary [0, {vocab})")
    return values


def _next_id(
    logits: torch.Tensor, temperature: float, top_k: int | None, gen: torch.Generator | None
) -> int:
    """One id from the last position's logits (V,): the argmax at temperature 0, else a draw."""
    if temperature == 0.0:
        return int(logits.argmax())
    scaled = logits.float() / temperature
    if top_k is not None and top_k < scaled.numel():
        kth = torch.topk(scaled, top_k).values[-1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = functional.softmax(scaled, dim=-1)
    return int(torch.multinomial(probs, 1, generator=gen))


@torch.no_grad()
def generate(
    model: nn.Module,
    prompt_ids: Sequence[int],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | None = None,
    context_length: int,
) -> Iterator[int]:
    """Yield ``max_new_tokens`` new ids one at a time, each drawn from the model's distribution
    for the next token given the prompt and the ids so far (the last ``context_length`` of them).

    The model runs in eval mode without gradients (its mode is restored when the iterator ends or
    is closed). Temperature 0 is greedy; ``top_k`` keeps the k likeliest ids; a ``seed`` makes the
    draws deterministic (on the same device).
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be at least 0, got {max_new_tokens}")
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number at least 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    if context_length < 1:
        raise ValueError(f"context_length must be at least 1, got {context_length}")
    ids = _check_ids(prompt_ids, model, "generation", 1)
    device = next(model.parameters()).device
    gen = None
    if seed is not None:
        gen = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        for _ in range(max_new_tokens):
            window = torch.tensor([ids[-context_length:]], dtype=torch.long, device=device)
            logits = model(window)[0, -1]
            new = _next_id(logits, temperature, top_k, gen)
            ids.append(new)
            yield new
    finally:
        model.train(was_training)


@torch.no_grad()
def score(model: nn.Module, ids: Sequence[int], *, context_length: int) -> tuple[float, float]:
    """``(mean loss in nats per predicted token, perplexity)`` of one text's ids.

    Every id after the first is predicted from the ones before it; a text longer than
    ``context_length + 1`` ids is cut into consecutive windows of ``context_length`` predictions
    (each window restarts its context). Losses are summed in float64; the model's mode is kept.
    """
    if context_length < 1:
        raise ValueError(f"context_length must be at least 1, got {context_length}")
    values = _check_ids(ids, model, "scoring", 2)
    device = next(model.parameters()).device
    seq = torch.tensor(values, dtype=torch.long, device=device)
    predicted = len(values) - 1
    full = predicted // context_length
    total = 0.0
    was_training = model.training
    model.eval()
    try:
        if full:
            starts = torch.arange(full, device=device) * context_length
            windows = seq[starts[:, None] + torch.arange(context_length + 1, device=device)]
            total += _window_loss_sum(model, windows)
        rest = predicted - full * context_length
        if rest:
            total += _window_loss_sum(model, seq[None, full * context_length :])
    finally:
        model.train(was_training)
    loss = total / predicted
    return loss, math.exp(min(loss, 700.0))


def _window_loss_sum(model: nn.Module, windows: torch.Tensor, batch: int = 64) -> float:
    """Summed cross-entropy of windows (N, L + 1): ids [:, :-1] predict [:, 1:]."""
    total = 0.0
    for start in range(0, windows.shape[0], batch):
        chunk = windows[start : start + batch]
        logits = model(chunk[:, :-1])
        loss = functional.cross_entropy(
            logits.flatten(0, 1).float(), chunk[:, 1:].flatten(), reduction="sum"
        )
        total += float(loss.double())
    return total
