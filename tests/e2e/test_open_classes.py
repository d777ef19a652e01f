"""Open classes end to end, over REST: real Redis, a real MLflow server, a real local Ray.

A job declares its classes open (5 to start, up to 10, with names); digits 0-4 train first, then
digits 5-9 arrive in one push. The head grows by a generation of its own (add_classes) that keeps
the old classes' logits bit for bit, and predict answers the new classes by name after training.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from service.client import LifelongClient, LifelongError
from service.local.stack import Stack
from tests.e2e.conftest import wait_until
from workers.checkpoint import checkpoint_name, durable_root, load_checkpoint

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _logits(path: str, x: torch.Tensor) -> torch.Tensor:
    model = load_checkpoint(path, with_optimizer=False).model.eval()
    with torch.no_grad():
        out: torch.Tensor = model(x)
    return out


def test_a_new_class_over_rest_grows_the_head_and_is_predicted_by_name(
    stack: Stack, client: LifelongClient, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = digits
    train, held = slice(0, 1500), slice(1500, None)
    spec = {
        "name": "e2e-open-classes",
        "task": {
            "kind": "classification",
            "input_shape": [64],
            "num_classes": 5,
            "max_classes": 10,
            "class_names": NAMES,
        },
        "model": {"family": "mlp", "hidden": [32]},
        "optimizer": {"name": "adam", "lr": 0.01},
        "batch_size": 64,
        "compute": {"idle_when_converged": False},
    }
    job = client.create_job(spec)
    old = y[train] < 5
    client.push(job.id, x[train][old], y[train][old])
    wait_until(lambda: client.get_job(job.id).metrics.get("step", 0) >= 100, timeout=120,
               what="training on digits 0-4")  # fmt: skip

    # A label at max_classes is refused, naming the limit; nothing is stored.
    with pytest.raises(LifelongError) as refused:
        client.push(job.id, x[:2], np.array([3, 10]))
    assert refused.value.status_code == 422
    assert "[0, 10) (task.max_classes=10)" in str(refused.value)

    client.push(job.id, x[train][~old], y[train][~old])
    grown = wait_until(
        lambda: [g for g in client.generations(job.id).generations
                 if g.op and g.op["op"] == "add_classes"],
        timeout=90, what="the head's growth",
    )[0]  # fmt: skip
    assert grown.generation == 1 and grown.op is not None and grown.op["classes"] == 10
    assert grown.policy == "open_classes" and "class 9 arrived" in grown.reason
    assert grown.max_abs_error == 0.0

    # The closing copy of generation 0 and the opening one of generation 1, at the growth's step:
    # on fixed inputs the old classes' logits are the same, bit for bit.
    root = durable_root(str(stack.data_root), job.id)
    step = grown.started_step
    probe = torch.from_numpy(x[held][:64])
    before = _logits(f"{root}/{checkpoint_name(0, step)}", probe)
    after = _logits(f"{root}/{checkpoint_name(1, step)}", probe)
    assert before.shape == (64, 5) and after.shape == (64, 10)
    torch.testing.assert_close(after[:, :5], before, rtol=0, atol=0)

    # After training, predict names the new classes.
    new_held = y[held] >= 5

    def learned() -> float | None:
        answer = client.predict(job.id, x[held][new_held][:100])
        names = answer.class_names or []
        right = sum(n == NAMES[t] for n, t in zip(names, y[held][new_held][:100], strict=False))
        return right / 100 if answer.generation >= 1 and right >= 50 else None

    accuracy = wait_until(learned, timeout=90, what="predict to name the new classes")
    assert accuracy >= 0.5
    answer = client.predict(job.id, x[held][:5])
    assert answer.probabilities is not None and len(answer.probabilities[0]) == 10
    assert answer.class_names == [NAMES[i] for i in answer.predictions]

    # The growth is a run of its own in MLflow, with its op and reason.
    from mlflow.tracking import MlflowClient

    assert stack.mlflow is not None
    run_id = wait_until(
        lambda: client.generations(job.id).generations[1].mlflow_run_id, timeout=60,
        what="the growth's MLflow run",
    )  # fmt: skip
    tags = MlflowClient(tracking_uri=stack.mlflow.url).get_run(run_id).data.tags
    assert tags["lifelong.op"] == "add_classes" and tags["lifelong.reason"] == grown.reason
    client.stop(job.id)
