"""transfer_optimizer: state shapes, the documented scaling rule, hyper-parameters, and the loss
right after growth (carried Adam state: no spike; reset Adam state: a jump)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

import net2net

from .zoo import ResNet, mlp_bn


def _problem(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 6, generator=g)
    w = torch.randn(6, 4, generator=g)
    return x, torch.tanh(x @ w) + 0.1 * torch.randn(256, 4, generator=g)


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))


def _train(
    model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, steps: int
) -> list[float]:
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return F.mse_loss(model(x), y).item()


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1, amsgrad=True),
}


@pytest.fixture(params=sorted(OPTIMIZERS))
def trained(
    request: pytest.FixtureRequest,
) -> tuple[nn.Module, torch.optim.Optimizer, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    x, y = _problem()
    model = _mlp()
    opt = OPTIMIZERS[request.param](model.parameters())
    _train(model, opt, x, y, 30)
    return model, opt, x, y


def test_state_shapes_and_rule(
    trained: tuple[nn.Module, torch.optim.Optimizer, torch.Tensor, torch.Tensor],
) -> None:
    model, opt, x, _ = trained
    old_state = {k: {kk: vv.clone() for kk, vv in v.items()} for k, v in opt.state.items()}
    grown = net2net.widen(
        model, x, widths={"0": 13, "2": 11}, split="random", seed=7, init="net2net"
    )
    new_opt = net2net.transfer_optimizer(opt, model, grown, state="carry")
    assert type(new_opt) is type(opt)
    assert new_opt.defaults == opt.defaults
    new_params = dict(grown.model.named_parameters())
    assert len(new_opt.state) == len(opt.state) == len(new_params)
    for p in new_params.values():
        for key, value in new_opt.state[p].items():
            if key != "step":
                assert value.shape == p.shape, key
    # the rule, entry by entry: out axis (rows, biases) × share^power, in axis (columns) gathered
    old = {n: old_state[p] for n, p in model.named_parameters()}
    g0, g2 = grown.mappings["0"], grown.mappings["2"]
    share0, share2 = grown.shares["0"].float(), grown.shares["2"].float()
    counts = torch.bincount(g0, minlength=8).float()
    torch.testing.assert_close(torch.zeros(8).index_add_(0, g0, share0), torch.ones(8))
    assert not torch.allclose(share0, 1 / counts[g0])  # a random split, not the equal one
    w0 = grown.model[0].weight
    powers = {"momentum_buffer": 1, "exp_avg": 1, "exp_avg_sq": 2, "max_exp_avg_sq": 2}
    for key, power in powers.items():
        if key not in old["0.weight"]:
            continue
        rows = new_opt.state[w0][key]
        expected = old["0.weight"][key][g0] * share0[:, None].float() ** power
        torch.testing.assert_close(rows, expected, rtol=1e-4, atol=1e-7)
        # the Linear between the two groups: rows follow group "2", columns group "0"
        mid = new_opt.state[grown.model[2].weight][key]
        expected_mid = old["2.weight"][key][g2][:, g0] * share2[:, None] ** power
        torch.testing.assert_close(mid, expected_mid, rtol=1e-4, atol=1e-7)
        # consumer columns of the output layer: gathered, not scaled
        head = new_opt.state[grown.model[4].weight][key]
        torch.testing.assert_close(head, old["4.weight"][key][:, g2], rtol=0, atol=0)
    if "step" in old["0.weight"]:
        torch.testing.assert_close(new_opt.state[w0]["step"], old["0.weight"]["step"])


def test_old_optimizer_and_model_untouched(
    trained: tuple[nn.Module, torch.optim.Optimizer, torch.Tensor, torch.Tensor],
) -> None:
    model, opt, x, _ = trained
    before = {k: {kk: vv.clone() for kk, vv in v.items()} for k, v in opt.state.items()}
    params = [p for g in opt.param_groups for p in g["params"]]
    grown = net2net.widen(model, x, factor=2.0)
    net2net.transfer_optimizer(opt, model, grown)
    assert [p for g in opt.param_groups for p in g["params"]] == params
    for p, st in opt.state.items():
        for k, v in st.items():
            torch.testing.assert_close(v, before[p][k], rtol=0, atol=0)


def test_zero_outgoing_modes_keep_old_units_state_exactly() -> None:
    torch.manual_seed(0)
    x, y = _problem()
    model = _mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    _train(model, opt, x, y, 20)
    for init in ("copy_zero", "random_zero"):
        grown = net2net.widen(model, x, factor=2.0, init=init)
        new_opt = net2net.transfer_optimizer(opt, model, grown)
        for name, p in grown.model.named_parameters():
            old = opt.state[dict(model.named_parameters())[name]]
            new = new_opt.state[p]
            for key in ("exp_avg", "exp_avg_sq"):
                n_rows = old[key].shape[0]
                if old[key].dim() == 2:
                    n_cols = old[key].shape[1]
                    torch.testing.assert_close(new[key][:n_rows, :n_cols], old[key])
                    if name != "4.weight":
                        assert float(new[key][n_rows:].abs().max()) == 0.0  # new rows: no state
                else:
                    torch.testing.assert_close(new[key][:n_rows], old[key])


def test_hyperparameters_and_param_groups_kept() -> None:
    torch.manual_seed(0)
    model = mlp_bn()
    x = torch.randn(8, 6)
    decay = [p for n, p in model.named_parameters() if p.dim() > 1]
    no_decay = [p for n, p in model.named_parameters() if p.dim() == 1]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": 0.05, "lr": 3e-3},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=1e-3,
        betas=(0.8, 0.95),
    )
    model(x).sum().backward()
    opt.step()
    grown = net2net.deepen(model, x, after="2")
    new_opt = net2net.transfer_optimizer(opt, model, grown)
    assert [{k: v for k, v in g.items() if k != "params"} for g in new_opt.param_groups] == [
        {k: v for k, v in g.items() if k != "params"} for g in opt.param_groups
    ]
    all_new = {id(p) for g in new_opt.param_groups for p in g["params"]}
    assert all_new == {id(p) for p in grown.model.parameters()}
    for name in grown.new_param_names:
        p = dict(grown.model.named_parameters())[name]
        assert p not in new_opt.state  # inserted layers start with no state
    assert len(new_opt.state) == len(opt.state)


def test_renamed_parameters_keep_their_state() -> None:
    torch.manual_seed(0)
    model = ResNet()
    x = torch.randn(2, 3, 8, 8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(x).sum().backward()
    opt.step()
    grown = net2net.deepen(model, x, after="layer1.0.conv1")  # not in a Sequential: wrapped
    assert grown.param_sources["layer1.0.conv1.0.weight"] == "layer1.0.conv1.weight"
    new_opt = net2net.transfer_optimizer(opt, model, grown)
    old_buf = opt.state[model.layer1[0].conv1.weight]["momentum_buffer"]
    new_p = dict(grown.model.named_parameters())["layer1.0.conv1.0.weight"]
    torch.testing.assert_close(new_opt.state[new_p]["momentum_buffer"], old_buf)


def test_carried_adam_has_no_spike_but_reset_jumps() -> None:
    """Seeded toy problem: after widening, 20 Adam steps with the carried state never rise above
    the loss before widening; with a reset state the loss visibly jumps."""
    torch.manual_seed(0)
    x, y = _problem()
    model = _mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    _train(model, opt, x, y, 150)
    before = _loss(model, x, y)
    grown = net2net.widen(model, x, factor=2.0, seed=0)
    assert _loss(grown.model, x, y) == pytest.approx(before, rel=1e-5)
    carried = net2net.transfer_optimizer(opt, model, grown)
    after_carry = _train(grown.model, carried, x, y, 21)[1:]  # losses after 1..20 steps
    assert max(after_carry) <= before

    reset_model = net2net.widen(model, x, factor=2.0, seed=0)
    reset = net2net.transfer_optimizer(opt, model, reset_model, state="reset")
    assert not reset.state
    after_reset = _train(reset_model.model, reset, x, y, 21)[1:]
    assert max(after_reset) > 1.2 * before


@pytest.mark.parametrize("init", sorted(net2net.init_modes()))
def test_auto_resets_sgd_after_a_widen_and_carries_adam(init: str) -> None:
    """The rule that bench.spike measured (docs/benchmarks.md, "Loss after growth: carried against
    reset optimizer state"): after a widen, SGD momentum is reset, Adam/AdamW state carried."""
    torch.manual_seed(0)
    x, y = _problem()
    for name, make in OPTIMIZERS.items():
        model = _mlp()
        opt = make(model.parameters())
        _train(model, opt, x, y, 5)
        grown = net2net.widen(model, x, factor=2.0, init=init, seed=1)
        auto = net2net.transfer_optimizer(opt, model, grown)
        carried = net2net.transfer_optimizer(opt, model, grown, state="carry")
        assert type(auto) is type(opt) and auto.defaults == opt.defaults
        assert len(opt.state) == len(carried.state) > 0
        if name == "sgd":
            assert not auto.state, "SGD momentum is reset after a widen"
        else:
            assert len(auto.state) == len(carried.state)
            for p in grown.model.parameters():
                for key, value in carried.state[p].items():
                    torch.testing.assert_close(auto.state[p][key], value, rtol=0, atol=0)


def test_auto_carries_sgd_after_a_deepen_and_treats_subclasses_as_sgd() -> None:
    torch.manual_seed(0)
    x, y = _problem()
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    _train(model, opt, x, y, 5)
    deeper = net2net.deepen(model, x, after="1")
    carried = net2net.transfer_optimizer(opt, model, deeper)
    assert len(carried.state) == len(opt.state)
    old_params = dict(model.named_parameters())
    new_params = dict(deeper.model.named_parameters())
    for new_name, old_name in deeper.param_sources.items():
        if old_name is not None:
            torch.testing.assert_close(
                carried.state[new_params[new_name]]["momentum_buffer"],
                opt.state[old_params[old_name]]["momentum_buffer"],
                rtol=0,
                atol=0,
            )

    class Nesterov(torch.optim.SGD):
        pass

    nesterov = Nesterov(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    _train(model, nesterov, x, y, 2)
    wider = net2net.widen(model, x, factor=2.0, init="random_zero")
    assert not net2net.transfer_optimizer(nesterov, model, wider).state


def test_unsupported_optimizer_is_refused_unless_reset() -> None:
    model = _mlp()
    x = torch.randn(4, 6)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    model(x).sum().backward()
    opt.step()
    grown = net2net.widen(model, x, factor=2.0)
    with pytest.raises(net2net.GrowthError, match="no state rule for RMSprop"):
        net2net.transfer_optimizer(opt, model, grown)
    fresh = net2net.transfer_optimizer(opt, model, grown, state="reset")
    assert type(fresh) is torch.optim.RMSprop
    assert fresh.defaults["lr"] == 1e-3


def test_wrong_model_is_refused() -> None:
    model, other = _mlp(), _mlp()
    x = torch.randn(4, 6)
    opt = torch.optim.Adam(other.parameters())
    grown = net2net.widen(model, x, factor=2.0)
    with pytest.raises(net2net.GrowthError, match="not in old_model"):
        net2net.transfer_optimizer(opt, model, grown)
    with pytest.raises(net2net.GrowthError, match="state must be one of"):
        net2net.transfer_optimizer(torch.optim.Adam(model.parameters()), model, grown, state="x")


def test_shape_mismatch_is_refused() -> None:
    torch.manual_seed(0)
    model = _mlp()
    x = torch.randn(4, 6)
    opt = torch.optim.Adam(model.parameters())
    model(x).sum().backward()
    opt.step()
    grown = net2net.widen(model, x, factor=2.0)
    twice = net2net.widen(grown.model, x, factor=2.0)
    with pytest.raises(net2net.GrowthError, match="did not start from"):
        net2net.transfer_optimizer(opt, model, twice)  # records of another starting point
