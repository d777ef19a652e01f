"""Saturation signals: they measure what they claim, and the model is left exactly as it was."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from workers.signals import SignalGroup, group_signals


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(12, 64),
        nn.BatchNorm1d(64),
        nn.ReLU(),
        nn.Linear(64, 32),
        nn.ReLU(),
        nn.Linear(32, 3),
    )


GROUPS = [SignalGroup("0", 64, ("0", "1", "3")), SignalGroup("3", 32, ("3", "5"))]


def test_dormant_units_lower_the_active_fraction() -> None:
    model = mlp()
    x = torch.randn(256, 12)
    # Threshold 0: a unit is active when it fires at all on the batch.
    before = group_signals(model, x, GROUPS, dormant_threshold=0.0)
    assert before["3"]["active_fraction"] == 1.0
    with torch.no_grad():  # 12 of 32 units of group "3" can never fire
        model[3].weight[:12] = 0.0
        model[3].bias[:12] = -1.0
    after = group_signals(model, x, GROUPS, dormant_threshold=0.0)
    assert after["3"]["active_fraction"] == 20 / 32
    assert after["3"]["width"] == 32.0
    assert after["0"] == before["0"]  # the other group is untouched
    # At the default threshold (0.1 × the layer's mean |h|) the dead units count as dormant too.
    assert group_signals(model, x, GROUPS)["3"]["active_fraction"] <= 20 / 32


def test_effective_rank_drops_when_units_are_copies() -> None:
    model = mlp()
    x = torch.randn(512, 12)
    full = group_signals(model, x, GROUPS)["3"]["effective_rank"]
    with torch.no_grad():  # every unit of group "3" becomes a copy of one of 4 units
        model[3].weight.copy_(model[3].weight[:4].repeat(8, 1))
        model[3].bias.copy_(model[3].bias[:4].repeat(8))
    copies = group_signals(model, x, GROUPS)["3"]["effective_rank"]
    assert copies <= 4 / 32 + 1e-6
    assert full > 2 * copies


def test_signals_leave_the_model_unchanged() -> None:
    model = mlp()
    model.train()
    model[1].eval()  # mixed training flags must come back as they were
    x = torch.randn(64, 12)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    group_signals(model, x, GROUPS)
    assert [m.training for m in model.modules()] == flags
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert all(not m._forward_hooks for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


def test_conv_groups_use_the_channel_dim_and_max_samples() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 4, 3, padding=1),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 2),
    )
    with torch.no_grad():
        model[0].weight[:2] = 0.0
        model[0].bias[:2] = -1.0
    groups = [SignalGroup("c0", 8, ("0", "2")), SignalGroup("c2", 4, ("2", "4"))]
    signals = group_signals(model, torch.randn(32, 3, 6, 6), groups, max_samples=8)
    assert signals["c0"]["active_fraction"] == pytest.approx(6 / 8)
    assert signals["c0"]["width"] == 8.0
    # Group c2 is consumed flattened: its units are read as the conv's output, still per channel.
    assert signals["c2"]["width"] == 4.0


def test_groups_not_seen_are_left_out() -> None:
    model = mlp()
    groups = [*GROUPS, SignalGroup("ghost", 7, ("nope",))]
    assert set(group_signals(model, torch.randn(16, 12), groups)) == {"0", "3"}
