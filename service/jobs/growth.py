"""A growth request checked at the API, before it is queued, against what is certain there.

The job's controller checks every growth when it applies it (``growth_policy.planning.check_op``:
the hard limits, the target modules); a refusal there is a ``rejected`` command with the reason.
What the API can know for certain it refuses at once, with the same function and so the same
words:

* the job has reached ``growth.guards.max_generations``: 409;
* the op does not fit the current model (a deepen after a module that is not a place to deepen, a
  width group that does not exist, a size above ``growth.guards.max_params`` or the memory budget):
  422, the candidates or the numbers named.

The current model is the base spec (generation 0 before its first checkpoint) or the newest
checkpoint of the job's current generation, summarised with ``net2net.summarize`` on a random batch,
once per generation (cached). When neither is at hand, the request is queued and the controller
decides.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

from growth_policy import GrowthOp, Observation
from service.jobs.errors import ConflictError, InvalidError, ServiceError
from service.state.records import JobRecord

log = logging.getLogger("lifelong.service")

if TYPE_CHECKING:
    from torch import nn

    from growth_policy.shape import ModelShape
    from service.runtime.serving import ModelServer


class GrowthChecker:
    """Checks growth requests against each job's current model (shapes cached per generation)."""

    def __init__(self, serving: ModelServer, *, cache_size: int = 32) -> None:
        self.serving = serving
        self.cache_size = cache_size
        self._shapes: OrderedDict[tuple[str, int], tuple[ModelShape, int]] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, job: JobRecord, op: GrowthOp) -> None:
        """Raise the API error for a growth that the controller would certainly refuse."""
        from growth_policy.planning import Limits, check_op

        growth = job.spec.growth
        if job.generation >= growth.guards.max_generations:
            raise ConflictError(
                f"job '{job.id}' is at generation {job.generation}, the most that "
                f"growth.guards.max_generations = {growth.guards.max_generations} allows; it "
                "grows no more"
            )
        _check_bounds(op)
        current = self._shape(job)
        if current is None:
            return
        shape, params = current
        if op.op == "widen" and not shape.groups:
            raise InvalidError(
                "the growth is refused: this model has no width group that can be widened; "
                "deepen it instead"
            )
        if op.op == "widen":
            _check_widths(op, shape.widths)
        observation = Observation(
            step=0,
            generation=job.generation,
            generation_step=0,
            samples_seen=0,
            passes=0.0,
            dataset_size=0,
            train_loss=0.0,
            param_count=params,
        )
        plan = check_op(observation, shape, op, growth, Limits.from_config(growth))
        if plan.op is None:
            raise InvalidError(f"the growth is refused: {plan.description}")

    def _shape(self, job: JobRecord) -> tuple[ModelShape, int] | None:
        key = (job.id, job.generation)
        with self._lock:
            if key in self._shapes:
                self._shapes.move_to_end(key)
                return self._shapes[key]
        try:
            module = self._current_model(job)
        except ServiceError:  # no checkpoint of this generation yet: the controller decides
            return None
        except Exception as exc:  # an advisory check: when the model cannot be read, it defers
            log.warning("job %s: the current model is unreadable (%s); growth not pre-checked",
                        job.id, exc)  # fmt: skip
            return None
        if module is None:
            return None
        task = job.spec.task
        vocab = task.output_dim if task.kind == "language_modeling" else None
        shape = _summarise(module, tuple(task.input_shape), vocab=vocab)
        if shape is None:
            return None
        from workers.models import count_parameters

        value = (shape, count_parameters(module))
        with self._lock:
            self._shapes[key] = value
            while len(self._shapes) > self.cache_size:
                self._shapes.popitem(last=False)
        return value

    def _current_model(self, job: JobRecord) -> nn.Module | None:
        from workers.models import build_model

        records = [r for r in self.serving.generations(job.id) if r.generation == job.generation]
        if job.generation == 0 and (not records or records[0].checkpoint is None):
            return build_model(job.spec.model, job.spec.task)
        if not records:
            return None
        return self.serving.load_generation(job.id, job.generation)[1].model


def _check_bounds(op: GrowthOp) -> None:
    """Widths a layer may have, whatever the model: 1 to ``workers.models.MAX_WIDTH``."""
    from workers.models import MAX_WIDTH

    if op.op == "add_classes":
        raise InvalidError(
            "the growth is refused: 'add_classes' is applied by the workers when a label beyond "
            "the head arrives (task.max_classes); push data with the new class instead"
        )
    if op.op != "widen":
        return
    if op.factor is not None and not op.factor <= MAX_WIDTH:
        raise InvalidError(
            f"the growth is refused: widening ×{op.factor:g} would make layers wider than "
            f"{MAX_WIDTH:,} units, the most a layer may have"
        )
    bad = {g: w for g, w in (op.widths or {}).items() if not 1 <= w <= MAX_WIDTH}
    if bad:
        listed = ", ".join(f"{g} = {w:,}" for g, w in bad.items())
        raise InvalidError(
            f"the growth is refused: a width must be between 1 and {MAX_WIDTH:,} units; "
            f"got {listed}"
        )


def _check_widths(op: GrowthOp, widths: dict[str, int]) -> None:
    """A widen only grows: every named group wider than now, none past ``MAX_WIDTH``."""
    import math

    from workers.models import MAX_WIDTH

    if op.factor is not None:
        widest = max(widths, key=lambda g: widths[g])
        after = math.ceil(widths[widest] * op.factor)
        if after > MAX_WIDTH:
            raise InvalidError(
                f"the growth is refused: widening ×{op.factor:g} would make {widest} "
                f"{after:,} units wide, above the {MAX_WIDTH:,} a layer may have"
            )
        return
    narrower = {g: w for g, w in (op.widths or {}).items() if g in widths and w <= widths[g]}
    if narrower:
        listed = ", ".join(
            f"{g} is {widths[g]:,} units wide (asked {w:,})" for g, w in narrower.items()
        )
        raise InvalidError(
            f"the growth is refused: widening only adds units, and {listed}; ask for more "
            "units than each group has"
        )


def _summarise(
    module: nn.Module, input_shape: tuple[int, ...], *, vocab: int | None = None
) -> ModelShape | None:
    import torch

    import net2net
    from growth_policy.shape import SummaryError, parse_summary

    generator = torch.Generator().manual_seed(0)
    if vocab is None:
        example = torch.randn((8, *input_shape), generator=generator)
    else:  # a language model reads token ids
        example = torch.randint(0, vocab, (8, *input_shape), generator=generator)
    from service.runtime.serving import TRACING

    try:
        with TRACING:  # no model of this process runs while fx patches nn.Module.__call__
            summary = net2net.summarize(module, example)
        return parse_summary(summary)
    except (SummaryError, ValueError, RuntimeError, TypeError):
        return None  # a model net2net cannot summarise: the controller decides
