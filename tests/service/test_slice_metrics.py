"""An observation's slice numbers become MLflow metrics of the generation's run."""

from __future__ import annotations

from growth_policy.types import Observation
from service.runtime.generations import slice_metrics


def _obs(**kw: object) -> Observation:
    base: dict[str, object] = {"step": 100, "generation": 1, "generation_step": 10,
                               "samples_seen": 1000, "passes": 1.0, "dataset_size": 500,
                               "train_loss": 0.5, "param_count": 100}  # fmt: skip
    return Observation.model_validate({**base, **kw})


def test_slice_numbers_are_metrics_with_each_carried_slice() -> None:
    obs = _obs(
        forgetting=0.25,
        average_forgetting=0.1,
        backward_transfer=-0.05,
        drift=2.5,
        slice_count=3,
        slices={"v1": {"loss": 0.4, "metric": 0.9, "best": 0.95, "samples": 40.0},
                "v4": {"loss": 1.2, "metric": 0.6, "best": 0.6, "samples": 35.0}},
    )  # fmt: skip
    assert slice_metrics(obs) == {
        "forgetting": 0.25,
        "average_forgetting": 0.1,
        "backward_transfer": -0.05,
        "drift": 2.5,
        "slices": 3.0,
        "slice_v1_accuracy": 0.9,
        "slice_v4_accuracy": 0.6,
    }


def test_without_slices_nothing_is_logged() -> None:
    assert {k: v for k, v in slice_metrics(_obs()).items() if v is not None} == {}
