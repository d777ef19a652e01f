"""Carry optimizer state over to a grown model.

The rule follows the gradients. At the grown point a replicated unit j with source i and outgoing
share s_j relates to the teacher as follows (h: activations, δ: backpropagated error):

* incoming weights, biases and per-channel parameters of j (the *out* axis of its producers and
  norms): ∂L/∂U_j = s_j · ∂L/∂W_i, because δ_j = s_j · δ_i;
* outgoing weights of j (the *in* axis of its consumers): ∂L/∂U_{·j} = ∂L/∂W_{·i}, because
  h_j = h_i.

A state tensor that is linear in the gradient (SGD momentum, Adam's exp_avg) is therefore gathered
with the mapping and multiplied by s_j along out axes; one that is quadratic (exp_avg_sq,
max_exp_avg_sq) by s_j². That is the state the student would hold had it followed the teacher's
trajectory, so Adam's normalised steps continue unchanged. Zero-outgoing modes have s = 1 for old
units and s = 0 for new ones: old units keep their state exactly, new units' rows start at zero.
Scalars (``step``) are copied. Layers inserted by deepen start with no state.

Whether ``state="auto"`` carries or resets is measured, not derived (``bench.spike``; the section
"Loss after growth: carried against reset optimizer state" of ``docs/benchmarks.md``): after a
widen, Adam's and AdamW's carried moments give the lower loss spike with every init mode, while
SGD's momentum gives the lower spike reset in four of the five modes (the fifth is a tie). So
``"auto"`` resets SGD after a widen and otherwise follows the init mode's rule (carry).
"""

from __future__ import annotations

import inspect
from typing import Any, Literal

import torch
from torch import nn

from ._errors import GrowthError
from ._mapping import AxisMap, gather_in
from ._modes import INIT_MODES
from ._types import Grown, ParamPlan

# state key -> power of the gradient it is proportional to
STATE_RULES: dict[type[torch.optim.Optimizer], dict[str, int]] = {
    torch.optim.SGD: {"momentum_buffer": 1},
    torch.optim.Adam: {"exp_avg": 1, "exp_avg_sq": 2, "max_exp_avg_sq": 2},
    torch.optim.AdamW: {"exp_avg": 1, "exp_avg_sq": 2, "max_exp_avg_sq": 2},
}
STATES = ("auto", "carry", "reset")

# What state="auto" does after a widen for these optimizers, whatever the init mode (module
# docstring); any other optimizer follows the init mode's rule.
AUTO_AFTER_WIDEN: dict[type[torch.optim.Optimizer], Literal["carry", "reset"]] = {
    torch.optim.SGD: "reset",
}


def _rules(optimizer: torch.optim.Optimizer) -> dict[str, int] | None:
    for cls in type(optimizer).__mro__:
        if cls in STATE_RULES:
            return STATE_RULES[cls]
    return None


def state_policy(optimizer: torch.optim.Optimizer, grown: Grown) -> Literal["carry", "reset"]:
    """What ``state="auto"`` does for ``optimizer`` after ``grown``: after a widen, the measured
    rule of the optimizer (SGD: reset) or else of the init mode; after a deepen, carry."""
    init = grown.init
    if grown.op != "widen" or init not in INIT_MODES or not grown.widths:
        return "carry"
    for cls in type(optimizer).__mro__:
        if cls in AUTO_AFTER_WIDEN:
            return AUTO_AFTER_WIDEN[cls]
    return INIT_MODES[init].optimizer


def remap_state(value: torch.Tensor, plan: ParamPlan, power: int) -> torch.Tensor:
    """One state tensor of an old parameter, carried onto the grown parameter (rule above)."""
    t = value.detach()
    axes = plan.axes
    if axes is None:
        return t.clone()
    o = plan.out if axes.out is not None else None
    i = plan.in_ if axes.in_ is not None else None
    if o is None and i is None:
        return t.clone()
    dev = t.device
    if o is not None and i is not None and plan.in_groups == 1 and (axes.out, axes.in_) == (0, 1):
        # Two index_selects: contiguous copies, about 2.5x faster than one 2-D gather on CPU.
        t = t.index_select(1, i.index.to(dev)).index_select(0, o.index.to(dev))
    else:
        if i is not None:
            assert axes.in_ is not None
            t = gather_in(t, axes.in_, i, plan.in_groups, None)
        if o is not None:
            assert axes.out is not None
            t = t.index_select(axes.out, o.index.to(dev))
    if o is not None and axes.out is not None:
        amap: AxisMap = o
        scale = amap.share.to(device=dev, dtype=t.dtype) ** power
        shape = [1] * t.dim()
        shape[axes.out] = -1
        t.mul_(scale.view(shape))
    return t.contiguous()


def transfer_optimizer(
    optimizer: torch.optim.Optimizer,
    old_model: nn.Module,
    grown: Grown,
    *,
    state: str = "auto",
) -> torch.optim.Optimizer:
    """A new optimizer of the same class and hyper-parameters (param groups, lr, betas, weight
    decay, ...) over ``grown.model``'s parameters, with the state carried over.

    SGD momentum and Adam/AdamW moments follow the mappings, scaled as the gradients of
    replicated parameters relate to the originals (module docstring and ``docs/net2net.md``):
    linear states × s along out axes, quadratic states × s². Parameters of inserted layers start
    with no state and join the param group of a nearby old parameter. ``state="auto"`` applies
    the measured rule: after a widen, SGD starts with no state (its momentum reset) and Adam/AdamW
    carry theirs (``net2net.init_modes()[init]["optimizer"]``); after a deepen the state is
    carried. ``"carry"`` and ``"reset"`` force either. The old optimizer is left untouched.
    """
    if state not in STATES:
        raise GrowthError(f"transfer_optimizer: state must be one of {STATES}, got {state!r}")
    policy = state_policy(optimizer, grown) if state == "auto" else state
    rules = _rules(optimizer)
    if policy == "carry" and rules is None:
        raise GrowthError(
            f"transfer_optimizer: no state rule for {type(optimizer).__name__}; supported are "
            f"{', '.join(c.__name__ for c in STATE_RULES)} (or pass state='reset' to start the "
            "new optimizer with the same hyper-parameters and no state)"
        )
    old_names = {id(p): n for n, p in old_model.named_parameters()}
    by_old: dict[str, list[str]] = {}
    for new_name, old_name in grown.param_sources.items():
        if old_name is not None:
            by_old.setdefault(old_name, []).append(new_name)
    new_opt = _construct(optimizer, _param_groups(optimizer, grown, old_names, by_old))
    if policy == "carry":
        assert rules is not None
        _carry_state(
            optimizer,
            new_opt,
            grown,
            old_model=old_model,
            rules=rules,
            old_names=old_names,
            by_old=by_old,
        )
        if grown.op == "add_classes":
            _start_like_rows(optimizer, new_opt, grown, rules=rules, old_model=old_model)
    return new_opt


def _start_like_rows(
    optimizer: torch.optim.Optimizer,
    new_opt: torch.optim.Optimizer,
    grown: Grown,
    *,
    rules: dict[str, int],
    old_model: nn.Module,
) -> None:
    """add_classes: the new rows start as new rows of the old head would, had it been one
    matrix: zero moments and the old rows' step count (so Adam's bias correction does not
    treat them as fresh). Measured on digits (tests/net2net/test_add_classes.py), the new classes
    learn faster so than with no state."""
    old_params = dict(old_model.named_parameters())
    new_params = dict(grown.model.named_parameters())
    for name in grown.new_param_names:
        plan = grown.plans.get(name)
        template = old_params.get(plan.template or "") if plan is not None else None
        old_state = optimizer.state.get(template) if template is not None else None
        if not old_state:
            continue
        param = new_params[name]
        state: dict[str, Any] = {}
        for key, value in old_state.items():
            if key in rules:
                state[key] = torch.zeros_like(param)
            elif isinstance(value, torch.Tensor) and value.dim() == 0:
                state[key] = value.clone()
            elif not isinstance(value, torch.Tensor):
                state[key] = value
        new_opt.state[param] = state


def _param_groups(
    optimizer: torch.optim.Optimizer,
    grown: Grown,
    old_names: dict[int, str],
    by_old: dict[str, list[str]],
) -> list[dict[str, Any]]:
    """The optimizer's param groups over the grown parameters: each old parameter's successors
    in its group, each new parameter in the group of the old one it was modelled on (or the
    first)."""
    new_params = dict(grown.model.named_parameters())
    groups: list[dict[str, Any]] = []
    group_of_old: dict[str, int] = {}
    for gi, group in enumerate(optimizer.param_groups):
        params: list[torch.Tensor] = []
        for p in group["params"]:
            name = old_names.get(id(p))
            if name is None:
                raise GrowthError(
                    "transfer_optimizer: the optimizer holds a parameter that is not in "
                    "old_model; pass the model the optimizer was built for (the bare module, "
                    "not a DDP wrapper of another copy)"
                )
            group_of_old[name] = gi
            params += [new_params[n] for n in by_old.get(name, [])]
        groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": params})
    for name in grown.new_param_names:
        plan = grown.plans.get(name)
        template = plan.template if plan is not None else None
        gi = group_of_old.get(template or "", 0)
        groups[gi]["params"].append(new_params[name])
    return groups


def _carry_state(
    optimizer: torch.optim.Optimizer,
    new_opt: torch.optim.Optimizer,
    grown: Grown,
    *,
    old_model: nn.Module,
    rules: dict[str, int],
    old_names: dict[int, str],
    by_old: dict[str, list[str]],
) -> None:
    """Put each old parameter's state, remapped, on its successors in ``new_opt``."""
    old_params = dict(old_model.named_parameters())
    new_params = dict(grown.model.named_parameters())
    for old_p, st in optimizer.state.items():
        old_name = old_names.get(id(old_p))
        if old_name is None:
            continue
        for new_name in by_old.get(old_name, []):
            plan = grown.plans.get(new_name, ParamPlan(old_name))
            _check_shapes(old_params[old_name], plan, old_name)
            new_opt.state[new_params[new_name]] = _carried(st, old_p, plan, rules)


def _carried(
    st: dict[str, Any], old_p: torch.Tensor, plan: ParamPlan, rules: dict[str, int]
) -> dict[str, Any]:
    """One parameter's state on a successor: the gradient-shaped tensors of the rules remapped,
    other tensors copied, scalars kept."""
    carried: dict[str, Any] = {}
    for key, value in st.items():
        if isinstance(value, torch.Tensor) and key in rules and value.shape == old_p.shape:
            carried[key] = remap_state(value, plan, rules[key])
        elif isinstance(value, torch.Tensor):
            carried[key] = value.clone()
        else:
            carried[key] = value
    return carried


def _construct(
    optimizer: torch.optim.Optimizer, groups: list[dict[str, Any]]
) -> torch.optim.Optimizer:
    """Same class and defaults; every group carries its own hyper-parameters."""
    accepted = inspect.signature(type(optimizer).__init__).parameters
    kwargs = {k: v for k, v in optimizer.defaults.items() if k in accepted}
    new_opt = type(optimizer)(groups, **kwargs)
    new_opt.defaults = dict(optimizer.defaults)
    return new_opt


def _check_shapes(old: torch.Tensor, plan: ParamPlan, name: str) -> None:
    axes = plan.axes
    if axes is None:
        return
    for axis, amap in ((axes.out, plan.out), (axes.in_, plan.in_)):
        if axis is None or amap is None:
            continue
        size = old.shape[axis] * (plan.in_groups if axis == axes.in_ else 1)
        if size != amap.old:
            raise GrowthError(
                f"transfer_optimizer: parameter {name!r} of old_model has shape "
                f"{tuple(old.shape)}, which this growth did not start from; pass the model that "
                "was grown"
            )
