"""GrowthPolicyConfig: defaults, unknown keys, and every cross-field error in one message."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

import net2net
from growth_policy import GrowthPolicyConfig


def test_defaults_are_valid_and_round_trip_through_json() -> None:
    cfg = GrowthPolicyConfig()
    # Chosen by measurement on the stream benchmark (docs/learning.md).
    assert cfg.policies == ["data_scaling"]
    assert cfg.data_scaling.coefficient == 3.0
    assert cfg.shrink_perturb.enabled
    assert (cfg.shrink_perturb.shrink, cfg.shrink_perturb.perturb) == (0.8, 0.01)
    assert cfg.widen.init == "random_zero"
    assert cfg.guards.max_generations == 20
    assert cfg.strategy == "auto"
    assert cfg.guards.warmup_passes == 1.0
    again = GrowthPolicyConfig.model_validate_json(cfg.model_dump_json())
    assert again == cfg


def test_unknown_keys_are_rejected_at_every_level() -> None:
    with pytest.raises(ValidationError) as info:
        GrowthPolicyConfig.model_validate({"bogus": 1, "widen": {"factr": 2}})
    text = str(info.value)
    assert "bogus" in text
    assert "widen.factr" in text


def test_cross_field_errors_are_collected_into_one_message() -> None:
    with pytest.raises(ValidationError) as info:
        GrowthPolicyConfig.model_validate(
            {
                "policies": ["nope", "plateau", "plateau", "schedule"],
                "widen": {"factor": 8.0},
                "schedule": {"at_steps": [500, 100]},
            }
        )
    errors = info.value.errors()
    assert len(errors) == 1
    text = str(info.value)
    assert "unknown 'nope'" in text
    assert "each policy may appear once" in text
    assert "1.25 <= 8.0 <= 4.0" in text
    assert "schedule.at_steps: values must be increasing" in text


def test_schedule_policy_needs_thresholds() -> None:
    with pytest.raises(ValidationError, match="needs at_dataset_sizes or at_steps"):
        GrowthPolicyConfig(policies=["schedule"])
    cfg = GrowthPolicyConfig.model_validate(
        {"policies": ["schedule"], "schedule": {"at_dataset_sizes": [2000, 4000]}}
    )
    assert cfg.schedule.at_dataset_sizes == [2000, 4000]


def test_empty_policies_is_an_error() -> None:
    with pytest.raises(ValidationError, match="name at least one"):
        GrowthPolicyConfig(policies=[])


def test_widen_init_is_checked_against_net2net_modes() -> None:
    modes = net2net.init_modes()
    assert GrowthPolicyConfig().widen.init in modes
    with pytest.raises(ValidationError, match=r"widen\.init: unknown mode 'bogus'; net2net has"):
        GrowthPolicyConfig.model_validate({"widen": {"init": "bogus"}})
    no_noise = [name for name, mode in modes.items() if not mode.get("noise", True)]
    assert "random_zero" in no_noise
    with pytest.raises(ValidationError, match="init 'random_zero' takes no noise"):
        GrowthPolicyConfig.model_validate({"widen": {"init": "random_zero", "noise": 0.1}})


def test_importing_growth_policy_loads_no_torch() -> None:
    code = "import sys, growth_policy; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
