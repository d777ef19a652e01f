"""Per-slice validation: forgetting, backward transfer and drift, measured at every observation.

A *slice* is the validation samples of one data version (one push), merged with the versions that
follow it until it holds at least ``min_samples`` samples, so that a slice's metric is not the
noise of a handful of samples. A slice is named by its first version (``"v3"``), and keeps that
name as later versions join it; the newest slice is the one still filling (or the last full one).

Cost. The observation already evaluates the validation set (at most ``val_max_samples`` samples,
spread evenly over it); here that one pass keeps each sample's loss and metric and groups them by
slice, so the slices cost one ``index_add`` more, whatever their number. A slice with no sample in
the spread is not measured at that observation. Events and MLflow carry at most ``max_reported``
slices per observation: the newest, the oldest, the most forgotten, and others spread evenly over
the history; the summary numbers below are over every measured slice.

With ``m`` a slice's metric (accuracy; for regression the MSE, lower being better, with the signs
below turned so that larger is always worse for forgetting and better for transfer):

* forgetting: the largest drop of an old slice (not the newest) since its best, ``max_i (best_i −
  m_i)``; ``average_forgetting`` is its mean over the old slices (Chaudhry et al., 2018,
  "Riemannian Walk for Incremental Learning");
* backward transfer: ``BWT = 1/(S−1) Σ_{i<S} (m_i − m_i*)``, with ``m_i*`` the slice's metric at
  the last observation while it was the newest (the accuracy "just after learning it"): Lopez-Paz
  and Ranzato, 2017, "Gradient Episodic Memory for Continual Learning"; negative is forgetting;
* drift: the newest slice's mean loss over the mean loss of the older slices (1: the new data is as
  hard as the old for the model; above 1: it has not learned it yet, e.g. new classes or a shifted
  distribution). ``growth_policy`` reads it (``Observation.drift``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from workers.spec import TaskSpec
from workers.tasks import targets

MIN_SAMPLES = 32
MAX_REPORTED = 8


@torch.no_grad()
def per_sample(
    model: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    task: TaskSpec,
    *,
    batch_size: int = 1024,
    device: torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample's ``(loss, metric)`` in eval mode (float64, on the CPU): cross-entropy and 1
    for a correct class, or the mean squared error twice. Their means are what
    ``workers.tasks.evaluate`` returns."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    losses, metrics = [], []
    try:
        for start in range(0, features.shape[0], batch_size):
            x = features[start : start + batch_size].to(device, non_blocking=True)
            y = targets(labels[start : start + batch_size], task).to(device, non_blocking=True)
            out = model(x)
            if task.kind == "classification":
                loss = functional.cross_entropy(out.float(), y, reduction="none")
                metric = (out.argmax(dim=1) == y).double()
            else:
                loss = functional.mse_loss(out.float(), y, reduction="none")
                loss = loss.reshape(out.shape[0], -1).mean(dim=1)
                metric = loss
            losses.append(loss.double().cpu())
            metrics.append(metric.double().cpu())
    finally:
        model.train(was_training)
    return torch.cat(losses), torch.cat(metrics)


def slice_starts(versions: list[tuple[int, int]], min_samples: int = MIN_SAMPLES) -> list[int]:
    """The first version of each slice, from ``(version, validation samples)`` in manifest
    order: a slice closes once it holds ``min_samples``."""
    starts: list[int] = []
    held = min_samples
    for version, samples in versions:
        if held >= min_samples:
            starts.append(version)
            held = 0
        held += samples
    return starts


@dataclass
class SliceStat:
    """What is known of one slice across observations (metric as measured: higher is better
    for accuracy, lower for MSE)."""

    best: float
    last: float
    loss: float
    samples: int
    at_newest: float | None = None  # the metric at the last observation as the newest slice


@dataclass
class SliceReport:
    """One observation's slice numbers (``Observation`` fields)."""

    slices: dict[str, dict[str, float]] = field(default_factory=dict)
    forgetting: float | None = None
    average_forgetting: float | None = None
    backward_transfer: float | None = None
    drift: float | None = None
    slice_count: int = 0

    def fields(self) -> dict[str, Any]:
        return {
            "slices": self.slices,
            "forgetting": self.forgetting,
            "average_forgetting": self.average_forgetting,
            "backward_transfer": self.backward_transfer,
            "drift": self.drift,
            "slice_count": self.slice_count,
        }


class SliceTracker:
    """Rank 0: each slice's best, latest and as-newest metric, and the numbers of the module
    docstring. ``state_dict`` goes into the checkpoint, so a resume keeps the bests."""

    def __init__(
        self,
        *,
        higher_is_better: bool,
        min_samples: int = MIN_SAMPLES,
        max_reported: int = MAX_REPORTED,
    ) -> None:
        self.higher = higher_is_better
        self.min_samples = min_samples
        self.max_reported = max(2, max_reported)
        self.stats: dict[int, SliceStat] = {}
        self._newest: int | None = None

    def state_dict(self) -> dict[str, Any]:
        return {
            "newest": self._newest,
            "stats": {str(k): vars(v) for k, v in self.stats.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._newest = state.get("newest")
        self.stats = {int(k): SliceStat(**v) for k, v in (state.get("stats") or {}).items()}

    def _drop(self, metric: float, stat: SliceStat) -> float:
        """How much worse ``metric`` is than the slice's best (≥ 0)."""
        return max(0.0, stat.best - metric if self.higher else metric - stat.best)

    def update(
        self,
        starts: list[int],
        versions: torch.Tensor,
        losses: torch.Tensor,
        metrics: torch.Tensor,
    ) -> SliceReport:
        """Group the per-sample ``losses``/``metrics`` (with each sample's data ``versions``) by
        the slices that begin at ``starts`` (sorted), update the history and report."""
        if not starts or versions.numel() == 0:
            return SliceReport()
        bounds = torch.tensor(starts, dtype=torch.int64)
        which = torch.bucketize(versions.to(torch.int64), bounds, right=True) - 1
        which = which.clamp(min=0)
        n = len(starts)
        count = torch.zeros(n, dtype=torch.float64).index_add_(0, which, torch.ones_like(losses))
        loss_sum = torch.zeros(n, dtype=torch.float64).index_add_(0, which, losses)
        metric_sum = torch.zeros(n, dtype=torch.float64).index_add_(0, which, metrics)
        newest = starts[-1]  # an older newest keeps its at_newest from its last time as newest
        self._newest = newest
        measured: dict[int, SliceStat] = {}
        for i, start in enumerate(starts):
            c = int(count[i])
            if c == 0:
                continue
            m, loss = float(metric_sum[i]) / c, float(loss_sum[i]) / c
            stat = self.stats.get(start)
            if stat is None:
                stat = SliceStat(best=m, last=m, loss=loss, samples=c)
                self.stats[start] = stat
            better = m > stat.best if self.higher else m < stat.best
            stat.best = m if better else stat.best
            stat.last, stat.loss, stat.samples = m, loss, c
            if start == newest:
                stat.at_newest = m
            measured[start] = stat
        return self._report(measured, newest, len(starts))

    def _report(self, measured: dict[int, SliceStat], newest: int, total: int) -> SliceReport:
        old = {k: s for k, s in measured.items() if k != newest}
        report = SliceReport(slice_count=total)
        if old:
            drops = {k: self._drop(s.last, s) for k, s in old.items()}
            report.forgetting = max(drops.values())
            report.average_forgetting = sum(drops.values()) / len(drops)
            sign = 1.0 if self.higher else -1.0
            transfer = [
                sign * (s.last - s.at_newest) for s in old.values() if s.at_newest is not None
            ]
            report.backward_transfer = sum(transfer) / len(transfer) if transfer else None
            if newest in measured:
                old_loss = sum(s.loss * s.samples for s in old.values())
                old_loss /= sum(s.samples for s in old.values())
                new_loss = measured[newest].loss
                report.drift = new_loss / old_loss if old_loss > 0 else math.inf
        for k in self._reported(measured, newest, old):
            s = measured[k]
            report.slices[f"v{k}"] = {
                "loss": s.loss,
                "metric": s.last,
                "best": s.best,
                "samples": float(s.samples),
            }
        if report.drift is not None and not math.isfinite(report.drift):
            report.drift = None
        return report

    def _reported(
        self, measured: dict[int, SliceStat], newest: int, old: dict[int, SliceStat]
    ) -> list[int]:
        """The newest, the oldest, the most forgotten, then others spread evenly."""
        keys = sorted(measured)
        chosen: list[int] = [k for k in (newest, keys[0]) if k in measured]
        if old:
            chosen.append(max(old, key=lambda k: self._drop(old[k].last, old[k])))
        room = self.max_reported - len(set(chosen))
        rest = [k for k in keys if k not in chosen]
        if room > 0 and rest:
            step = max(1, math.ceil(len(rest) / room))
            chosen += rest[::step][:room]
        return sorted(set(chosen))
