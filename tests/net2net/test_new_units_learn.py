"""New units of a widened GPT under AdamW: the default init (``random_zero``) is exact and its new
heads and MLP units diverge from their sources and learn; the paper's exact copies
(``init="net2net"``) stay copies (a measured finding, pinned here); ``copy_zero`` diverges too."""

from __future__ import annotations

import torch

import net2net

from .gpt_units import LMTask, adamw, copy_cosines, eval_loss, train
from .transformer_zoo import GPT

STEPS = 200


def _grow_and_train(
    init: str | None = None,
) -> tuple[net2net.Grown, dict[str, float], float, float]:
    """A tiny GPT trained 50 AdamW steps, widened ×2, trained 200 more with the state carried.
    Returns the growth, the cosines after training, and the loss at growth and after."""
    torch.manual_seed(0)
    task = LMTask.make(vocab=65, context=16, batch=8, seed=0)
    teacher = GPT()
    opt = adamw(teacher)
    train(teacher, opt, task, 50)
    at_growth = eval_loss(teacher, task)
    x = task.eval_x[:4]
    grown = (
        net2net.widen(teacher, x, factor=2)
        if init is None
        else net2net.widen(teacher, x, factor=2, init=init)
    )  # no init argument: the default
    with torch.no_grad():
        scale = float(teacher.eval()(x).abs().max())
    assert grown.exact and grown.max_abs_error <= 1e-5 * scale
    old = {name: old for name, (old, _) in grown.widths.items()}
    train(grown.model, net2net.transfer_optimizer(opt, teacher, grown), task, STEPS)
    return grown, copy_cosines(grown, old), at_growth, eval_loss(grown.model, task)


def test_default_init_is_exact_and_its_new_units_and_heads_diverge_under_adamw() -> None:
    grown, cosines, at_growth, after = _grow_and_train()
    assert grown.record["init"] == "random_zero"  # the default
    assert set(cosines) == {"stream", "heads", "mlp"}
    for kind in ("heads", "mlp"):
        assert cosines[kind] < 0.99, kind  # no new head or MLP unit is still a copy
    # the stream's new channels start as copies (the LayerNorm over the stream makes random_zero
    # copy them, with zero outgoing weights) and move away from their sources too
    assert cosines["stream"] < 0.99
    assert after < 0.9 * at_growth  # the loss falls


def test_the_papers_copies_are_exact_but_stay_copies_under_adamw() -> None:
    grown, cosines, at_growth, after = _grow_and_train("net2net")
    assert grown.record["init"] == "net2net"
    assert set(cosines) == {"stream", "heads", "mlp"}
    for kind, cos in cosines.items():
        assert cos > 0.999, kind  # every new unit and head is still a copy of its source
    assert after < 0.9 * at_growth  # the loss falls all the same


def test_copy_zero_is_exact_and_its_new_units_diverge() -> None:
    _, cosines, at_growth, after = _grow_and_train("copy_zero")
    assert set(cosines) == {"stream", "heads", "mlp"}
    for kind, cos in cosines.items():
        assert cos < 0.99, kind  # no new unit or head is still a copy of its source
    assert after < 0.9 * at_growth
