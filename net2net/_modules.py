"""Modules that growth inserts into a model."""

from __future__ import annotations

import torch
from torch import nn


class Residual(nn.Module):
    """``x + body(x)``: what ``deepen(style="residual")`` inserts, with the body's last layer
    zero-initialised so that the block starts as the identity for any activation."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = x + self.body(x)
        return out
