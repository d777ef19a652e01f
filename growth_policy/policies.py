"""When to grow: each policy is a small pure function of the observation history.

A policy gets a :class:`PolicyContext` (the newest observation, the bounded history that ends with it,
and the configuration) and returns a :class:`Verdict`: grow or not, a short stable ``state`` key (used
to tell a change of state from a repeat), a human-readable reason with its numbers, and the same
numbers machine-readable. Policies know nothing of guards, of what to grow, or of each other; the
:class:`~growth_policy.controller.Controller` combines them any-of and applies the guards.

Write your own with the same signature and register it under a name, then name it in
``GrowthPolicyConfig.policies``::

    def loss_spike(ctx: PolicyContext) -> Verdict:
        ...

    register_policy("loss_spike", loss_spike)

The registry itself (``register_policy``, ``get_policy``, ...) is ``growth_policy._registry``, which
the config reads without importing this module; the built-ins are registered at the end of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from growth_policy._format import count, num, pct
from growth_policy._registry import add_builtins
from growth_policy.config import GrowthPolicyConfig
from growth_policy.types import Observation

Numbers = dict[str, float | int | str]


@dataclass(frozen=True)
class PolicyContext:
    """What a policy may look at. ``history`` is oldest first and ends with ``obs``."""

    obs: Observation
    history: Sequence[Observation]
    config: GrowthPolicyConfig


@dataclass(frozen=True)
class Verdict:
    """A policy's answer.

    ``state`` is a short key such as ``"plateau"`` or ``"overfitting"``; the controller reports a
    refusal again only when the combined state changes. ``notable`` marks states worth an event even
    without growth (overfitting is; "still improving" is not). ``target_params`` is the size the
    policy asks for, when it has one; without it the controller widens by the configured factor.
    """

    policy: str
    grow: bool
    state: str
    reason: str
    numbers: Numbers = field(default_factory=dict)
    notable: bool = False
    target_params: int | None = None


Policy = Callable[[PolicyContext], Verdict]


def relative_gap(train_loss: float, val_loss: float) -> float:
    """(val - train) / train; +inf when the train loss is 0 and the validation loss is not."""
    if train_loss > 0:
        return (val_loss - train_loss) / train_loss
    return math.inf if val_loss > train_loss else 0.0


def manual(ctx: PolicyContext) -> Verdict:
    """Never grows by itself: growth comes only from ``Controller.request``."""
    return Verdict("manual", False, "manual", "manual policy: grows only on request")


def plateau(ctx: PolicyContext) -> Verdict:
    """Underfitting detector.

    Grows when the smoothed training loss changed by less than ``min_improvement`` (relative) over
    the last ``window_steps`` steps of this generation (read off a least-squares line through the
    window's observations; a loss that rose by more is not a plateau), and the relative
    generalisation gap
    ``(val_loss - train_loss) / train_loss`` is at most ``max_gap``: the model cannot fit the data
    it has, so capacity is the bottleneck. A larger gap means overfitting: it does not grow, it waits
    for data, and says so (a notable state). The window restarts when the dataset grew by more than
    ``max_data_growth`` inside it, since new samples move the loss for reasons other than capacity.
    """
    cfg = ctx.config.plateau
    obs = ctx.obs
    if obs.val_loss is None:
        return Verdict(
            "plateau",
            False,
            "no_validation",
            "plateau: no validation loss, so underfitting cannot be told from overfitting",
        )
    gap = relative_gap(obs.train_loss, obs.val_loss)
    gap_numbers: Numbers = {
        "train_loss": obs.train_loss,
        "val_loss": obs.val_loss,
        "gap": gap,
        "max_gap": cfg.max_gap,
    }
    if gap > cfg.max_gap:
        return Verdict(
            "plateau",
            False,
            "overfitting",
            f"overfitting: validation loss {obs.val_loss:.4g} is {pct(gap)} above train loss "
            f"{obs.train_loss:.4g} (> {pct(cfg.max_gap)}): not growing, waiting for data",
            gap_numbers,
            notable=True,
        )
    usable, earlier = _plateau_window(ctx)
    if not earlier:
        span = obs.step - min((o.step for o in usable), default=obs.step)
        return Verdict(
            "plateau",
            False,
            "measuring",
            f"plateau: {span} of {cfg.window_steps} steps observed in this generation on this data",
            {**gap_numbers, "window_observed": span, "window_steps": cfg.window_steps},
        )
    return _plateau_trend(ctx, usable, earlier[-1], gap, gap_numbers)


def _plateau_window(ctx: PolicyContext) -> tuple[list[Observation], list[Observation]]:
    """The observations of this generation since the data last grew by more than
    ``max_data_growth``, and those of them at least ``window_steps`` before the newest."""
    cfg = ctx.config.plateau
    obs = ctx.obs
    usable = [
        o
        for o in ctx.history
        if o.generation == obs.generation
        and o.step <= obs.step
        and o.dataset_size * (1.0 + cfg.max_data_growth) >= obs.dataset_size
    ]
    return usable, [o for o in usable if o.step <= obs.step - cfg.window_steps]


def _plateau_trend(
    ctx: PolicyContext,
    usable: Sequence[Observation],
    ref: Observation,
    gap: float,
    gap_numbers: Numbers,
) -> Verdict:
    """The verdict from the train loss's trend since ``ref``: improving, rising, or a plateau
    (grow)."""
    cfg = ctx.config.plateau
    span = ctx.obs.step - ref.step
    then, now = _fitted_ends([o for o in usable if o.step >= ref.step])
    improvement = (then - now) / then if then > 0 else 0.0
    numbers: Numbers = {
        **gap_numbers,
        "improvement": improvement,
        "min_improvement": cfg.min_improvement,
        "window_steps": span,
        "loss_then": then,
        "loss_now": now,
    }
    if improvement >= cfg.min_improvement:
        return Verdict(
            "plateau",
            False,
            "improving",
            f"plateau: train loss improved {pct(improvement)} over {span} steps "
            f"(>= {pct(cfg.min_improvement)})",
            numbers,
        )
    if improvement <= -cfg.min_improvement:
        # A rising loss is no plateau: new data, a spike after growth, or the smoothed loss
        # still catching up with either (measured: the EMA lags a new stage by a few hundred
        # steps, and growing there overshot; docs/learning.md).
        return Verdict(
            "plateau",
            False,
            "rising",
            f"plateau: train loss rose {pct(-improvement)} over {span} steps: not a plateau, "
            "waiting for it to settle",
            numbers,
        )
    return Verdict(
        "plateau",
        True,
        "plateau",
        f"train loss improved {pct(improvement)} over {span} steps "
        f"(< {pct(cfg.min_improvement)}), gap {pct(gap)} (<= {pct(cfg.max_gap)})",
        numbers,
        notable=True,
    )


def _fitted_ends(window: Sequence[Observation]) -> tuple[float, float]:
    """Least-squares line through the window's train losses, read at its first and last step.

    A line through every observation of the window, rather than its two end points, keeps the noise
    of a smoothed mini-batch loss from flipping the verdict at every observation.
    """
    xs = [float(o.step) for o in window]
    ys = [o.train_loss for o in window]
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx > 0 else 0.0
    return my + slope * (xs[0] - mx), my + slope * (xs[-1] - mx)


def data_target(config: GrowthPolicyConfig, dataset_size: int, unit: str = "samples") -> int:
    """Target parameter count for a dataset size: ``coefficient × dataset_size ** exponent``,
    with ``coefficient_per_token`` for a size in tokens (``unit="tokens"``)."""
    ds = config.data_scaling
    coefficient = ds.coefficient_per_token if unit == "tokens" else ds.coefficient
    return round(coefficient * math.pow(float(dataset_size), ds.exponent))


def data_scaling(ctx: PolicyContext) -> Verdict:
    """Capacity follows data: grow when the model is ``trigger_ratio`` times below the target.

    The target is ``coefficient × dataset_size ** exponent`` parameters (defaults and their reasons
    in ``docs/growth_policy.md``). The verdict carries the target, so that a widen in ``target``
    mode grows to it rather than by a fixed factor.
    """
    cfg = ctx.config.data_scaling
    obs = ctx.obs
    if obs.dataset_size == 0:
        return Verdict("data_scaling", False, "no_data", "data_scaling: no training data yet")
    target = data_target(ctx.config, obs.dataset_size, obs.data_unit)
    ratio = target / obs.param_count if obs.param_count > 0 else math.inf
    numbers: Numbers = {
        "dataset_size": obs.dataset_size,
        "target_params": target,
        "param_count": obs.param_count,
        "target_ratio": ratio,
        "trigger_ratio": cfg.trigger_ratio,
    }
    coefficient = cfg.coefficient_per_token if obs.data_unit == "tokens" else cfg.coefficient
    law = f"{num(coefficient)} × {obs.dataset_size:,}^{num(cfg.exponent)}"
    if ratio >= cfg.trigger_ratio:
        return Verdict(
            "data_scaling",
            True,
            "below_target",
            f"{obs.dataset_size:,} {obs.data_unit} call for {count(target)} parameters ({law}), "
            f"the model has {count(obs.param_count)} (target ×{num(ratio)} >= ×{num(cfg.trigger_ratio)})",
            numbers,
            notable=True,
            target_params=target,
        )
    return Verdict(
        "data_scaling",
        False,
        "at_target",
        f"data_scaling: {count(obs.param_count)} parameters for a target of {count(target)} "
        f"({law}; ×{num(ratio)} < ×{num(cfg.trigger_ratio)})",
        numbers,
        target_params=target,
    )


def schedule(ctx: PolicyContext) -> Verdict:
    """Grow at given dataset sizes or steps.

    By the time the k-th threshold (dataset sizes and steps counted together) has been reached, the
    model should be in generation k or later; the policy grows while it is behind. Counting against
    the generation rather than remembering which thresholds fired keeps the policy pure: a growth
    refused by a guard (a cooldown) happens later, and a restarted job needs no extra state. Any
    growth counts, manual ones included.
    """
    cfg = ctx.config.schedule
    obs = ctx.obs
    sizes = [t for t in cfg.at_dataset_sizes if t <= obs.dataset_size]
    steps = [t for t in cfg.at_steps if t <= obs.step]
    due = len(sizes) + len(steps)
    numbers: Numbers = {
        "growths_due": due,
        "generation": obs.generation,
        "dataset_size": obs.dataset_size,
        "step": obs.step,
    }
    if due > obs.generation:
        reached = []
        if sizes:
            reached.append(f"dataset size {obs.dataset_size:,} >= {sizes[-1]:,}")
        if steps:
            reached.append(f"step {obs.step:,} >= {steps[-1]:,}")
        return Verdict(
            "schedule",
            True,
            "due",
            f"schedule: {' and '.join(reached)}: {due} growths due, generation {obs.generation}",
            numbers,
            notable=True,
        )
    upcoming = [t for t in cfg.at_dataset_sizes if t > obs.dataset_size][:1]
    upcoming_steps = [t for t in cfg.at_steps if t > obs.step][:1]
    nxt = ", ".join(
        [f"dataset size {t:,}" for t in upcoming] + [f"step {t:,}" for t in upcoming_steps]
    )
    return Verdict(
        "schedule",
        False,
        "on_schedule",
        f"schedule: {due} growths due, generation {obs.generation}"
        + (f"; next at {nxt}" if nxt else "; no thresholds left"),
        numbers,
    )


def drift(ctx: PolicyContext) -> Verdict:
    """Grow when new data stays unlearned: the newest slice's validation loss has been at least
    ``min_drift`` times the older slices' at each of the last ``window_observations`` observations
    of this generation on this data version, and fell by less than ``min_improvement`` (relative)
    over them. Training has plateaued on the new data while the history is fitted: the model
    lacks the capacity to take the new data in without losing the old."""
    cfg = ctx.config.drift
    obs = ctx.obs
    window = [
        o
        for o in ctx.history
        if o.generation == obs.generation and o.dataset_version == obs.dataset_version
    ][-cfg.window_observations :]
    values = [o.drift for o in window if o.drift is not None]
    numbers: Numbers = {"drift": obs.drift if obs.drift is not None else "none",
                        "min_drift": cfg.min_drift, "observed": len(values)}  # fmt: skip
    if obs.drift is None:
        return Verdict("drift", False, "no_slices", "drift: one slice of data so far", numbers)
    if len(values) < cfg.window_observations or min(values) < cfg.min_drift:
        return Verdict(
            "drift",
            False,
            "learning" if obs.drift < cfg.min_drift else "measuring",
            f"drift: newest slice's loss {obs.drift:.3g}× the history's "
            f"({len(values)} of {cfg.window_observations} observations, min {cfg.min_drift:g})",
            numbers,
        )
    fell = (values[0] - values[-1]) / values[0]
    numbers["fell"] = fell
    if fell >= cfg.min_improvement:
        return Verdict(
            "drift",
            False,
            "learning",
            f"drift: {values[-1]:.3g}× and falling ({pct(fell)} over the window)",
            numbers,
        )
    return Verdict(
        "drift",
        True,
        "stuck",
        f"drift: the newest slice's loss stays {values[-1]:.3g}× the history's (at least "
        f"{cfg.min_drift:g}× for {len(values)} observations, fell {pct(fell)} < "
        f"{pct(cfg.min_improvement)}): growing",
        numbers,
        notable=True,
    )


add_builtins(
    {
        "manual": manual,
        "plateau": plateau,
        "data_scaling": data_scaling,
        "schedule": schedule,
        "drift": drift,
    }
)
