"""Compute that follows the data: convergence on the data a job holds, budgets, and accounting.

Three small pieces that the train loop (``workers.loop``) uses on rank 0, each pure and tested on
its own:

* :class:`ConvergenceDetector`: the validation loss has not improved by more than
  ``min_improvement`` (relative to the best) for ``patience`` observations or samples, and the
  data has not changed since the best (a new data version, or a new generation, starts the count
  over). Then the job has learned what its data holds and waits for more.
* :func:`spent`: the first limit of a :class:`~workers.spec.BudgetSpec` that a :class:`Tally`
  has reached, said in words.
* :class:`ComputeMeter`: steps, samples, estimated FLOPs and busy seconds, in total, per
  generation and per data version, and the duty cycle (busy seconds over the seconds since the job
  started). FLOPs are estimated as ``6 × parameters × samples`` for a training step (forward and
  backward of the dense layers) and ``2 × parameters × samples`` for a validation pass: exact for
  an MLP, a lower bound for convolutions, whose weights are reused at every position. A language
  model counts tokens as samples and adds attention's own FLOPs per token
  (:func:`attention_flops_per_token`), as nanoGPT's ``6N + 12·L·H·Q·T`` does.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from workers.spec import BudgetSpec, ComputeSpec

if TYPE_CHECKING:
    from torch import nn

TRAIN_FLOPS_PER_PARAM = 6.0  # forward (2) and backward (4) per parameter and sample
EVAL_FLOPS_PER_PARAM = 2.0


def train_flops(params: int, samples: int, attention: float = 0.0) -> float:
    """Estimated FLOPs of training ``params`` parameters on ``samples`` samples (tokens for a
    language model), with ``attention`` forward FLOPs per sample not in the parameters
    (:func:`attention_flops_per_token`; the backward pass costs twice the forward)."""
    return (TRAIN_FLOPS_PER_PARAM * params + 3.0 * attention) * samples


def eval_flops(params: int, samples: int, attention: float = 0.0) -> float:
    """Estimated FLOPs of evaluating ``params`` parameters on ``samples`` samples."""
    return (EVAL_FLOPS_PER_PARAM * params + attention) * samples


def attention_flops_per_token(model: nn.Module, context_length: int) -> float:
    """Forward FLOPs per token of attention's scores and weighted sums, which weigh no parameter:
    ``2 · 2 · T · n_head · head_dim`` per attention layer of a ``gpt`` at context T (the count of
    nanoGPT's and PaLM's estimates: every position of the window, the causal half included).
    0 for a model without attention."""
    from workers.gpt import CausalSelfAttention  # torch, only where a model is at hand

    total = 0.0
    for module in model.modules():
        if isinstance(module, CausalSelfAttention):
            total += 4.0 * context_length * module.n_head * module.head_dim
    return total


# -- accounting ------------------------------------------------------------------------------------


@dataclass
class Tally:
    """Compute spent: optimizer steps, training samples, estimated FLOPs, busy seconds."""

    steps: int = 0
    samples: int = 0
    flops: float = 0.0
    busy_s: float = 0.0

    def add(
        self, *, steps: int = 0, samples: int = 0, flops: float = 0.0, busy_s: float = 0.0
    ) -> None:
        self.steps += steps
        self.samples += samples
        self.flops += flops
        self.busy_s += busy_s

    def as_dict(self) -> dict[str, float | int]:
        return {"steps": self.steps, "samples": self.samples, "flops": self.flops,
                "busy_s": round(self.busy_s, 3)}  # fmt: skip


@dataclass
class ComputeMeter:
    """Compute spent in total, per generation and per data version, and the duty cycle.

    ``started`` is the Unix time the job's loop first started (kept across resumes through
    :meth:`state_dict`), so the duty cycle is over the job's life, downtime included.
    """

    total: Tally = field(default_factory=Tally)
    per_generation: dict[int, Tally] = field(default_factory=dict)
    per_version: dict[int, Tally] = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    def add(
        self,
        generation: int,
        version: int,
        *,
        steps: int = 0,
        samples: int = 0,
        flops: float = 0.0,
        busy_s: float = 0.0,
    ) -> None:
        for tally in (
            self.total,
            self.per_generation.setdefault(generation, Tally()),
            self.per_version.setdefault(version, Tally()),
        ):
            tally.add(steps=steps, samples=samples, flops=flops, busy_s=busy_s)

    def version(self, version: int) -> Tally:
        """What was spent on data version ``version`` (nothing yet: zeros)."""
        return self.per_version.get(version, Tally())

    def snapshot(self, now: float | None = None, *, versions: int = 20) -> dict[str, Any]:
        """JSON numbers: totals, ``elapsed_s``, ``duty_cycle`` and the two breakdowns (the newest
        ``versions`` data versions; the older ones summed under ``"earlier"``, so that the
        snapshot stays small however many pushes a job has had)."""
        elapsed = max(0.0, (time.time() if now is None else now) - self.started)
        shown = sorted(self.per_version.items())
        per_version = {str(v): t.as_dict() for v, t in shown[-versions:]}
        if len(shown) > versions:
            earlier = Tally()
            for _, t in shown[:-versions]:
                earlier.add(steps=t.steps, samples=t.samples, flops=t.flops, busy_s=t.busy_s)
            per_version = {"earlier": earlier.as_dict(), **per_version}
        return {
            **self.total.as_dict(),
            "elapsed_s": round(elapsed, 3),
            "duty_cycle": min(1.0, self.total.busy_s / elapsed) if elapsed > 0 else 1.0,
            "started": self.started,
            "per_generation": {str(g): t.as_dict() for g, t in sorted(self.per_generation.items())},
            "per_version": per_version,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "total": asdict(self.total),
            "per_generation": {str(g): asdict(t) for g, t in self.per_generation.items()},
            "per_version": {str(v): asdict(t) for v, t in self.per_version.items()},
            "started": self.started,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.total = Tally(**state.get("total", {}))
        self.per_generation = {
            int(g): Tally(**t) for g, t in state.get("per_generation", {}).items()
        }
        self.per_version = {int(v): Tally(**t) for v, t in state.get("per_version", {}).items()}
        self.started = float(state.get("started", self.started))


# -- budgets ---------------------------------------------------------------------------------------


def spent(budget: BudgetSpec, tally: Tally) -> str | None:
    """The first limit of ``budget`` that ``tally`` has reached, in words; None: none reached."""
    checks: list[tuple[str, float | None, float, str]] = [
        ("steps", budget.steps, tally.steps, f"{tally.steps:,} steps of {budget.steps or 0:,}"),
        ("samples", budget.samples, tally.samples,
         f"{tally.samples:,} samples of {budget.samples or 0:,}"),
        ("flops", budget.flops, tally.flops,
         f"{tally.flops:.3g} FLOPs of {budget.flops or 0:.3g}"),
        ("seconds", budget.seconds, tally.busy_s,
         f"{tally.busy_s:.1f} busy seconds of {budget.seconds or 0:g}"),
    ]  # fmt: skip
    for _, limit, used, words in checks:
        if limit is not None and used >= limit:
            return words
    return None


# -- convergence -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Converged:
    """The job has learned what its data holds: why, with its numbers."""

    reason: str
    numbers: dict[str, float | int | str]
    best_step: int


@dataclass(frozen=True)
class Verdict:
    """One observation's outcome: whether it is the best so far, and convergence if reached."""

    improved: bool = False
    converged: Converged | None = None


@dataclass
class ConvergenceDetector:
    """Validation has not improved by a margin for a patience, and no new data since.

    Call :meth:`update` with every observation that has a validation loss. The count starts over
    (that observation becomes the best) when the data version or the generation changes, and on
    :meth:`reset` (a wake without new data).
    """

    spec: ComputeSpec
    version: int | None = None
    generation: int | None = None
    best_loss: float = math.inf
    best_step: int = 0
    best_samples: int = 0
    since: int = 0  # observations since the best

    def reset(self) -> None:
        self.version = self.generation = None

    def update(
        self,
        *,
        step: int,
        samples_seen: int,
        dataset_version: int,
        dataset_size: int,
        generation: int,
        val_loss: float | None,
    ) -> Verdict:
        if val_loss is None or not math.isfinite(val_loss):
            return Verdict()
        if dataset_version != self.version or generation != self.generation:
            self.version, self.generation = dataset_version, generation
            self._best(val_loss, step, samples_seen)
            return Verdict(improved=True)
        if val_loss < self.best_loss - self.spec.min_improvement * abs(self.best_loss):
            self._best(val_loss, step, samples_seen)
            return Verdict(improved=True)
        self.since += 1
        samples = samples_seen - self.best_samples
        waited = self.since if self.spec.patience_unit == "observations" else samples
        if waited < self.spec.patience:
            return Verdict()
        return Verdict(converged=self._converged(step, samples, val_loss, dataset_size))

    def _best(self, val_loss: float, step: int, samples_seen: int) -> None:
        self.best_loss, self.best_step, self.best_samples = val_loss, step, samples_seen
        self.since = 0

    def _converged(self, step: int, samples: int, val_loss: float, dataset_size: int) -> Converged:
        spec = self.spec
        reason = (
            f"converged: the validation loss has not gone below {self.best_loss:.4g} (step "
            f"{self.best_step}) by more than {100 * spec.min_improvement:g}% in {self.since} "
            f"observations and {samples:,} samples since (now {val_loss:.4g}; patience "
            f"{spec.patience:,} {spec.patience_unit}), and no new data has arrived (data version "
            f"{self.version}, {dataset_size:,} training samples): waiting for new data"
        )
        numbers: dict[str, float | int | str] = {
            "best_val_loss": self.best_loss,
            "best_step": self.best_step,
            "val_loss": val_loss,
            "step": step,
            "observations_since_best": self.since,
            "samples_since_best": samples,
            "patience": spec.patience,
            "patience_unit": spec.patience_unit,
            "min_improvement": spec.min_improvement,
            "dataset_version": self.version or 0,
            "dataset_size": dataset_size,
        }
        return Converged(reason, numbers, self.best_step)
