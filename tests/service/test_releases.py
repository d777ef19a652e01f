"""Releases end to end without Ray: the ledger releases trained checkpoints, the tracker registers
them in a real MLflow server as pyfunc models with tags and aliases, the API's /predict serves the
champion, and a clean environment with only mlflow and torch loads and predicts the same."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from growth_policy import Observation
from service.client import LifelongClient
from service.jobs.spec import validate_job_spec
from service.local.processes import MlflowServer
from service.runtime.generations import GenerationLedger
from service.runtime.releases import Release
from service.runtime.tracking import MlflowTracker
from service.state.store import RedisStore
from tests.clean_env import clean_python
from tests.service.conftest import JOB_SPEC, LiveServer
from workers.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from workers.models import build_model
from workers.sources import CheckpointEvent
from workers.spec import OptimizerSpec

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SPEC = {**JOB_SPEC, "release": {"every": 0, "every_s": 0, "margin": 0.01}}
# (generation, step, kind, validation accuracy); generation 2 opens with a shrink-and-perturb.
HISTORY = [(0, 100, "periodic", 0.60), (0, 200, "close", 0.75), (1, 300, "periodic", 0.80),
           (1, 400, "close", 0.85), (2, 500, "periodic", 0.50), (2, 600, "final", 0.855)]  # fmt: skip


def _trained(folder: Path, job_id: str, generation: int, step: int) -> Path:
    """A checkpoint of a model with its own random weights (seeded by the step)."""
    spec = validate_job_spec(SPEC, max_workers=4)
    torch.manual_seed(step)
    model = build_model(spec.model, spec.task)
    meta = CheckpointMeta(job_id=job_id, kind="periodic", task=spec.task, model=spec.model,
                          optimizer=OptimizerSpec(), step=step, generation=generation,
                          generation_step=step, samples_seen=step * 32, passes=1,
                          manifest_version=1, dataset_size=100, param_count=0, world_size=1)  # fmt: skip
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.zeros(2, 8)).sum().backward()
    optimizer.step()  # the checkpoint holds optimizer state, as a training loop's does
    return save_checkpoint(
        folder / f"g{generation}-s{step}", model=model, optimizer=optimizer, meta=meta
    )


def run_history(ledger: GenerationLedger, folder: Path) -> dict[int, Path]:
    made: dict[int, Path] = {}
    for generation, step, kind, accuracy in HISTORY:
        if ledger.get(generation) is None:
            ledger.close(generation - 1, step=step - 100)
            ledger.open(generation, parent=generation - 1 if generation else None,
                        op={"op": "shrink_perturb" if generation == 2 else "widen"} if generation
                        else None, reason="test", policy="manual", step=step - 100,
                        param_count=100)  # fmt: skip
        ledger.observed(Observation(step=step, generation=generation, generation_step=step,
                                    samples_seen=step * 32, passes=1.0, dataset_size=100,
                                    train_loss=0.5, val_metric=accuracy, param_count=100,
                                    wall_time=float(step)))  # fmt: skip
        path = _trained(folder, ledger.job_id, generation, step)
        made[step] = path
        ledger.checkpointed(CheckpointEvent(
            kind=kind, step=step, generation=generation, param_count=100,  # type: ignore[arg-type]
            manifest_version=1, path=str(path), durable=kind != "periodic", seconds=0.1,
            wall_time=float(step),
        ))  # fmt: skip
    return made


def test_trained_versions_registered_served_and_loaded_without_lifelong(
    mlflow_server: MlflowServer,
    server: LiveServer,
    client: LifelongClient,
    store: RedisStore,
    tmp_path: Path,
) -> None:
    from mlflow.tracking import MlflowClient

    job = client.create_job(SPEC)
    spec = validate_job_spec(SPEC, max_workers=4)
    tracker = MlflowTracker.for_job(store.client, store.keys, job_id=job.id, job_name=job.name,
                                    tracking_uri=mlflow_server.url)  # fmt: skip
    ledger = GenerationLedger(store, job.id, tracker=tracker, spec=spec,
                              data_root=str(server.data_root))  # fmt: skip
    made = run_history(ledger, tmp_path / "ckpt")
    tracker.start()
    try:
        assert tracker.flush(240), tracker.status()
    finally:
        tracker.stop()
    assert tracker.status().dropped == 0

    mlflow = MlflowClient(tracking_uri=mlflow_server.url)
    experiment = mlflow.get_experiment_by_name(tracker.experiment_name)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    versions = sorted(mlflow.search_model_versions(f"name = '{tracker.model_name}'"),
                      key=lambda v: int(v.version))  # fmt: skip
    steps = [int(v.tags["lifelong.step"]) for v in versions]
    assert steps == [step for _, step, _, _ in HISTORY]  # every trained checkpoint, in order
    champion = mlflow.get_model_version_by_alias(tracker.model_name, "champion")
    assert champion.tags["lifelong.step"] == "400"  # 0.855 at step 600 is within the margin
    assert champion.tags["lifelong.val_accuracy"] == "0.85"
    assert champion.tags["lifelong.parent_version"] == str(int(champion.version) - 1)
    assert champion.tags["lifelong.growth_op"] == "widen"
    assert champion.tags["lifelong.samples_seen"] == str(400 * 32)
    for generation, final_step in ((0, 200), (1, 400), (2, 600)):
        named = mlflow.get_model_version_by_alias(tracker.model_name, f"generation-{generation}")
        assert named.tags["lifelong.step"] == str(final_step)
    # The lineage is a tree under the job's run, and each closed generation drew the story.
    runs = tracker.run_ids()
    job_run = mlflow.search_runs([experiment.experiment_id], "tags.`lifelong.job_run` = 'true'")
    assert len(job_run) == 1
    parents = [mlflow.get_run(runs[g]).data.tags["mlflow.parentRunId"] for g in range(3)]
    assert parents == [job_run[0].info.run_id, runs[0], runs[1]]
    assert job_run[0].info.status == "FINISHED"  # the job's final checkpoint ended it
    for run_id in (runs[0], runs[1], job_run[0].info.run_id):
        assert [a.path for a in mlflow.list_artifacts(run_id, "plots")] == ["plots/story.png"]
    # A periodic checkpoint (Ray's, not durable) is copied for its release without the optimizer.
    releases = [Release.from_json(v) for k, v in
                store.client.hgetall(store.keys.releases(job.id)).items() if str(k).isdigit()]  # fmt: skip
    copies = [Path(r.path) for r in releases if r.kind == "periodic"]
    assert len(copies) == 3 and all("/tracked/" in str(c) for c in copies)
    for copy in copies:
        assert sorted(f.name for f in copy.iterdir()) == ["meta.json", "model.safetensors"]
    # Each version's weights are its checkpoint's.
    import mlflow as mlflow_module

    mlflow_module.set_tracking_uri(mlflow_server.url)
    for version in versions:
        local = mlflow_module.artifacts.download_artifacts(
            f"models:/{tracker.model_name}/{version.version}", dst_path=str(tmp_path / "dl")
        )
        weights = load_file(Path(local) / "artifacts" / "model.safetensors")
        trained = load_checkpoint(made[int(version.tags["lifelong.step"])]).model.state_dict()
        assert weights.keys() == trained.keys()
        for name, tensor in trained.items():
            torch.testing.assert_close(weights[name], tensor, rtol=0, atol=0)

    # The API's /predict answers from the champion; the clean environment agrees within 1e-6.
    x = np.random.default_rng(1).standard_normal((100, 8)).astype(np.float32)
    answer = client.predict(job.id, x)
    assert (answer.alias, answer.version, answer.step) == ("champion", champion.version, 400)
    named = client.predict(job.id, x[:3], generation=2)
    assert (named.alias, named.step) == ("generation-2", 600)
    loaded = predict_in_clean_env(mlflow_server.url, f"models:/{tracker.model_name}@champion",
                                   x, tmp_path)  # fmt: skip
    expected = np.asarray(answer.probabilities)
    assert loaded.shape == expected.shape == (100, 4)
    assert float(np.abs(loaded - expected).max()) <= 1e-6

    # `lifelong export` writes generation 2 as ONNX; onnxruntime agrees with its /predict.
    import onnxruntime as ort
    from typer.testing import CliRunner

    from service.client.cli import app

    runner = CliRunner(env={"LIFELONG_API_URL": server.url, "COLUMNS": "200"})
    out = tmp_path / "model.onnx"
    done = runner.invoke(app, ["export", job.id, str(out), "--format", "onnx", "--generation", "2"])
    assert done.exit_code == 0, done.output
    (logits,) = ort.InferenceSession(str(out)).run(None, {"features": x[:3]})
    onnx_probs = torch.softmax(torch.from_numpy(logits), dim=-1).numpy()
    assert float(np.abs(onnx_probs - np.asarray(named.probabilities)).max()) <= 1e-5


def predict_in_clean_env(uri: str, model: str, x: np.ndarray, tmp_path: Path) -> np.ndarray:
    """Predictions of ``model`` in a venv with only mlflow and torch, run from an empty folder."""
    work = tmp_path / "clean"
    work.mkdir(parents=True, exist_ok=True)
    np.save(work / "x.npy", x)
    script = textwrap.dedent(f"""
        import importlib.util, json, sys
        import mlflow, numpy as np
        assert importlib.util.find_spec("service") is None, "Lifelong is importable"
        assert importlib.util.find_spec("workers") is None, "Lifelong is importable"
        mlflow.set_tracking_uri({uri!r})
        model = mlflow.pyfunc.load_model({model!r})
        assert model.metadata.signature is not None
        np.save("y.npy", np.asarray(model.predict(np.load("x.npy"))))
        print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("service", "workers"))))
    """)  # fmt: skip
    done = subprocess.run(
        [str(clean_python()), "-c", script], check=False, cwd=work, capture_output=True, text=True,
        timeout=600, env={"PATH": "/usr/bin:/bin", "HOME": str(work),
                          "MLFLOW_DISABLE_TELEMETRY": "true"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
    return np.load(work / "y.npy")
