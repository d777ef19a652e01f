"""Growth defaults per task kind: a language-modelling job starts with shrink-and-perturb off, a
classifier keeps it on, and whatever a job spec sets wins over its task's defaults."""

from __future__ import annotations

from typing import Any

from growth_policy import GrowthPolicyConfig, growth_config_for_task, with_task_defaults
from growth_policy.config import TASK_DEFAULTS
from service.jobs.spec import JobSpec, validate_job_spec

LM_SPEC: dict[str, Any] = {
    "name": "writer",
    "task": {"kind": "language_modeling", "context_length": 16},
    "model": {"family": "gpt", "n_layer": 1, "n_head": 2, "d_model": 16},
}
CLASSIFIER_SPEC: dict[str, Any] = {
    "name": "digits",
    "task": {"kind": "classification", "input_shape": [8], "num_classes": 3},
    "model": {"family": "mlp", "hidden": [16]},
}


def test_language_modelling_starts_without_shrink_and_perturb() -> None:
    assert TASK_DEFAULTS["language_modeling"] == {
        "shrink_perturb": {"enabled": False},
        "strategy": "alternate",
        "guards": {"cooldown_steps": 100},
    }
    lm = validate_job_spec(LM_SPEC, max_workers=4).growth
    assert lm.shrink_perturb.enabled is False
    # Nothing else moves: the language model's policy is the default but for those fields.
    plain = GrowthPolicyConfig().model_dump()
    plain["shrink_perturb"]["enabled"] = False
    plain["strategy"] = "alternate"
    plain["guards"]["cooldown_steps"] = 100
    assert lm.model_dump() == plain
    assert validate_job_spec(CLASSIFIER_SPEC, max_workers=4).growth == GrowthPolicyConfig()


def test_the_spec_wins_over_its_task_defaults() -> None:
    on = validate_job_spec(
        {**LM_SPEC, "growth": {"shrink_perturb": {"enabled": True, "shrink": 0.5}}}, max_workers=4
    ).growth
    assert (on.shrink_perturb.enabled, on.shrink_perturb.shrink) == (True, 0.5)
    # A sibling field set alone keeps the task's default for the others in its section.
    shrink = validate_job_spec(
        {**LM_SPEC, "growth": {"shrink_perturb": {"shrink": 0.5}, "strategy": "widen"}},
        max_workers=4,
    ).growth
    assert (shrink.shrink_perturb.enabled, shrink.shrink_perturb.shrink) == (False, 0.5)
    assert shrink.strategy == "widen"


def test_a_stored_spec_reads_back_the_same() -> None:
    for raw in (LM_SPEC, {**LM_SPEC, "growth": {"shrink_perturb": {"enabled": True}}}):
        spec = validate_job_spec(raw, max_workers=4)
        assert JobSpec.model_validate(spec.model_dump()) == spec
        assert JobSpec.model_validate_json(spec.model_dump_json()) == spec


def test_the_helpers() -> None:
    assert with_task_defaults("classification", None) == {}
    assert with_task_defaults("language_modeling", {"guards": {"max_params": 7}}) == {
        "shrink_perturb": {"enabled": False},
        "strategy": "alternate",
        "guards": {"cooldown_steps": 100, "max_params": 7},
    }
    assert growth_config_for_task("regression") == GrowthPolicyConfig()
    assert growth_config_for_task("language_modeling").shrink_perturb.enabled is False
