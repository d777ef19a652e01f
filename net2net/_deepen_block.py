"""Deepen a stack of residual blocks (a transformer) by a whole block.

``style="block"``: a copy of the named block with the last layer of every residual branch
(attention's and the MLP's output projections) at zero. For a pre-norm block,
``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))``, every branch then adds zero and the block is
exactly the identity; the zeroed layers get a gradient at the first step (their inputs are not
zero), so the block learns. A post-norm block, ``ln(x + f(x))``, is refused: the norm still
applies to x. ``style="stack"``: an unchanged copy of the named block (stacking, as G_stack
does), which is *not* function-preserving; ``Grown.exact`` is False and the record says so.
"""

from __future__ import annotations

import copy
import dataclasses
import operator
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import fx, nn
from torch.nn import functional as F  # noqa: N812

from ._errors import GrowthError
from ._graph import Analysis
from ._types import ParamPlan

BLOCK_STYLES = ("block", "stack")
# attributes that count the blocks of a stack (nanoGPT: config.n_layer)
LAYER_COUNTS = ("n_layer", "n_layers", "num_layers", "num_hidden_layers")
_ADDS: tuple[Any, ...] = (operator.add, operator.iadd, torch.add, "add", "add_")
_PASS_METHODS = ("contiguous", "clone")
_PASS_MODULES: tuple[type[nn.Module], ...] = (nn.modules.dropout._DropoutNd, nn.Identity)
# layers whose output is zero when their weight and bias are zero
_ZEROABLE: tuple[type[nn.Module], ...] = (nn.Linear, nn.modules.conv._ConvNd)
# leaf modules returning a tuple whose first output is zero when this inner layer is zero
_ZERO_INSIDE: dict[type[nn.Module], str] = {nn.MultiheadAttention: "out_proj"}


@dataclass
class BlockPlan:
    after: str
    parent: str  # the container's name
    key: str  # the block's name in it
    zeroed: list[str]  # the branches' last layers, relative to the block
    refusal: str | None  # why style="block" is not exact here


def plan_block(an: Analysis, after: str, op: str = "deepen") -> BlockPlan:
    """Where the block sits, and which layers end its residual branches."""
    parent_name, _, key = after.rpartition(".")
    modules = dict(an.model.named_modules())
    parent = modules.get(parent_name) if after in modules else None
    if parent is None or type(parent) not in (nn.ModuleList, nn.Sequential):
        kind = type(parent).__name__ if parent is not None else "no container"
        raise GrowthError(
            f"{op}: style='block' and 'stack' insert a copy of a block of an nn.ModuleList or "
            f"nn.Sequential, but {after!r} is in {kind}; name an item of the block list (e.g. "
            "'transformer.h.1')"
        )
    if any(n.op == "call_module" and n.target == after for n in an.gm.graph.nodes):
        raise GrowthError(
            f"{op}: {after!r} is a single layer, not a block with traced code; style='block' "
            "and 'stack' copy a block such as a transformer block (use 'identity' or "
            "'residual' to insert one layer)"
        )
    members = _members(an, after)
    if not members:
        raise GrowthError(
            f"{op}: block {after!r} does not appear in the traced forward as traced code (it is "
            "unused, or a leaf net2net does not trace through); deepen after a block whose "
            "forward is traced"
        )
    zeroed, refusal = _branch_ends(an, members, after, op)
    return BlockPlan(after, parent_name, key, zeroed, refusal)


def auto_style(an: Analysis, after: str) -> str:
    """``deepen(style="auto")``: ``"block"`` where ``after`` names a block of an
    ``nn.ModuleList``/``nn.Sequential`` that style="block" deepens exactly (a pre-norm residual
    block, ``x + f(norm(x))``), else ``"identity"`` (one inserted layer, as before)."""
    try:
        plan = plan_block(an, after)
    except GrowthError:
        return "identity"
    return "block" if plan.refusal is None else "identity"


def _members(an: Analysis, after: str) -> list[fx.Node]:
    out = []
    for n in an.gm.graph.nodes:
        stack = n.meta.get("nn_module_stack") or {}
        if any(value[0] == after for value in stack.values()):
            out.append(n)
    return out


def _is_add(node: Any) -> bool:
    if not isinstance(node, fx.Node) or node.op not in ("call_function", "call_method"):
        return False
    return node.target in _ADDS and not node.kwargs and len(node.args) == 2


def _branch_ends(
    an: Analysis, members: list[fx.Node], after: str, op: str
) -> tuple[list[str], str | None]:
    """Walk back from the block's output along the residual adds; each add's other operand is a
    branch, which must end in a layer that can be zeroed (through dropout and the like)."""
    inside = set(members)
    outs = [n for n in members if any(u not in inside for u in n.users)]
    if len(outs) != 1:
        return [], f"{op}: block {after!r} does not return a single tensor"

    def on_stream(n: Any) -> bool:
        return isinstance(n, fx.Node) and (
            n not in inside or (_is_add(n) and any(map(on_stream, n.args)))
        )

    node: fx.Node = outs[0]
    ends: list[str] = []
    while node in inside:
        if not _is_add(node):
            return [], _not_residual(an, node, inside, after, op)
        skip = [a for a in node.args if isinstance(a, fx.Node) and on_stream(a)]
        branch = [a for a in node.args if not on_stream(a)]
        if len(skip) != 1 or len(branch) != 1:
            return [], f"{op}: block {after!r} adds two branches at {node.name}; no skip path"
        end, why = _branch_end(an, branch[0], inside)
        if end is None:
            return (
                [],
                f"{op}: a residual branch of block {after!r} {why}, so it cannot start at zero",
            )
        ends.append(end[len(after) + 1 :])
        node = skip[0]
    if not ends:
        return [], f"{op}: block {after!r} has no residual add"
    return ends[::-1], None


def _branch_end(an: Analysis, node: Any, inside: set[fx.Node]) -> tuple[str | None, str]:
    while isinstance(node, fx.Node) and node in inside:
        if node.op == "call_module":
            module = an.gm.get_submodule(str(node.target))
            if isinstance(module, _ZEROABLE):
                return str(node.target), ""
            if not isinstance(module, _PASS_MODULES):
                return (
                    None,
                    f"ends in {node.target!r} ({type(module).__name__}), not a Linear or conv",
                )
        elif _is_first_output(node):
            module = an.gm.get_submodule(str(node.args[0].target))  # type: ignore[union-attr]
            inner = _ZERO_INSIDE.get(type(module))
            if inner is None:
                return None, f"ends in the first output of {type(module).__name__}"
            return f"{node.args[0].target}.{inner}", ""  # type: ignore[union-attr]
        elif not (
            (node.op == "call_method" and node.target in _PASS_METHODS)
            or (node.op == "call_function" and node.target is F.dropout)
        ):
            return None, f"ends in {node.name} ({node.target}), not a Linear or conv"
        node = node.args[0]
    return None, "does not end in a layer of the block"


def _is_first_output(node: fx.Node) -> bool:
    """``module(...)[0]``: the first output of a leaf module that returns a tuple."""
    src = node.args[0] if node.args else None
    return (
        node.op == "call_function"
        and node.target is operator.getitem
        and node.args[1:] == (0,)
        and isinstance(src, fx.Node)
        and src.op == "call_module"
    )


def _not_residual(an: Analysis, node: fx.Node, inside: set[fx.Node], after: str, op: str) -> str:
    name = str(node.target)
    if node.op == "call_module":
        name = f"{node.target!r} ({type(an.gm.get_submodule(str(node.target))).__name__})"
    if not any(_is_add(a) and a in inside for a in node.args):
        return (
            f"{op}: style='block' after {after!r} is not exact: the block ends in {name}, not in "
            "a residual add x + f(x) whose branch could start at zero; use style='stack' (not "
            "function-preserving) or style='identity'/'residual' (one inserted layer)"
        )
    return (
        f"{op}: style='block' after {after!r} is not exact: the block ends in {name} after its "
        "residual add (post-norm, x = norm(x + f(x))), so even with f at zero it computes "
        "norm(x) != x; use pre-norm blocks (x + f(norm(x))), which a zero output projection "
        "makes the identity, or style='stack' (a copy of the block, not function-preserving)"
    )


def build_copy(model: nn.Module, plan: BlockPlan, style: str) -> nn.Module:
    """A copy of the block (its weights too); for style="block" its branches' last layers are
    zero."""
    block = copy.deepcopy(model.get_submodule(plan.after))
    if style == "block":
        with torch.no_grad():
            for name in plan.zeroed:
                layer = block.get_submodule(name)
                for p in layer.parameters(recurse=False):
                    p.zero_()
    for p in block.parameters():
        p.grad = None
    return block


def block_count(root: nn.Module, plan: BlockPlan) -> int:
    """How many blocks the container holds."""
    return len(cast(nn.ModuleList | nn.Sequential, root.get_submodule(plan.parent)))


def insert_block(root: nn.Module, plan: BlockPlan, block: nn.Module) -> tuple[str, dict[str, str]]:
    """Put ``block`` right after ``plan.after``: a ModuleList renumbers the blocks after it (the
    returned renames, old → new); a Sequential gets a sibling ``<key>_deep`` and no rename."""
    parent = root.get_submodule(plan.parent)
    prefix = f"{plan.parent}." if plan.parent else ""
    if isinstance(parent, nn.ModuleList):
        pos = int(plan.key) + 1
        n = len(parent)
        parent.insert(pos, block)
        renamed = {f"{prefix}{i}": f"{prefix}{i + 1}" for i in range(n - 1, pos - 1, -1)}
        return f"{prefix}{pos}", renamed
    from ._deepen import insert_after  # the layer styles' Sequential convention

    return insert_after(root, plan.after, block)


def update_layer_counts(root: nn.Module, plan: BlockPlan, old: int) -> dict[str, list[int]]:
    """Add one to the attributes that count the blocks (``config.n_layer``), on the root and the
    modules above the container, where they equal the old count."""
    updates: dict[str, list[int]] = {}
    parts = plan.parent.split(".") if plan.parent else []
    for depth in range(len(parts) + 1):
        path = ".".join(parts[:depth])
        module = root.get_submodule(path)
        prefix = f"{path}." if path else ""
        for attr in LAYER_COUNTS:
            if getattr(module, attr, None) == old and type(getattr(module, attr)) is int:
                setattr(module, attr, old + 1)
                updates[f"{prefix}{attr}"] = [old, old + 1]
        config = getattr(module, "config", None)
        changes = {
            a: old + 1
            for a in LAYER_COUNTS
            if type(getattr(config, a, None)) is int and getattr(config, a) == old
        }
        if config is not None and changes:
            setattr(module, "config", _replaced(config, changes))  # noqa: B010
            updates.update({f"{prefix}config.{a}": [old, v] for a, v in changes.items()})
    return updates


def _replaced(config: Any, changes: dict[str, int]) -> Any:
    """``config`` with ``changes``: a new object for frozen dataclasses and pydantic models."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.replace(config, **changes)
    if hasattr(config, "model_copy"):
        return config.model_copy(update=changes)
    for a, v in changes.items():
        setattr(config, a, v)
    return config


def block_sources(
    student: nn.Module, after: str, inserted: str, renamed: dict[str, str]
) -> tuple[dict[str, str | None], dict[str, ParamPlan]]:
    """Each parameter's old name (None for the new block, whose parameters join the optimizer
    param group of their counterpart in ``after``), and the plans of new and renamed ones."""
    back = {new: old for old, new in renamed.items()}
    sources: dict[str, str | None] = {}
    plans: dict[str, ParamPlan] = {}
    for name, _ in student.named_parameters():
        if name.startswith(inserted + "."):
            sources[name] = None
            plans[name] = ParamPlan(None, template=f"{after}{name[len(inserted) :]}")
            continue
        old = name
        for new_prefix, old_prefix in back.items():
            if name.startswith(new_prefix + "."):
                old = old_prefix + name[len(new_prefix) :]
                break
        sources[name] = old
        if old != name:
            plans[name] = ParamPlan(old)
    return sources, plans
