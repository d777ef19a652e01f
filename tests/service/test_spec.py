"""Job spec validation: structure and meaning, every problem in one answer."""

from __future__ import annotations

from typing import Any

import pytest

from service.jobs.spec import JobSpec, SpecError, validate_job_spec

VALID: dict[str, Any] = {
    "name": "digits",
    "task": {"kind": "classification", "input_shape": [64], "num_classes": 10},
    "model": {"family": "mlp", "hidden": [32]},
}


def problems(raw: Any, max_workers: int = 4) -> dict[str, str]:
    with pytest.raises(SpecError) as info:
        validate_job_spec(raw, max_workers=max_workers)
    found: dict[str, str] = {}
    for p in info.value.problems:
        found[p.loc] = f"{found[p.loc]} | {p.msg}" if p.loc in found else p.msg
    return found


def test_valid_spec_gets_defaults() -> None:
    spec = validate_job_spec(VALID, max_workers=4)
    assert isinstance(spec, JobSpec)
    assert spec.batch_size == 128
    assert spec.val_fraction == 0.1
    assert spec.scaling.num_workers == 1
    assert spec.growth.policies  # the growth policy's own defaults
    assert spec.model.options() == {"hidden": [32]}


def test_every_problem_comes_back_together() -> None:
    raw = {
        "name": "",
        "task": {"kind": "classification", "input_shape": [64]},
        "model": {"family": "mlp", "hidden": [32]},
        "optimizer": {"name": "rmsprop"},
        "batch_size": 0,
        "val_fraction": 0.9,
        "growth": {"policies": ["nonsense"]},
        "scaling": {"num_workers": 9},
        "colour": "blue",
    }
    found = problems(raw)
    assert set(found) == {
        "name",
        "task",
        "optimizer.name",
        "batch_size",
        "val_fraction",
        "growth",
        "scaling.num_workers",
        "colour",
    }
    assert "num_classes" in found["task"]
    assert "nonsense" in found["growth"]
    assert found["colour"].startswith("unknown key 'colour' (allowed: name, task, model")
    assert "at most 4" in found["scaling.num_workers"]


def test_model_is_checked_against_the_task_even_when_other_sections_fail() -> None:
    raw = dict(VALID, model={"family": "mlp", "hidden": [32], "dropout_rate": 0.5}, batch_size=-1)
    found = problems(raw)
    assert "batch_size" in found
    assert "unknown option 'dropout_rate'" in found["model"]
    assert "family 'mlp' accepts:" in found["model"]


def test_unknown_family_lists_the_known_ones() -> None:
    found = problems(dict(VALID, model={"family": "transformer9000"}))
    assert "unknown model family 'transformer9000'" in found["model"]
    assert "mlp" in found["model"]


def test_base_model_above_max_params_is_refused() -> None:
    raw = dict(VALID, model={"family": "mlp", "hidden": [4096, 4096]})
    raw["growth"] = {"guards": {"max_params": 1000}}
    found = problems(raw)
    assert "above growth.guards.max_params = 1,000" in found["model"]


def test_not_an_object() -> None:
    assert problems([1, 2]) == {"": "the job spec must be a JSON object"}


def test_missing_sections_are_named() -> None:
    found = problems({"name": "x"})
    assert found == {"task": "required", "model": "required"}


def test_the_compute_section_has_defaults_and_refuses_what_it_does_not_know() -> None:
    spec = validate_job_spec(VALID, max_workers=4)
    compute = spec.compute
    assert compute.idle_when_converged and compute.wake_from == "last"
    assert (compute.patience, compute.patience_unit, compute.min_improvement) == (
        10,
        "observations",
        0.002,
    )
    assert not compute.budget_per_version.limited and not compute.budget_total.limited
    raw = dict(
        VALID,
        compute={"idle_when_converged": False, "patiense": 3, "wake_from": "first",
                 "budget_total": {"flops": -1}},
    )  # fmt: skip
    found = problems(raw)
    assert set(found) == {"compute.patiense", "compute.wake_from", "compute.budget_total.flops"}
    assert found["compute.patiense"] == "unknown key 'patiense'"
    ok = validate_job_spec(
        dict(VALID, compute={"idle_when_converged": False, "budget_per_version": {"steps": 500}}),
        max_workers=4,
    )
    assert not ok.compute.idle_when_converged and ok.compute.budget_per_version.steps == 500
