"""A language model end to end, through REST only: real Redis, a real MLflow server, a real local
Ray. A GPT job reads Shakespeare pushed as text, grows by a manual widen, writes back in JSON and
as Server-Sent Events, scores texts, and its closed generation has a text sample in MLflow."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from service.api.models import GeneratedToken, GenerateResult
from service.client import LifelongClient
from service.local.stack import Stack
from service.local.text_demo import CORPUS, speeches
from tests.e2e.conftest import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SPEC: dict[str, Any] = {
    "name": "e2e-shakespeare",
    "task": {"kind": "language_modeling", "context_length": 32},
    "model": {"family": "gpt", "n_layer": 1, "n_head": 2, "d_model": 32},
    "optimizer": {"name": "adamw", "lr": 3e-3},
    "batch_size": 16,
    "growth": {"policies": ["manual"]},  # this test grows it by hand
    "compute": {"idle_when_converged": False},
}


def _checkpointed(client: LifelongClient, job_id: str, generation: int) -> Any:
    listed = client.generations(job_id).generations
    found = [g for g in listed if g.generation == generation and g.checkpoint_step is not None]
    return found[0] if found else None


def test_a_language_model_reads_grows_and_writes(
    stack: Stack, client: LifelongClient, tmp_path: Path
) -> None:
    documents = speeches(CORPUS)[:1500]
    job = client.create_job(SPEC)
    pushed = client.push_text(job.id, documents[:-1])
    assert pushed.accepted == sum(len(d.encode()) for d in documents[:-1])
    assert 0 < pushed.accepted_val < pushed.accepted / 4  # about 10% of the speeches
    client.push_text(job.id, documents[-1])  # text/plain: one document

    wait_until(lambda: _checkpointed(client, job.id, 0), timeout=150,
               what="a checkpoint of generation 0")  # fmt: skip
    command = client.grow(job.id, "widen", factor=2)
    done = client.wait_command(job.id, command.id, timeout=120)
    assert done.status == "done", done.detail
    assert done.result is not None and done.result["generation"] == 1
    assert done.result["params_after"] > done.result["params_before"]
    grown = wait_until(lambda: _checkpointed(client, job.id, 1), timeout=120,
                       what="a checkpoint of generation 1")  # fmt: skip
    assert grown.max_abs_error is not None and grown.max_abs_error < 1e-4

    # Paused, the job writes no new checkpoint: every answer below comes from the same weights.
    pause = client.pause(job.id)
    assert client.wait_command(job.id, pause.id, timeout=120).status == "done"
    wait_until(lambda: client.get_job(job.id).status == "paused", timeout=60,
               what="the job to pause")  # fmt: skip
    options = {"max_new_tokens": 24, "temperature": 0.8, "seed": 5, "generation": 1}
    answer = client.generate(job.id, "ROMEO:", **options)
    assert answer.generation == 1 and len(answer.ids) == 24 and answer.prompt_tokens == 6
    *tokens, done_event = list(client.generate_stream(job.id, "ROMEO:", **options))
    assert isinstance(done_event, GenerateResult) and done_event.step == answer.step
    assert done_event.ids == answer.ids and done_event.text == answer.text
    assert [t.id for t in tokens if isinstance(t, GeneratedToken)] == answer.ids

    scored = client.score(job.id, ["First Citizen:\nBefore we proceed any further, hear me."])
    [score] = scored.predictions
    assert math.isfinite(score["loss"]) and score["perplexity"] == pytest.approx(
        math.exp(score["loss"]), rel=1e-6
    )
    assert score["perplexity"] < 256  # better than a uniform guess over the bytes

    stop = client.stop(job.id)
    assert client.wait_command(job.id, stop.id, timeout=120).status == "done"
    _check_mlflow(stack, client, job.id, tmp_path)


def _check_mlflow(stack: Stack, client: LifelongClient, job_id: str, folder: Path) -> None:
    """Generation 0's run holds its validation loss, perplexity and tokens seen, and the text
    sample written when it closed."""
    from mlflow.tracking import MlflowClient

    assert stack.mlflow is not None
    mlflow = MlflowClient(tracking_uri=stack.mlflow.url)

    def sampled() -> str | None:
        run = client.generations(job_id).generations[0].mlflow_run_id
        if run is None:
            return None
        files = {a.path for a in mlflow.list_artifacts(run, "samples")}
        return run if "samples/generation-0.txt" in files else None

    run = wait_until(sampled, timeout=90, what="generation 0's text sample in MLflow")
    local = mlflow.download_artifacts(run, "samples/generation-0.txt", str(folder))
    text = Path(local).read_text(encoding="utf-8")
    assert text.startswith("generation 0, step ") and len(text) > 300
    for key in ("val_loss", "val_perplexity", "tokens_seen"):
        history = mlflow.get_metric_history(run, key)
        assert history, f"generation 0 has no {key}"
    losses = mlflow.get_metric_history(run, "val_loss")
    perplexities = {m.step: m.value for m in mlflow.get_metric_history(run, "val_perplexity")}
    for point in losses:
        if point.step in perplexities:
            assert perplexities[point.step] == pytest.approx(math.exp(point.value), rel=1e-3)


def test_the_text_demo_on_the_stack(stack: Stack, tmp_path: Path) -> None:
    """`lifelong demo --text`, short: two stages of Shakespeare, the live view, the table, a sample
    of what the newest generation writes and the plot."""
    import io

    from rich.console import Console

    from service.local.text_demo import TextDemoConfig, run_text_demo

    out = io.StringIO()
    console = Console(file=out, width=100, force_terminal=False)
    cfg = TextDemoConfig(
        workdir=tmp_path / "demo", stages=(1 / 64, 1 / 32), stage_seconds=6.0, final_seconds=12.0,
        context_length=32, n_layer=1, sample_tokens=48,
    )  # fmt: skip
    result = run_text_demo(cfg, console, stack)
    text = out.getvalue()
    assert "Generations" in text and "val perplexity" in text
    assert Path(result["plot"]).stat().st_size > 10_000
    assert result["generations"][0]["op"] is None
    assert result["samples"], "no generation wrote a sample"
    newest = result["samples"][-1]
    assert newest["text"].startswith("\n") and len(newest["text"].encode()) >= 48
    assert f"generation {newest['generation']} writes:" in text
    # Held-out speeches: well below the 256 of a uniform guess over the bytes.
    assert result["final_val_perplexity"] is not None and result["final_val_perplexity"] < 40
