"""Losses, metrics and evaluation per task."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

from workers.spec import TaskSpec
from workers.tasks import evaluate, loss_fn, targets

CLS = TaskSpec(kind="classification", input_shape=(4,), num_classes=3)
REG = TaskSpec(kind="regression", input_shape=(4,), num_outputs=2)


def test_classification_loss_and_accuracy_match_torch() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    x, y = torch.randn(50, 4), torch.randint(0, 3, (50,))
    loss, acc = evaluate(model, x, y, CLS, batch_size=7)
    with torch.no_grad():
        out = model(x)
    torch.testing.assert_close(loss, functional.cross_entropy(out, y).item(), atol=1e-6, rtol=0)
    assert acc == (out.argmax(1) == y).sum().item() / 50
    assert loss_fn(CLS)(out, targets(y, CLS)).item() == functional.cross_entropy(out, y).item()


def test_regression_metric_is_the_mse_and_batching_does_not_change_it() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 2))
    x, y = torch.randn(33, 4), torch.randn(33, 2)
    loss, mse = evaluate(model, x, y, REG, batch_size=5)
    whole, _ = evaluate(model, x, y, REG, batch_size=1000)
    assert loss == mse
    torch.testing.assert_close(loss, whole, atol=1e-6, rtol=0)
    with torch.no_grad():
        expected = functional.mse_loss(model(x), y).item()
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=0)


def test_evaluate_restores_train_mode_and_uses_eval_mode() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.9))
    model.train()
    x, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
    first = evaluate(model, x, y, CLS)
    assert evaluate(model, x, y, CLS) == first  # dropout is off in eval mode
    assert model.training


def test_targets_shapes() -> None:
    assert targets(torch.tensor([1, 2]), CLS).dtype == torch.int64
    one = TaskSpec(kind="regression", input_shape=(4,), num_outputs=1)
    assert targets(torch.tensor([1.0, 2.0]), one).shape == (2, 1)
