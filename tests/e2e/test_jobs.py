"""Jobs end to end, through REST only: real Redis, a real MLflow server, a real local Ray."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from service.client import LifelongClient, LifelongError
from service.local.stack import Stack
from tests.e2e.conftest import digits_job, wait_until
from tests.service.test_releases import predict_in_clean_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_stages_policy_and_manual_growth_tracked_in_mlflow(
    stack: Stack, client: LifelongClient, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = digits
    # Samples from 1500 on are never pushed: predictions are scored on them.
    spec = {**digits_job("e2e-digits", workers=2), "release": {"margin": 0.0, "every_s": 5}}
    job = client.create_job(spec)
    assert job.status == "pending"

    # Stage 1, then wait until it trains on it.
    client.push(job.id, x[:600], y[:600])
    wait_until(lambda: client.get_job(job.id).status == "training", timeout=120,
               what="the job to train")  # fmt: skip
    # Stages 2 and 3: the data outgrows the base model and the default policy grows it.
    client.push(job.id, x[600:1100], y[600:1100])
    client.push(job.id, x[1100:1500], y[1100:1500])
    grown = wait_until(
        lambda: [g for g in client.generations(job.id).generations
                 if g.op and g.op["op"] in ("widen", "deepen")],
        timeout=180, what="a growth decided by the policy",
    )  # fmt: skip
    by_policy = grown[0]
    assert by_policy.policy in ("data_scaling", "plateau")
    assert by_policy.op is not None and by_policy.op["op"] in ("widen", "deepen")
    assert by_policy.max_abs_error is not None and by_policy.max_abs_error < 1e-4
    assert by_policy.val_metric_after == pytest.approx(by_policy.val_metric_before, abs=0.005)

    # One manual growth through the same path.
    before = client.get_job(job.id)
    command = client.grow(job.id, "widen", factor=2)
    done = client.wait_command(job.id, command.id, timeout=120)
    assert done.status == "done", done.detail
    assert done.result is not None
    assert done.result["generation"] > before.generation
    assert done.result["params_after"] > done.result["params_before"]
    manual = done.result["generation"]
    # And a shrink-and-perturb, whose dip must never become the champion.
    command = client.grow(job.id, "shrink_perturb", shrink=0.3, perturb=0.05)
    done = client.wait_command(job.id, command.id, timeout=120)
    assert done.status == "done", done.detail
    assert done.result is not None
    perturbed = done.result["generation"]
    at = client.get_job(job.id).metrics["step"]
    wait_until(lambda: client.get_job(job.id).metrics["step"] > at + 400, timeout=120,
               what="training after the shrink-and-perturb")  # fmt: skip

    # Pause: no step and no growth until resumed, so the generations hold still for the checks.
    pause = client.pause(job.id)
    assert client.wait_command(job.id, pause.id, timeout=120).status == "done"
    paused = wait_until(
        lambda: (j := client.get_job(job.id)).status == "paused" and j, timeout=60,
        what="the job to pause",
    )  # fmt: skip
    newest = paused.generation
    assert newest >= manual

    # The API lists every generation with its lineage, and MLflow has them all once drained.
    seen: list[object] = []

    def tracked() -> object:
        listed = client.generations(job.id)
        seen[:] = [(g.generation, g.mlflow_run_id, g.model_version) for g in listed.generations]
        # Every generation has its run; every closed one its final release, registered.
        ok = len(listed.generations) == newest + 1 and all(
            g.mlflow_run_id and (g.model_version or g.generation == newest)
            for g in listed.generations
        )
        return listed if ok else None

    try:
        listed = wait_until(tracked, timeout=120, what="every generation tracked in MLflow")
    except AssertionError:
        job_now = client.get_job(job.id)
        raise AssertionError(f"generations {seen}; job {job_now.status} {job_now.reason}") from None
    gens = listed.generations
    assert [g.generation for g in gens] == list(range(newest + 1))
    assert [g.parent for g in gens] == [None, *range(newest)]
    assert gens[manual].policy == "manual"
    assert client.get_job(job.id).metrics["step"] == paused.metrics["step"]  # still paused

    from mlflow.tracking import MlflowClient

    assert stack.mlflow is not None
    mlflow = MlflowClient(tracking_uri=stack.mlflow.url)
    for g in gens:
        run = mlflow.get_run(g.mlflow_run_id)
        tags = run.data.tags
        assert tags["lifelong.generation"] == str(g.generation)
        assert tags["lifelong.op"] == (g.op["op"] if g.op else "base")
        assert tags["lifelong.reason"] == g.reason
        if g.generation:
            assert tags["mlflow.parentRunId"] == gens[g.generation - 1].mlflow_run_id
        if g.op and g.op["op"] in ("widen", "deepen"):  # shrink-and-perturb is not exact
            assert "lifelong.max_abs_error" in tags, (g, tags)
            assert float(tags["lifelong.max_abs_error"]) == pytest.approx(g.max_abs_error, rel=1e-2)
        assert run.data.params["param_count"] == str(g.param_count)
        history = mlflow.get_metric_history(g.mlflow_run_id, "train_loss")
        assert history, f"generation {g.generation} has no train_loss history"
        assert all(m.step >= g.started_step for m in history)
        artifacts = {a.path for a in mlflow.list_artifacts(g.mlflow_run_id)}
        assert "checkpoint" in artifacts
        if g.generation < newest:
            version = mlflow.get_model_version(listed.model_name, g.model_version)
            assert version.run_id == g.mlflow_run_id
            assert version.tags["lifelong.checkpoint_kind"] == "close"
            named = mlflow.get_model_version_by_alias(
                listed.model_name, f"generation-{g.generation}"
            )
            assert named.version == g.model_version
    assert gens[perturbed].op is not None and gens[perturbed].op["op"] == "shrink_perturb"
    champion = check_releases(stack, mlflow, listed.model_name, job.id, gens)

    # Predictions come from the champion and are good on samples the job never trained on.
    def predicted() -> object:
        answer = client.predict(job.id, x[1500:1700])
        return answer if answer.version == champion.version else None

    answer = wait_until(predicted, timeout=60, what="predictions from the champion")
    assert answer.alias == "champion"
    accuracy = float(np.mean(np.asarray(answer.predictions) == y[1500:1700]))
    assert accuracy > 0.8, accuracy  # unseen digits
    assert len(answer.probabilities or []) == 200
    # A user with only mlflow and torch loads the champion and gets the same numbers.
    loaded = predict_in_clean_env(stack.mlflow.url, f"models:/{listed.model_name}@champion",
                                  x[1500:1600], stack.workdir / "clean-env")  # fmt: skip
    difference = float(np.abs(loaded - np.asarray(answer.probabilities[:100])).max())
    assert difference <= 1e-6, difference
    print(
        f"champion v{champion.version}: unseen accuracy {accuracy:.3f}, clean env {difference:.1e}"
    )

    # The weights and architecture of a generation rebuild the same model.
    from safetensors.torch import load as load_safetensors

    from workers.checkpoint import rebuild_model
    from workers.spec import ModelSpec, TaskSpec

    arch = client.architecture(job.id, generation=newest)
    transforms = [g for g in gens if g.op and g.op["op"] in ("widen", "deepen")]
    assert arch["generation"] == newest and len(arch["records"]) == len(transforms)
    model = rebuild_model(
        TaskSpec.model_validate(arch["task"]), ModelSpec.model_validate(arch["model"]),
        arch["records"],
    )  # fmt: skip
    model.load_state_dict(load_safetensors(client.model_weights(job.id, generation=newest)))
    assert sum(p.numel() for p in model.parameters()) == gens[-1].param_count

    resume = client.resume(job.id)
    assert client.wait_command(job.id, resume.id, timeout=120).status == "done"
    wait_until(lambda: client.get_job(job.id).metrics["step"] > paused.metrics["step"],
               timeout=60, what="training to go on after resume")  # fmt: skip

    stop = client.stop(job.id)
    assert client.wait_command(job.id, stop.id, timeout=120).status == "done"
    wait_until(lambda: client.get_job(job.id).status == "stopped", timeout=120,
               what="the job to stop")  # fmt: skip

    # Deleting the stopped job (once its supervisor has let go) removes its data and Ray
    # checkpoints; MLflow keeps its runs and model versions.
    assert (stack.data_root / job.id / "shards").is_dir()
    assert (stack.data_root / "_ray" / f"lifelong-{job.id}").is_dir()

    def deleted() -> object:
        try:
            return client.delete_job(job.id)
        except LifelongError as exc:
            # Its supervisor (or the API's sweeper) may still be logging its last MLflow ops.
            waiting = ("its lease is held", "MLflow operations waiting")
            assert exc.status_code == 409 and any(w in exc.detail for w in waiting), exc.detail
            return None

    outcome = wait_until(deleted, timeout=60, what="the stopped job to be deleted")
    assert outcome.data_removed and outcome.checkpoints_removed and outcome.redis_keys > 5
    assert not (stack.data_root / job.id).exists()
    assert not (stack.data_root / "_ray" / f"lifelong-{job.id}").exists()
    assert job.id not in [j.id for j in client.list_jobs().jobs]
    assert mlflow.get_run(gens[-1].mlflow_run_id).info.run_id == gens[-1].mlflow_run_id
    assert mlflow.get_model_version(listed.model_name, champion.version).run_id == champion.run_id
    assert mlflow.get_model_version_by_alias(listed.model_name, "champion").version


def check_releases(stack: Stack, mlflow: Any, model_name: str, job_id: str, gens: list[Any]) -> Any:
    """Every registered version is a trained checkpoint (its weights equal it, it is no
    generation's opening copy) and the champion has the best validation metric."""
    from safetensors.torch import load_file

    from service.runtime.releases import Release
    from service.state.store import RedisStore

    versions = mlflow.search_model_versions(f"name = '{model_name}'")
    assert versions
    assert stack.redis is not None
    store = RedisStore(stack.redis.url, stack.api_env["LIFELONG_KEY_PREFIX"])
    try:
        raw = store.client.hgetall(store.keys.releases(job_id))
    finally:
        store.close()
    releases = {r.version: r for r in (Release.from_json(v) for k, v in raw.items()
                                       if str(k).isdigit())}  # fmt: skip
    openings = {(g.generation, g.started_step) for g in gens if g.generation}
    for version in versions:
        release = releases[version.version]
        checkpoint = Path(release.path)
        meta = json.loads((checkpoint / "meta.json").read_text())
        assert meta["kind"] in ("periodic", "close", "final"), meta["kind"]
        key = (meta["generation"], meta["step"])
        assert str(key[1]) == version.tags["lifelong.step"]
        assert key not in openings or meta["kind"] == "close", (version.version, key)
        local = mlflow.download_artifacts(version.run_id, release.dest, str(stack.workdir / "dl"))
        registered = load_file(Path(local) / "artifacts" / "model.safetensors")
        trained = load_file(checkpoint / "model.safetensors")
        assert registered.keys() == trained.keys()
        for name, tensor in trained.items():
            assert torch.equal(registered[name], tensor), (version.version, name)
    champion = mlflow.get_model_version_by_alias(model_name, "champion")
    best = max(float(v.tags["lifelong.val_accuracy"]) for v in versions)
    assert float(champion.tags["lifelong.val_accuracy"]) == best
    return champion


def test_api_restart_during_training(
    stack: Stack, client: LifelongClient, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = digits
    # Training must go on through the restart: no waiting when converged (the old behaviour).
    spec = {**digits_job("e2e-restart"), "compute": {"idle_when_converged": False}}
    job = client.create_job(spec)
    client.push(job.id, x[:800], y[:800])
    wait_until(lambda: (client.get_job(job.id).metrics or {}).get("step", 0) > 100,
               timeout=120, what="training steps")  # fmt: skip
    step_before = client.get_job(job.id).metrics["step"]

    stack.restart_api(kill=True)  # SIGKILL: no shutdown handler runs
    assert stack.api is not None
    with LifelongClient(stack.api.url, api_key=stack.admin_key) as fresh:
        listed = {j.id: j for j in fresh.list_jobs().jobs}
        assert job.id in listed
        assert listed[job.id].status in ("training", "waiting_for_data")
        # Training went on without the API, and goes on after it.
        wait_until(lambda: fresh.get_job(job.id).metrics["step"] > step_before + 100,
                   timeout=120, what="steps after the API restart")  # fmt: skip
        # The restarted API still drives the job: its commands reach the supervisor.
        stop = fresh.stop(job.id)
        assert fresh.wait_command(job.id, stop.id, timeout=120).status == "done"
