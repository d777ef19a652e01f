"""A tiny language-modelling task and a GPT's units as vectors, to see whether new units learn:
the tests and ``bench.net2net_growth`` share them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

import net2net

from .transformer_zoo import GPT


def markov_text(vocab: int, length: int, seed: int, fanout: int = 3) -> torch.Tensor:
    """A token stream from a seeded Markov chain in which every token has ``fanout`` possible
    successors: learnable (the best loss is about log(fanout)) and far from uniform."""
    gen = torch.Generator().manual_seed(seed)
    successors = torch.stack([torch.randperm(vocab, generator=gen)[:fanout] for _ in range(vocab)])
    picks = torch.randint(0, fanout, (length,), generator=gen)
    out = torch.empty(length, dtype=torch.long)
    out[0] = 0
    for t in range(1, length):  # a Python loop: cheap for the few thousand tokens used here
        out[t] = successors[out[t - 1], picks[t]]
    return out


@dataclass
class LMTask:
    """Random windows of one token stream; ``eval_x``/``eval_y`` is a fixed batch for the loss."""

    tokens: torch.Tensor
    context: int
    batch: int
    gen: torch.Generator
    eval_x: torch.Tensor
    eval_y: torch.Tensor

    @classmethod
    def make(cls, vocab: int, context: int, batch: int, seed: int) -> LMTask:
        tokens = markov_text(vocab, 20_000, seed)
        gen = torch.Generator().manual_seed(seed + 1)
        x, y = _windows(tokens, context, 4 * batch, gen)
        return cls(tokens, context, batch, gen, x, y)

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        return _windows(self.tokens, self.context, self.batch, self.gen)


def _windows(
    tokens: torch.Tensor, context: int, batch: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    start = torch.randint(0, len(tokens) - context - 1, (batch,), generator=gen)
    idx = start[:, None] + torch.arange(context + 1)
    seq = tokens[idx]
    return seq[:, :-1], seq[:, 1:]


def lm_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    out: torch.Tensor = model(x)
    return F.cross_entropy(out.flatten(0, 1), y.flatten())


def eval_loss(model: nn.Module, task: LMTask) -> float:
    flag = model.training
    model.eval()
    with torch.no_grad():
        loss = float(lm_loss(model, task.eval_x, task.eval_y))
    model.train(flag)
    return loss


def adamw(model: nn.Module, lr: float = 3e-3) -> torch.optim.AdamW:
    """nanoGPT's param groups: weight decay on matrices only."""
    params = list(model.parameters())
    return torch.optim.AdamW(
        [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ],
        lr=lr,
    )


def train(
    model: nn.Module, opt: torch.optim.Optimizer, task: LMTask, steps: int, track: int = 0
) -> list[float]:
    """``steps`` AdamW steps; returns the fixed batch's loss after each of the first ``track``."""
    model.train()
    seen = []
    for step in range(steps):
        x, y = task.sample()
        opt.zero_grad(set_to_none=True)
        lm_loss(model, x, y).backward()
        opt.step()
        if step < track:
            seen.append(eval_loss(model, task))
    return seen


def unit_vectors(gpt: GPT) -> dict[str, torch.Tensor]:
    """Each unit's incoming weights as one row, by group name: the residual stream's channels
    (their embedding columns and the rows of every output projection), each block's heads (the
    q, k and v rows of the head) and each block's MLP units (rows of c_fc)."""
    t = gpt.transformer
    blocks = list(t.h)
    stream = [t.wte.weight.T, t.wpe.weight.T]
    for b in blocks:
        stream += [b.attn.c_proj.weight, b.mlp.c_proj.weight]
    out = {"transformer.wte": torch.cat(stream, dim=1)}
    for i, b in enumerate(blocks):
        w = b.attn.c_attn.weight  # (3 · n_head · hs, d): q heads, k heads, v heads
        heads = w.view(3, b.attn.n_head, -1, w.shape[1]).transpose(0, 1)
        out[f"transformer.h.{i}.attn.c_attn"] = heads.reshape(b.attn.n_head, -1)
        out[f"transformer.h.{i}.mlp.c_fc"] = b.mlp.c_fc.weight
    return {k: v.detach() for k, v in out.items()}


def copy_cosines(grown: net2net.Grown, old_widths: dict[str, int]) -> dict[str, float]:
    """The largest cosine similarity between a new unit's incoming weights and its source's, per
    kind of unit ("stream", "heads", "mlp"), in ``grown.model`` as it is now (1.0: a copy)."""
    vectors = unit_vectors(grown.model)  # type: ignore[arg-type]
    worst: dict[str, float] = {}
    for name, src in grown.mappings.items():
        new = torch.arange(old_widths[name], len(src))
        v = vectors[name]
        cos = float(F.cosine_similarity(v[new], v[src[new]], dim=1).max())
        kind = "stream" if name == "transformer.wte" else "heads" if "attn" in name else "mlp"
        worst[kind] = max(worst.get(kind, -1.0), cos)
    return worst
