"""The tensor ops between layers: each model below widens exactly through them."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

import net2net


class FunctionalCNN(nn.Module):
    """F.* activations and pools, F.pad, mean over spatial dims, unsqueeze/squeeze, permute,
    slicing of spatial dims, torch.where, softmax over a non-channel dim, x.view(B, -1)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3)
        self.c2 = nn.Conv2d(6, 5, 1)
        self.fc = nn.Linear(5, 4)
        self.head = nn.Linear(4 * 3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.c1(F.pad(x, (1, 1, 1, 1))))  # (B, 6, H, W)
        h = F.max_pool2d(h, 2)[:, :, 1:, :]  # slice a spatial dim
        h = torch.where(h > 0, h, 0.1 * h)
        h = torch.softmax(h, dim=-1) * h
        h = F.adaptive_avg_pool2d(F.hardswish(self.c2(h)), 1).squeeze(-1).squeeze(-1)  # (B, 5)
        z = self.fc(h.unsqueeze(1).expand(-1, 3, -1))  # (B, 3, 4): Linear over the last dim
        z = F.gelu(z).permute(0, 2, 1).contiguous()  # (B, 4, 3)
        return self.head(z.view(z.size(0), -1))


class TwoInputs(nn.Module):
    """Two inputs, concatenation along the last dim with a fixed-size tensor, a stack, a mul."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(3, 6)
        self.mix = nn.Linear(6 + 3, 5)
        self.head = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x)) * torch.sigmoid(self.b(y))
        h = torch.cat([h, y], dim=-1)  # group segment + fixed segment
        s = torch.stack([self.mix(h), self.mix(h).neg()], dim=0).sum(0)
        return self.head(torch.tanh(s) - 0.5 * s)


class SeqModel(nn.Module):
    """(B, T, F) features: LayerNorm over features, mean over time."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 8)
        self.ln = nn.LayerNorm(8)
        self.fc1 = nn.Linear(8, 12)
        self.fc2 = nn.Linear(12, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        h = self.embed(t)
        h = h + self.fc2(F.relu(self.fc1(self.ln(h))))
        return self.head(h.mean(dim=1))


CASES = [
    ("functional_cnn", FunctionalCNN, lambda: (torch.randn(3, 3, 8, 8),)),
    ("two_inputs", TwoInputs, lambda: (torch.randn(5, 4), torch.randn(5, 3))),
    ("seq", SeqModel, lambda: (torch.randint(0, 11, (4, 6)),)),
]


@pytest.mark.parametrize(("name", "build", "inputs"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("init", ["net2net", "random_zero"])
def test_widen_through_ops(name: str, build: type[nn.Module], inputs: object, init: str) -> None:
    torch.manual_seed(0)
    model = build()
    x = inputs()  # type: ignore[operator]
    groups = net2net.width_groups(model, x)
    assert groups
    grown = net2net.widen(model, x, factor=2.0, init=init)
    assert grown.max_abs_error < 1e-5
    assert net2net.predict_param_count(
        net2net.summarize(model, x), factor=2.0
    ) == net2net.count_params(grown.model)
    rebuilt = net2net.replay(model, [grown.record])
    rebuilt.load_state_dict(grown.model.state_dict())


def test_two_inputs_groups() -> None:
    model = TwoInputs()
    x = (torch.randn(5, 4), torch.randn(5, 3))
    groups = {g.name: g for g in net2net.width_groups(model, x)}
    assert set(groups) == {"a", "mix"}
    assert set(groups["a"].producers) == {"a", "b"}  # coupled by the product
    grown = net2net.widen(model, x, widths={"a": 7})
    assert grown.model.mix.in_features == 10  # 7 units + the fixed 3 of y


def test_embedding_is_a_producer() -> None:
    torch.manual_seed(0)
    model = SeqModel()
    t = torch.randint(0, 11, (4, 6))
    groups = {g.name: g for g in net2net.width_groups(model, t)}
    assert set(groups["embed"].producers) == {"embed", "fc2"}
    assert groups["embed"].integer_factor  # the LayerNorm reads it
    grown = net2net.widen(model, t, widths={"embed": 16, "fc1": 13})
    assert grown.model.embed.weight.shape == (11, 16)
    assert grown.max_abs_error < 1e-5
