"""add_classes: a classifier's head grows by new output units, the old logits kept exactly."""

from __future__ import annotations

import collections

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.nn import functional

import net2net


def _mlp(classes: int = 4, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        collections.OrderedDict(fc=nn.Linear(8, 16), act=nn.ReLU(), head=nn.Linear(16, classes))
    )


def _trained_adam(model: nn.Module, x: torch.Tensor, steps: int = 5) -> torch.optim.Optimizer:
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    y = torch.arange(x.shape[0]) % 4
    for _ in range(steps):
        opt.zero_grad()
        torch.autograd.backward(functional.cross_entropy(model(x), y))
        opt.step()
    return opt


@pytest.mark.parametrize("init", ["low", "mean"])
def test_old_logits_are_kept_exactly(init: str) -> None:
    model = _mlp()
    x = torch.randn(32, 8)
    grown = net2net.add_classes(model, x, classes=7, init=init)
    assert grown.max_abs_error == 0.0
    assert grown.record["op"] == "add_classes" and grown.record["classes"] == [4, 7]
    with torch.no_grad():
        old, new = model(x), grown.model(x)
    assert new.shape == (32, 7)
    torch.testing.assert_close(new[:, :4], old, rtol=0, atol=0)
    head = grown.model.get_submodule("head")
    assert isinstance(head, net2net.ClassHead) and head.out_features == 7
    assert head.sizes == [4, 3]
    assert model.get_submodule("head").weight.shape == (4, 16)  # the input is untouched


def test_mean_init_gives_the_mean_old_logit() -> None:
    model = _mlp()
    x = torch.randn(16, 8)
    grown = net2net.add_classes(model, x, classes=6, init="mean")
    with torch.no_grad():
        out = grown.model(x)
    torch.testing.assert_close(out[:, 4], out[:, :4].mean(dim=1), rtol=0, atol=1e-6)
    torch.testing.assert_close(out[:, 5], out[:, 4], rtol=0, atol=0)


def test_low_init_starts_the_new_class_near_its_prior() -> None:
    model = _mlp()
    x = torch.randn(64, 8)
    grown = net2net.add_classes(model, x, classes=5, init="low", prior=0.02)
    weight = grown.model.get_parameter("head.weight_1")
    torch.testing.assert_close(weight[0], torch.zeros(16), rtol=0, atol=0)
    with torch.no_grad():
        p = grown.model(x).softmax(dim=1)[:, 4]
    assert 0.005 < float(p.mean()) < 0.05
    # The old classes keep their ranking: the argmax among them is unchanged.
    with torch.no_grad():
        assert torch.equal(grown.model(x)[:, :4].argmax(1), model(x).argmax(1))


def test_a_second_growth_and_a_widen_keep_every_old_logit_bit_for_bit() -> None:
    model = _mlp(classes=5)
    x = torch.randn(64, 8)
    once = net2net.add_classes(model, x, classes=10)
    widened = net2net.widen(once.model, x, factor=2.0, seed=3)
    twice = net2net.add_classes(widened.model, x, classes=13, init="mean")
    assert once.max_abs_error == 0.0 and twice.max_abs_error == 0.0
    head = twice.model.get_submodule("head")
    assert isinstance(head, net2net.ClassHead) and head.sizes == [5, 5, 3]
    assert head.in_features == 32
    with torch.no_grad():
        torch.testing.assert_close(twice.model(x)[:, :10], widened.model(x), rtol=0, atol=0)
    assert widened.max_abs_error < 1e-5


def test_replay_rebuilds_the_grown_head() -> None:
    model = _mlp()
    x = torch.randn(8, 8)
    grown = net2net.add_classes(model, x, classes=9)
    widened = net2net.widen(grown.model, x, factor=2.0, seed=1)
    rebuilt = net2net.replay(_mlp(seed=5), [grown.record, widened.record])
    rebuilt.load_state_dict(widened.model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), widened.model(x), rtol=0, atol=0)


def test_optimizer_state_of_old_rows_is_carried_and_new_rows_start_empty() -> None:
    model = _mlp()
    x = torch.randn(32, 8)
    opt = _trained_adam(model, x)
    grown = net2net.add_classes(model, x, classes=6)
    new_opt = net2net.transfer_optimizer(opt, model, grown)
    old_w = model.get_parameter("head.weight")
    new_w = grown.model.get_parameter("head.weight_0")
    old_state, new_state = opt.state[old_w], new_opt.state[new_w]
    for key in ("exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(new_state[key], old_state[key], rtol=0, atol=0)
    # The new rows: zero moments, and the old rows' step count.
    fresh = new_opt.state[grown.model.get_parameter("head.weight_1")]
    torch.testing.assert_close(fresh["exp_avg"], torch.zeros(2, 16), rtol=0, atol=0)
    torch.testing.assert_close(fresh["exp_avg_sq"], torch.zeros(2, 16), rtol=0, atol=0)
    assert float(fresh["step"]) == float(old_state["step"]) == 5.0
    fc_old, fc_new = model.get_parameter("fc.weight"), grown.model.get_parameter("fc.weight")
    torch.testing.assert_close(new_opt.state[fc_new]["exp_avg"], opt.state[fc_old]["exp_avg"])
    assert len(new_opt.param_groups[0]["params"]) == 6
    # One more step works on the grown model.
    new_opt.zero_grad()
    torch.autograd.backward(functional.cross_entropy(grown.model(x), torch.arange(32) % 6))
    new_opt.step()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"classes": 4}, "has 4 outputs already"),
        ({"classes": 6, "head": "nope"}, "no module 'nope'"),
        ({"classes": 6, "head": "act"}, "is not a Linear with a bias"),
        ({"classes": 6, "init": "random"}, "init must be one of"),
        ({"classes": 6, "prior": 1.5}, "prior must be in"),
    ],
)
def test_refusals_say_what_to_change(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(net2net.GrowthError, match=message):
        net2net.add_classes(_mlp(), torch.randn(4, 8), **kwargs)  # type: ignore[arg-type]


def _new_class_accuracy(init: str, seed: int) -> float:
    """Train on digits 0-7, add 8 and 9, train 10 Adam steps on all ten: the new classes'
    held-out accuracy."""
    digits = load_digits()
    x = torch.tensor(digits.data / 16, dtype=torch.float32)
    y = torch.tensor(digits.target)
    test = torch.arange(len(x)) % 5 == 0
    torch.manual_seed(seed)
    model: nn.Module = nn.Sequential(
        collections.OrderedDict(fc=nn.Linear(64, 64), act=nn.ReLU(), head=nn.Linear(64, 8))
    )
    opt: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    old = ~test & (y < 8)
    xo, yo = x[old], y[old]
    for _ in range(300):
        i = torch.randint(0, len(xo), (64,), generator=gen)
        opt.zero_grad()
        torch.autograd.backward(functional.cross_entropy(model(xo[i]), yo[i]))
        opt.step()
    grown = net2net.add_classes(model, x[:256], classes=10, init=init)
    opt, model = net2net.transfer_optimizer(opt, model, grown), grown.model
    xa, ya = x[~test], y[~test]
    for _ in range(10):
        i = torch.randint(0, len(xa), (64,), generator=gen)
        opt.zero_grad()
        torch.autograd.backward(functional.cross_entropy(model(xa[i]), ya[i]))
        opt.step()
    with torch.no_grad():
        new = test & (y >= 8)
        return float((model(x[new]).argmax(1) == y[new]).float().mean())


def test_low_init_learns_the_new_classes_sooner_than_mean() -> None:
    """The measurement behind the default (docs/workers.md, "Classes that arrive")."""
    low = sum(_new_class_accuracy("low", s) for s in range(3)) / 3
    mean = sum(_new_class_accuracy("mean", s) for s in range(3)) / 3
    assert low > mean + 0.05, (low, mean)
