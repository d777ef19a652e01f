"""Net2DeeperNet: insert an identity-initialised layer (or a zero-initialised residual block)."""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import fx, nn

from ._deepen_block import (
    BLOCK_STYLES,
    auto_style,
    block_count,
    block_sources,
    build_copy,
    insert_block,
    plan_block,
    update_layer_counts,
)
from ._errors import GrowthError
from ._graph import Analysis, analyse, as_inputs
from ._handlers import handler_for
from ._mapping import derive_seed
from ._modules import Residual
from ._types import Grown, ParamPlan
from ._widen import RECORD_FORMAT, copy_model, input_spec, verify

STYLES = ("identity", "residual")  # one inserted layer; BLOCK_STYLES copy a whole block
AUTO = "auto"  # "block" after a block that style="block" deepens exactly, else "identity"
KERNEL = 3  # kernel size of inserted convs: an identity filter has its single 1 at the centre tap


@dataclass
class DeepenPlan:
    after: str
    kind: str  # "linear", "conv1d", "conv2d", "conv3d"
    width: int
    channel_dim: int
    activation: nn.Module | None  # ``after`` itself when it is an activation
    body_activation: nn.Module | None  # the activation inside a residual body
    batch_norm: nn.Module | None  # the model's BatchNorm to mirror, or None
    identity_exact: bool
    identity_refusal: str | None
    template: str | None  # an old parameter whose optimizer param group new parameters join


def _out_node(an: Analysis, after: str, op: str) -> fx.Node:
    """The graph node holding the output of module ``after`` (called exactly once)."""
    leaf = [n for n in an.gm.graph.nodes if n.op == "call_module" and n.target == after]
    if leaf:
        if len(leaf) > 1:
            raise GrowthError(
                f"{op}: module {after!r} is called {len(leaf)} times in the forward, so 'after "
                "it' is ambiguous; deepen after a module that is called once"
            )
        node: fx.Node = leaf[0]
        return node
    keys: set[str] = set()
    inside: dict[str, list[fx.Node]] = {}
    for n in an.gm.graph.nodes:
        for key, value in (n.meta.get("nn_module_stack") or {}).items():
            if value[0] == after:
                keys.add(key)
                inside.setdefault(key, []).append(n)
    if not keys:
        raise GrowthError(
            f"{op}: module {after!r} does not appear in the traced forward (it is unused, or "
            "inside a layer net2net treats as a leaf); pick one of the modules listed by "
            "net2net.summarize(...)['deepen_candidates']"
        )
    if len(keys) > 1:
        raise GrowthError(
            f"{op}: module {after!r} is called {len(keys)} times in the forward, so 'after it' is "
            "ambiguous; deepen after a module that is called once"
        )
    members = set(inside[keys.pop()])
    outs = [n for n in members if any(u not in members for u in n.users)]
    if len(outs) != 1:
        raise GrowthError(
            f"{op}: module {after!r} does not return a single tensor; deepen after a module "
            "that does"
        )
    out: fx.Node = outs[0]
    return out


def plan_deepen(an: Analysis, after: str, op: str = "deepen") -> DeepenPlan:
    modules = dict(an.model.named_modules())
    if not isinstance(after, str) or after == "" or after not in modules:
        raise GrowthError(
            f"{op}: no module named {after!r} (the root cannot be deepened after either); pick "
            "one of net2net.summarize(...)['deepen_candidates']"
        )
    node = _out_node(an, after, op)
    shape = an.state.shapes.get(node)
    if shape is None or len(shape) < 2:
        raise GrowthError(
            f"{op}: module {after!r} does not output a batched tensor (shape {shape}); deepen "
            "after a layer with a (batch, features) or (batch, channels, ...) output"
        )
    kind, ch = _kind_and_channel_dim(an, node, shape, after, op)
    module = modules[after]
    handler = handler_for(module) if node.op == "call_module" else None
    activation: nn.Module | None = None
    refusal: str | None = None
    if handler is not None and handler.activation:
        activation = body_activation = module
        refusal = None if handler.idempotent else _identity_refusal(module, after, op)
    else:
        body_activation = _downstream_activation(an, node)
    bn: nn.Module | None = None
    if activation is not None and (kind != "linear" or len(shape) == 2):
        bn = _feeding_batch_norm(an, node, shape)
    return DeepenPlan(
        after=after,
        kind=kind,
        width=int(shape[ch]),
        channel_dim=ch,
        activation=activation,
        body_activation=body_activation,
        batch_norm=bn,
        identity_exact=refusal is None,
        identity_refusal=refusal,
        template=_template(an, node),
    )


def _kind_and_channel_dim(
    an: Analysis, node: fx.Node, shape: tuple[int, ...], after: str, op: str
) -> tuple[str, int]:
    """The layer that fits the output (``"linear"`` or ``"conv{n}d"``) and its channel dim."""
    rank = len(shape)
    layout = an.state.layouts.get(node, {})
    if rank >= 3 and 1 in layout and rank <= 5:
        return f"conv{rank - 2}d", 1
    if rank == 2 or (rank - 1) in layout:
        return "linear", rank - 1
    if 3 <= rank <= 5:
        return f"conv{rank - 2}d", 1
    raise GrowthError(f"{op}: cannot tell the channel dim of {after!r}'s output {shape}")


def _identity_refusal(activation: nn.Module, after: str, op: str) -> str:
    """Why style='identity' is not exact after an activation that is not idempotent."""
    name = type(activation).__name__
    return (
        f"{op}: style='identity' after {after!r} ({name}) is not exact, because "
        f"{name}({name}(v)) != {name}(v); use style='residual' (x + f(x) with f's last "
        "layer at zero is exact for any activation)"
    )


def _feeding_batch_norm(an: Analysis, node: fx.Node, shape: tuple[int, ...]) -> nn.Module | None:
    """The BatchNorm module that feeds the activation ``node`` directly, at the same shape."""
    src = node.args[0] if node.args else None
    if isinstance(src, fx.Node) and src.op == "call_module":
        prev = an.gm.get_submodule(str(src.target))
        h = handler_for(prev)
        if h is not None and h.batch_norm and an.state.shapes.get(src) == shape:
            return prev
    return None


def _downstream_activation(an: Analysis, node: fx.Node) -> nn.Module | None:
    seen = False
    for n in an.gm.graph.nodes:
        if n is node:
            seen = True
            continue
        if seen and n.op == "call_module":
            m = an.gm.get_submodule(str(n.target))
            h = handler_for(m)
            if h is not None and h.activation:
                return m
    return None


def _template(an: Analysis, node: fx.Node) -> str | None:
    """A parameter near the insertion point: new parameters join its optimizer param group."""
    best: str | None = None
    for n in an.gm.graph.nodes:
        if n.op == "call_module":
            m = an.gm.get_submodule(str(n.target))
            for pname, _ in m.named_parameters(recurse=False):
                if pname == "weight" or best is None:
                    best = f"{n.target}.{pname}"
        if n is node:
            break
    if best is None:
        best = next((name for name, _ in an.model.named_parameters()), None)
    return best


def build_block(plan: DeepenPlan, style: str, device: torch.device | str) -> nn.Module:
    """The inserted block, with parameters allocated (on ``device``) but not yet initialised."""
    w = plan.width
    with torch.device(device):
        if plan.kind == "linear":
            layer: nn.Module = nn.Linear(w, w)
            last: nn.Module = nn.Linear(w, w)
        else:
            conv = {"conv1d": nn.Conv1d, "conv2d": nn.Conv2d, "conv3d": nn.Conv3d}[plan.kind]
            layer = conv(w, w, KERNEL, padding=KERNEL // 2)
            last = conv(w, w, KERNEL, padding=KERNEL // 2)
        parts: list[nn.Module] = [layer]
        if plan.batch_norm is not None:
            bn = cast(nn.modules.batchnorm._BatchNorm, plan.batch_norm)
            parts.append(type(bn)(w, eps=bn.eps, momentum=bn.momentum))
        if style == "identity":
            if plan.activation is not None:
                parts.append(_copy_activation(plan.activation))
            return nn.Sequential(*parts)
        act = plan.body_activation
        act = _copy_activation(act) if act is not None else nn.ReLU()
        return Residual(nn.Sequential(*parts, act, last))


def _copy_activation(act: nn.Module) -> nn.Module:
    out = copy.deepcopy(act)
    if hasattr(out, "inplace"):
        setattr(out, "inplace", False)  # noqa: B010  the inserted block must not overwrite its input
    return out


def _identity_(module: nn.Module, kind: str) -> None:
    layer = cast(nn.Linear | nn.modules.conv._ConvNd, module)
    w = layer.weight
    with torch.no_grad():
        w.zero_()
        idx = torch.arange(w.shape[0])
        if kind == "linear":
            w[idx, idx] = 1.0
        else:
            centre = (idx, idx) + (KERNEL // 2,) * (w.dim() - 2)
            w[centre] = 1.0
        if layer.bias is not None:
            layer.bias.zero_()


def _calibrate_(
    module: nn.Module,
    model: nn.Module,
    after: str,
    batches: list[tuple[torch.Tensor, ...]],
    ch: int,
) -> None:
    """Make the inserted BatchNorm undo its own normalisation (paper, 2.4).

    Its scale and shift are the statistics of the activations at ``after`` as training sees them
    (train mode, batch statistics, on ``batches``): weight = sqrt(var + eps), bias = mean, so a
    training step starts where the teacher stood. Its running statistics are set to match
    (running_mean = bias, running_var = weight² − eps), which makes eval mode exact for any data.
    ``model`` is a private copy: its buffers are restored afterwards and the RNG is forked.
    """
    total: torch.Tensor | None = None
    sq: torch.Tensor | None = None
    count = 0

    def hook(_m: nn.Module, _i: Any, out: Any) -> None:
        nonlocal total, sq, count
        h = out.detach().double().movedim(ch, -1).reshape(-1, out.shape[ch])
        s, q = h.sum(0), (h * h).sum(0)
        total = s if total is None else total + s
        sq = q if sq is None else sq + q
        count += h.shape[0]

    saved = {name: b.detach().clone() for name, b in model.named_buffers()}
    flags = [(m, m.training) for m in model.modules()]
    handle = model.get_submodule(after).register_forward_hook(hook)
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            model.train()
            for batch in batches:
                model(*batch)
    finally:
        handle.remove()
        for m, flag in flags:
            m.training = flag
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(saved[name])
    assert total is not None and sq is not None and count > 0
    mean = total / count
    var = (sq / count - mean * mean).clamp_min(0.0)
    bn = cast(nn.modules.batchnorm._BatchNorm, module)
    assert bn.running_mean is not None and bn.running_var is not None
    with torch.no_grad():
        weight = (var + bn.eps).sqrt()
        bn.weight.copy_(weight)
        bn.bias.copy_(mean)
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(weight.to(bn.running_var.dtype) ** 2 - bn.eps)


def _batches(calibration: Any, inputs: tuple[torch.Tensor, ...]) -> list[tuple[torch.Tensor, ...]]:
    if calibration is None:
        return [inputs]
    if isinstance(calibration, torch.Tensor) or (
        isinstance(calibration, tuple) and all(isinstance(t, torch.Tensor) for t in calibration)
    ):
        return [as_inputs(calibration)]
    if isinstance(calibration, Iterable):
        out = [as_inputs(b) for b in calibration]
        if out:
            return out
    raise GrowthError(
        "deepen: calibration must be a batch (a tensor or a tuple of tensors) or a non-empty "
        "list/iterable of batches"
    )


def _reference(
    model: nn.Module, inputs: tuple[torch.Tensor, ...]
) -> tuple[torch.device, torch.dtype]:
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return inputs[0].device, torch.get_default_dtype()


def insert_after(root: nn.Module, after: str, block: nn.Module) -> tuple[str, dict[str, str]]:
    """Put ``block`` right after module ``after``. Inside an ``nn.Sequential`` it becomes a new
    sibling named ``<name>_deep`` (no other name changes); elsewhere ``after`` is replaced by
    ``Sequential(after, block)``, so its parameters move under ``<after>.0``."""
    parent_name, _, key = after.rpartition(".")
    parent = root.get_submodule(parent_name)
    if type(parent) is nn.Sequential:
        new_key = f"{key}_deep"
        k = 2
        while new_key in parent._modules:
            new_key = f"{key}_deep{k}"
            k += 1
        items = list(parent._modules.items())
        pos = [name for name, _ in items].index(key)
        parent._modules.clear()
        parent._modules.update(
            OrderedDict([*items[: pos + 1], (new_key, block), *items[pos + 1 :]])
        )
        return (f"{parent_name}.{new_key}" if parent_name else new_key), {}
    original = parent.get_submodule(key)
    setattr(parent, key, nn.Sequential(OrderedDict([("0", original), ("1", block)])))
    return f"{after}.1", {after: f"{after}.0"}


def deepen(
    model: nn.Module,
    example_input: Any,
    *,
    after: str,
    style: str = AUTO,
    calibration: Any = None,
    seed: int = 0,
) -> Grown:
    """Net2DeeperNet: insert a layer (or a whole block) right after module ``after``.

    ``style="auto"`` (the default): ``"block"`` when ``after`` names a block of an
    ``nn.ModuleList`` or ``nn.Sequential`` that style="block" deepens exactly (a pre-norm
    residual block such as ``"transformer.h.1"``), ``"identity"`` everywhere else. The record
    stores the style it resolved to, so replay does the same.

    ``style="identity"``: a Linear with an identity matrix (a conv with an identity kernel: a
    single 1 at the centre tap k//2, padding k//2), followed by ``after``'s activation when
    ``after`` is an idempotent one (ReLU after ReLU: ``relu(I·relu(v)) = relu(v)``). When
    ``after`` is an activation fed by BatchNorm, a BatchNorm is inserted too and calibrated so that
    it undoes its own normalisation: running mean/var from ``calibration`` (a batch, or a list of
    batches; default ``example_input``), weight = sqrt(var + eps), bias = mean (paper, 2.4).
    ``style="residual"``: ``x + f(x)`` with f = layer → [BatchNorm] → activation → layer, the last
    layer zero-initialised: exact after any activation.
    ``style="block"``: ``after`` names a block of an ``nn.ModuleList`` or ``nn.Sequential`` (a
    transformer block, ``"transformer.h.1"``); a copy of it is inserted after it with the last
    layer of each residual branch (the output projections ``attn.c_proj``, ``mlp.c_proj``) at
    zero, which makes a pre-norm block ``x + f(norm(x))`` exactly the identity (a post-norm block
    is refused). A ModuleList renumbers the blocks after it (``record["renamed"]``); counts such
    as ``config.n_layer`` grow by one (``record["attributes"]``). ``style="stack"``: an unchanged
    copy of the block, *not* function-preserving (``Grown.exact`` and ``record["exact"]`` are
    False; ``max_abs_error`` reports the change). The input model is left untouched.
    """
    return deepen_impl(
        model,
        example_input,
        after=after,
        style=style,
        calibration=calibration,
        seed=seed,
        check=True,
    )


def _check_style(style: str) -> None:
    if style not in (AUTO, *STYLES, *BLOCK_STYLES):
        raise GrowthError(
            f"deepen: unknown style {style!r}; choose 'auto', 'identity', 'residual', 'block' or "
            "'stack'"
        )


def deepen_impl(
    model: nn.Module,
    example_input: Any,
    *,
    after: str,
    style: str,
    calibration: Any,
    seed: int,
    check: bool,
    expect_width: int | None = None,
) -> Grown:
    _check_style(style)
    inputs = as_inputs(example_input)
    an = analyse(model, inputs, "deepen")
    plan = plan_deepen(an, after)
    if expect_width is not None and plan.width != expect_width:
        raise GrowthError(
            f"deepen: the record expects width {expect_width} after {after!r}, but the model has "
            f"{plan.width}; replay the records in order on the base model they were made from"
        )
    if style == AUTO:
        style = auto_style(an, after)
    if style in BLOCK_STYLES:
        return _deepen_by_block(an, model, inputs, plan, style=style, seed=seed, check=check)
    if style == "identity" and plan.identity_refusal is not None:
        raise GrowthError(plan.identity_refusal)
    batches = _batches(calibration, inputs)
    device, dtype = _reference(model, inputs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "deepen", after))
        block = build_block(plan, style, "cpu")
    student = copy_model(model, "deepen")
    _initialise_block_(block, plan, style, student, batches)
    block = block.to(device=device, dtype=dtype)
    inserted, renamed = insert_after(student, after, block)
    err = verify("deepen", an.output, student, inputs) if check else float("nan")
    sources, plans = _param_sources(student, inserted, renamed, plan.template)
    record: dict[str, Any] = {
        "op": "deepen",
        "format": RECORD_FORMAT,
        "input": input_spec(inputs),
        "after": after,
        "style": style,
        "seed": int(seed),
        "kind": plan.kind,
        "width": plan.width,
        "batch_norm": plan.batch_norm is not None,
        "inserted": inserted,
        "renamed": renamed,
    }
    return Grown(
        model=student,
        record=record,
        max_abs_error=err,
        exact=True,
        new_param_names=[name for name, old in sources.items() if old is None],
        param_sources=sources,
        plans=plans,
    )


def _deepen_by_block(
    an: Analysis,
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    layer: DeepenPlan,
    *,
    style: str,
    seed: int,
    check: bool,
) -> Grown:
    """style="block" or "stack": a copy of the block ``layer.after`` inserted after it (see
    ``_deepen_block``)."""
    plan = plan_block(an, layer.after)
    if style == "block" and plan.refusal is not None:
        raise GrowthError(plan.refusal)
    student = copy_model(model, "deepen")
    count = block_count(student, plan)
    block = build_copy(student, plan, style)
    inserted, renamed = insert_block(student, plan, block)
    attributes = update_layer_counts(student, plan, count)
    err = verify("deepen", an.output, student, inputs) if check else float("nan")
    sources, plans = block_sources(student, plan.after, inserted, renamed)
    record: dict[str, Any] = {
        "op": "deepen",
        "format": RECORD_FORMAT,
        "input": input_spec(inputs),
        "after": plan.after,
        "style": style,
        "seed": int(seed),
        "kind": "block",
        "width": layer.width,
        "batch_norm": False,
        "inserted": inserted,
        "renamed": renamed,
        "exact": style == "block",
        "zeroed": [f"{inserted}.{name}" for name in plan.zeroed] if style == "block" else [],
        "attributes": attributes,
    }
    return Grown(
        model=student,
        record=record,
        max_abs_error=err,
        exact=style == "block",
        new_param_names=[name for name, old in sources.items() if old is None],
        param_sources=sources,
        plans=plans,
    )


def _initialise_block_(
    block: nn.Module,
    plan: DeepenPlan,
    style: str,
    student: nn.Module,
    batches: list[tuple[torch.Tensor, ...]],
) -> None:
    """Make the new block compute the identity: an identity layer (its BatchNorm calibrated on
    ``student``), or a residual branch whose last layer is zero."""
    if style == "identity":
        assert isinstance(block, nn.Sequential)
        _identity_(block[0], plan.kind)
        if plan.batch_norm is not None:
            _calibrate_(block[1], student, plan.after, batches, plan.channel_dim)
        return
    assert isinstance(block, Residual)
    last = cast(nn.Linear | nn.modules.conv._ConvNd, cast(nn.Sequential, block.body)[-1])
    with torch.no_grad():
        last.weight.zero_()
        if last.bias is not None:
            last.bias.zero_()


def _param_sources(
    student: nn.Module, inserted: str, renamed: dict[str, str], template: str | None
) -> tuple[dict[str, str | None], dict[str, ParamPlan]]:
    """Each parameter's old name (None: in the inserted block), and the plans of the inserted
    and renamed ones."""
    sources: dict[str, str | None] = {}
    plans: dict[str, ParamPlan] = {}
    for name, _ in student.named_parameters():
        if name.startswith(inserted + "."):
            sources[name] = None
            plans[name] = ParamPlan(None, template=template)
            continue
        old = name
        for old_prefix, new_prefix in renamed.items():
            if name.startswith(new_prefix + "."):
                old = old_prefix + name[len(new_prefix) :]
        sources[name] = old
        if old != name:
            plans[name] = ParamPlan(old)
    return sources, plans
