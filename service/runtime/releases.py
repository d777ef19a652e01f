"""Releases: registered model versions of a job's trained weights, and the champion among them.

A *release* is a checkpoint of trained weights that becomes a registered model version
(``lifelong-<job>``): each generation's closing checkpoint (and the job's final one), and a
periodic checkpoint whose validation metric beats the best release of its generation so far, no
more often than ``release.every`` steps and ``release.every_s`` seconds. The opening checkpoint of
a generation (the model right after growth, untrained) is never one.

Aliases: ``generation-N`` names generation N's newest release (its final one once it closed);
``champion`` moves to a release only when its validation metric beats the champion's by more than
``release.margin``, so a shrink-and-perturb's dip never becomes the champion.

:func:`choose` is the decision (pure); :func:`build_pyfunc` writes the MLflow pyfunc model of a
checkpoint (``release_model.py``, a ``torch.export`` program and safetensors weights).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from service.jobs.spec import ReleaseSpec

CODE_FILE = Path(__file__).with_name("release_model.py")
CHAMPION = "champion"
PIP_REQUIREMENTS = ["mlflow==3.17.2", "torch==2.13.0", "numpy"]


@dataclass
class Release:
    """One release of a job, as the ledger keeps it in Redis (``Keys.releases``)."""

    number: int
    generation: int
    step: int
    samples_seen: int
    kind: str
    metric_name: str
    val_metric: float
    path: str
    dest: str
    aliases: list[str]
    parent_version: int | None = None
    growth_op: str = "base"
    made_at: float = 0.0
    version: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Release:
        return cls(**json.loads(text))

    def tags(self) -> dict[str, str]:
        """The model version's tags."""
        return {
            "lifelong.generation": str(self.generation),
            "lifelong.step": str(self.step),
            "lifelong.samples_seen": str(self.samples_seen),
            f"lifelong.val_{self.metric_name}": repr(self.val_metric),
            "lifelong.val_metric": repr(self.val_metric),
            "lifelong.parent_version": str(self.parent_version or ""),
            "lifelong.growth_op": self.growth_op,
            "lifelong.checkpoint_kind": self.kind,
            "lifelong.release": str(self.number),
        }


def better(a: float, b: float, *, higher: bool, margin: float = 0.0) -> bool:
    """Whether metric ``a`` beats ``b`` by more than ``margin``."""
    return a > b + margin if higher else a < b - margin


@dataclass(frozen=True)
class Candidate:
    """A checkpoint of trained weights with the validation metric measured on those weights."""

    generation: int
    step: int
    kind: str
    val_metric: float
    wall_time: float
    samples_seen: int = 0


def choose(
    candidate: Candidate,
    *,
    spec: ReleaseSpec,
    higher: bool,
    generation_best: float | None,
    last: tuple[int, float] | None,
    champion: float | None,
) -> tuple[bool, bool]:
    """``(release, champion)``: whether the candidate becomes a release, and the champion.

    ``generation_best`` is the best metric of the generation's releases so far, ``last`` the
    (step, wall time) of the job's newest release, ``champion`` the champion's metric.
    """
    closing = candidate.kind in ("close", "final")
    if not closing:
        if not spec.periodic:
            return False, False
        if generation_best is not None and not better(
            candidate.val_metric, generation_best, higher=higher
        ):
            return False, False
        if last is not None and (
            candidate.step - last[0] < spec.every or candidate.wall_time - last[1] < spec.every_s
        ):
            return False, False
    crowned = champion is None or better(
        candidate.val_metric, champion, higher=higher, margin=spec.margin
    )
    return True, crowned


def build_pyfunc(checkpoint: str, target: str | Path, *, example_rows: int = 2) -> Path:
    """Write the MLflow pyfunc model of a checkpoint into ``target`` (replaced if present).

    The program is exported with a dynamic batch dimension; the input example is ``example_rows``
    zeros in the model's input shape; the signature is inferred from it and the model's output.
    """
    import mlflow
    import numpy as np
    import torch
    from mlflow.models import infer_signature
    from safetensors.torch import save_file

    from service.runtime.exports import example_input, exported_program
    from workers.checkpoint import load_checkpoint

    loaded = load_checkpoint(checkpoint, with_optimizer=False)
    task = loaded.meta.task
    model = loaded.model.eval()
    language = task.kind == "language_modeling"
    if language:  # token ids: a full context of them
        example = torch.zeros((max(2, example_rows), *task.input_shape), dtype=torch.int64)
    else:
        example = example_input(task.input_shape, example_rows)
    program = exported_program(model, example)
    with torch.no_grad():
        out = model(example)
    if task.kind == "classification":
        out = torch.softmax(out, dim=-1)
    elif language:  # the next token's probabilities, after the last position
        out = torch.softmax(out[:, -1], dim=-1)
    program._example_inputs = None  # keep the archive free of torch.save'd sample inputs
    target = Path(target)
    shutil.rmtree(target, ignore_errors=True)
    work = target.with_name(f".{target.name}.parts")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    torch.export.save(program, work / "program.pt2")
    # A copy of each tensor: tied weights (a GPT's embedding and head) share memory, which a
    # safetensors file does not hold; each name gets the same values.
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, work / "model.safetensors")
    settings = {"kind": task.kind, "input_shape": list(task.input_shape),
                "step": loaded.meta.step, "generation": loaded.meta.generation}  # fmt: skip
    (work / "settings.json").write_text(json.dumps(settings))
    x = example.numpy()
    mlflow.pyfunc.save_model(
        str(target),
        python_model=str(CODE_FILE),
        artifacts={name: str(work / file) for name, file in _ARTIFACTS.items()},
        signature=infer_signature(x, np.asarray(out.numpy())),
        input_example=x,
        pip_requirements=PIP_REQUIREMENTS,
    )
    shutil.rmtree(work, ignore_errors=True)
    return target


_ARTIFACTS = {
    "program": "program.pt2",
    "weights": "model.safetensors",
    "settings": "settings.json",
}


def describe(release: Release) -> dict[str, Any]:
    """A release as the API shows it."""
    return asdict(release)
