"""POST /generate and text scoring by /predict, against a live API (no Ray): a language-modelling job
whose generation 0 has a checkpoint of a small GPT; the answers equal ``workers.text`` run on the
same weights, in JSON and streamed token by token; the refusals name the problem."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from service.api.models import GeneratedToken
from service.client import LifelongClient, LifelongError
from service.client.http import sse_frames
from service.jobs.spec import validate_job_spec
from service.runtime.generations import GenerationLedger
from service.runtime.tracking import MlflowTracker
from service.state.store import RedisStore
from tests.service.conftest import JOB_SPEC, LiveServer
from workers.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from workers.models import build_model
from workers.sources import CheckpointEvent
from workers.spec import OptimizerSpec
from workers.text import decode_tokens, encode_text, generate, score

pytestmark = pytest.mark.integration

LM_SPEC: dict[str, Any] = {
    "name": "writer",
    "task": {"kind": "language_modeling", "context_length": 16},
    "model": {"family": "gpt", "n_layer": 1, "n_head": 2, "d_model": 16},
}


def lm_checkpoint(folder: Path, job_id: str) -> Path:
    """A checkpoint of generation 0 of a GPT of random weights (seeded), at step 10."""
    spec = validate_job_spec(LM_SPEC, max_workers=4)
    torch.manual_seed(0)
    model = build_model(spec.model, spec.task)
    meta = CheckpointMeta(job_id=job_id, kind="periodic", task=spec.task, model=spec.model,
                          optimizer=OptimizerSpec(), step=10, generation=0, generation_step=10,
                          samples_seen=640, passes=1, manifest_version=1, dataset_size=100,
                          param_count=0, world_size=1)  # fmt: skip
    return save_checkpoint(folder / "g0-s10", model=model, optimizer=None, meta=meta)


def lm_ledger(store: RedisStore, job_id: str, data_root: Path) -> GenerationLedger:
    """The job's ledger as its supervisor has it (the tracker queues; nothing drains it)."""
    tracker = MlflowTracker.for_job(store.client, store.keys, job_id=job_id, job_name="writer",
                                    tracking_uri="unused: producers never call MLflow")  # fmt: skip
    spec = validate_job_spec(LM_SPEC, max_workers=4)
    ledger = GenerationLedger(store, job_id, tracker=tracker, spec=spec, data_root=str(data_root))
    ledger.open(0, parent=None, op=None, reason="base model", policy="base", step=0,
                param_count=100)  # fmt: skip
    return ledger


def _event(path: Path | str, kind: str = "periodic") -> CheckpointEvent:
    return CheckpointEvent(kind=kind, step=10, generation=0, param_count=100,  # type: ignore[arg-type]
                           manifest_version=1, path=str(path), durable=True, seconds=0.1)  # fmt: skip


def serve_checkpoint(store: RedisStore, server: LiveServer, job_id: str, folder: Path) -> Path:
    """Generation 0 of the job, with one checkpoint (see :func:`lm_checkpoint`)."""
    path = lm_checkpoint(folder, job_id)
    lm_ledger(store, job_id, server.data_root).checkpointed(_event(path))
    return path


@pytest.fixture
def lm_job(client: LifelongClient, store: RedisStore, server: LiveServer, tmp_path: Path) -> Any:
    job = client.create_job(LM_SPEC)
    path = serve_checkpoint(store, server, job.id, tmp_path / "ckpt")
    return job.id, load_checkpoint(path, with_optimizer=False)


def test_generate_answers_what_the_model_writes(client: LifelongClient, lm_job: Any) -> None:
    job, loaded = lm_job
    task = loaded.meta.task
    prompt = "ROMEO: ✓"
    answer = client.generate(job, prompt, max_new_tokens=20, temperature=0.8, top_k=40, seed=7)
    expected = list(generate(loaded.model, encode_text(prompt, task).tolist(), max_new_tokens=20,
                             temperature=0.8, top_k=40, seed=7, context_length=16))  # fmt: skip
    assert answer.ids == expected
    assert answer.text == decode_tokens(expected, task)
    assert answer.prompt_tokens == len(prompt.encode()) and answer.generation == 0
    assert answer.step == 10 and answer.release is None
    # The same seed gives the same tokens; greedy needs none; ids are a prompt too.
    assert (
        client.generate(job, prompt, max_new_tokens=20, temperature=0.8, top_k=40, seed=7) == answer
    )
    greedy = client.generate(job, list(prompt.encode()), max_new_tokens=5, temperature=0)
    assert greedy.ids == list(generate(loaded.model, list(prompt.encode()), max_new_tokens=5,
                                       temperature=0.0, context_length=16))  # fmt: skip


def test_generate_streams_token_by_token(
    client: LifelongClient, server: LiveServer, lm_job: Any
) -> None:
    job, _ = lm_job
    whole = client.generate(job, "To be", max_new_tokens=12, seed=3)
    streamed = list(client.generate_stream(job, "To be", max_new_tokens=12, seed=3))
    *items, done = streamed
    tokens = [t for t in items if isinstance(t, GeneratedToken)]
    assert len(tokens) == len(items) == 12
    assert [t.id for t in tokens] == whole.ids and [t.index for t in tokens] == list(range(12))
    # The pieces are the text as it completes: all of it but an unfinished last character.
    pieces = "".join(t.text for t in tokens)
    assert whole.text.startswith(pieces) and len(whole.text) - len(pieces) <= 1
    assert done == whole
    # On the wire: text/event-stream, 'token' events then one 'done'; "stream": true does the same.
    body = {"prompt": "To be", "max_new_tokens": 3, "seed": 3, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/jobs/{job}/generate", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        frames = list(sse_frames(response.iter_lines()))
    assert [event for event, _ in frames] == ["token", "token", "token", "done"]
    assert json.loads(frames[-1][1])["ids"] == whole.ids[:3]


def test_predict_scores_texts(client: LifelongClient, lm_job: Any) -> None:
    job, loaded = lm_job
    texts = ["a short one", "a longer text, past the sixteen tokens of the context"]
    answer = client.score(job, texts)
    assert answer.kind == "language_modeling"
    for text, got in zip(texts, answer.predictions, strict=True):
        loss, perplexity = score(loaded.model, list(text.encode()), context_length=16)
        assert got["tokens"] == len(text.encode())
        torch.testing.assert_close(got["loss"], loss)
        torch.testing.assert_close(got["perplexity"], perplexity)
        assert 3.0 < got["loss"] < 8.0  # an untrained model over 256 bytes: about ln 256 = 5.5
    by_ids = client.score(job, ids=[list(texts[0].encode())])
    torch.testing.assert_close(by_ids.predictions[0]["loss"], answer.predictions[0]["loss"])


def _refusal(call: Any) -> tuple[int, str]:
    with pytest.raises(LifelongError) as info:
        call()
    return info.value.status_code, info.value.detail


def test_generate_and_scoring_refusals(client: LifelongClient, lm_job: Any) -> None:
    job, _ = lm_job
    classifier = client.create_job(JOB_SPEC).id
    bare = client.create_job({**LM_SPEC, "name": "bare"}).id
    cases = {
        "a classification job": (
            lambda: client.generate(classifier, "hi"),
            422,
            "language-modelling",
        ),
        "empty prompt": (lambda: client.generate(job, ""), 422, "the prompt is empty"),
        "prompt too long": (lambda: client.generate(job, "x" * 17), 422, "context_length of 16"),
        "ids out of range": (lambda: client.generate(job, [3, 256]), 422, "value 256"),
        "negative id": (lambda: client.generate(job, [-1]), 422, "[0, 256)"),
        "top_k above the vocabulary": (
            lambda: client.generate(job, "a", top_k=300),
            422,
            "top_k 300",
        ),
        "too many tokens": (
            lambda: client.generate(job, "a", max_new_tokens=5000),
            422,
            "max_new_tokens",
        ),
        "no checkpoint yet": (lambda: client.generate(bare, "a"), 409, "no generation yet"),
        "unknown generation": (
            lambda: client.generate(job, "a", generation=5),
            404,
            "no generation 5",
        ),
        "texts to a classifier": (
            lambda: client.score(classifier, ["a b"]),
            422,
            "learns classification",
        ),
        "a one-token text": (lambda: client.score(job, ["a"]), 422, "at least 2"),
        "features to a language model": (
            lambda: client.predict(job, np.ones((1, 16))),
            422,
            "not 'features'",
        ),
    }
    for name, (call, status, words) in cases.items():
        got, detail = _refusal(call)
        assert (got, words in detail) == (status, True), (name, got, detail)
    with pytest.raises(TypeError, match="unknown generate options"):
        client.generate(job, "a", temprature=0.5)


def test_cli_generate_and_push_text(server: LiveServer, lm_job: Any, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from service.client.cli import app

    job, loaded = lm_job
    runner = CliRunner(env={"LIFELONG_API_URL": server.url, "COLUMNS": "200"})
    expected = list(generate(loaded.model, list(b"ROMEO:"), max_new_tokens=8, temperature=0.0,
                             context_length=16))  # fmt: skip
    text = decode_tokens(expected, loaded.meta.task)
    for flags in ([], ["--stream"]):
        args = ["generate", job, "ROMEO:", "--max-new-tokens", "8", "--temperature", "0", *flags]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert "ROMEO:" in result.output and "generation 0, step 10: 8 new tokens" in result.output
        printable = text.replace("\ufffd", "").strip()
        assert printable.split("\n")[0] in result.output
    document = tmp_path / "play.txt"
    document.write_text("First Citizen: Before we proceed any further, hear me speak.")
    pushed = runner.invoke(app, ["push", job, str(document)])
    assert pushed.exit_code == 0, pushed.output
    assert f"accepted {len(document.read_bytes())} samples" in pushed.output


def _ops(store: RedisStore, job_id: str) -> list[dict[str, Any]]:
    return [json.loads(r) for r in store.client.lrange(store.keys.mlflow_outbox(job_id), 0, -1)]


@pytest.mark.slow
def test_a_closing_generation_writes_a_text_sample_for_mlflow(
    store: RedisStore, tmp_path: Path
) -> None:
    from growth_policy import Observation
    from service.runtime import samples

    job = store.create_job(validate_job_spec(LM_SPEC, max_workers=4), max_jobs=10, param_count=1)
    ledger = lm_ledger(store, job.id, tmp_path / "data")
    ledger.observed(Observation(step=10, generation=0, generation_step=10, samples_seen=640,
                                passes=1.0, dataset_size=5000, train_loss=5.0, val_loss=5.2,
                                val_metric=181.3, metric_name="perplexity", param_count=100,
                                wall_time=1.0))  # fmt: skip
    [metrics] = [op for op in _ops(store, job.id) if op["kind"] == "metrics"]
    assert metrics["values"]["tokens_seen"] == 640 and metrics["values"]["val_perplexity"] == 181.3
    assert metrics["values"]["val_loss"] == 5.2

    path = lm_checkpoint(tmp_path / "ckpt", job.id)
    ledger.checkpointed(_event(path, "close"))
    assert ledger.sampler is not None
    ledger.sampler.join(timeout=60)
    target = samples.sample_path(str(tmp_path / "data"), job.id, 0)
    header, _, text = target.read_text(encoding="utf-8").partition("\n\n")
    assert header.startswith("generation 0, step 10,") and "640 tokens seen" in header
    loaded = load_checkpoint(path, with_optimizer=False)
    prompt = list(samples.TEXT_PROMPT.encode())
    expected = list(generate(loaded.model, prompt, max_new_tokens=samples.SAMPLE_TOKENS,
                             temperature=samples.SAMPLE_TEMPERATURE, seed=samples.SAMPLE_SEED,
                             context_length=16))  # fmt: skip
    assert text == decode_tokens(prompt + expected, loaded.meta.task)
    logged = [op for op in _ops(store, job.id) if op["kind"] == "artifacts"]
    assert {"path": str(target), "dest": "samples"}.items() <= logged[-1].items()
    # Once per generation; a checkpoint that cannot be read writes none and raises nothing.
    first = ledger.sampler
    ledger.checkpointed(_event(path, "final"))
    assert ledger.sampler is first
    assert len([op for op in _ops(store, job.id) if op.get("dest") == "samples"]) == 1
    other = lm_ledger(store, job.id, tmp_path / "data")
    other._maybe_sample(1, str(tmp_path / "missing"))
    assert other.sampler is not None
    other.sampler.join(timeout=60)
    assert not samples.sample_path(str(tmp_path / "data"), job.id, 1).exists()


def test_a_language_models_weights_export(client: LifelongClient, lm_job: Any) -> None:
    """Tied weights (embedding and head) come out under both names, with their values."""
    from safetensors.torch import load

    job, loaded = lm_job
    weights = load(client.model_weights(job))
    state = loaded.model.state_dict()
    assert set(weights) == set(state)
    for name, tensor in state.items():
        torch.testing.assert_close(weights[name], tensor, rtol=0, atol=0)


@pytest.mark.slow
def test_a_language_model_release_is_an_mlflow_model(tmp_path: Path) -> None:
    """The release of a GPT: a pyfunc that takes token ids and answers the next token's
    probabilities, the same as the model's."""
    import mlflow.pyfunc

    from service.runtime.releases import build_pyfunc

    path = lm_checkpoint(tmp_path / "ckpt", "job_0123456789abcdef")
    released = mlflow.pyfunc.load_model(str(build_pyfunc(str(path), tmp_path / "model")))
    ids = np.random.default_rng(0).integers(0, 256, (3, 16))
    model = load_checkpoint(path, with_optimizer=False).model
    with torch.no_grad():
        expected = torch.softmax(model(torch.from_numpy(ids))[:, -1], dim=-1)
    torch.testing.assert_close(torch.from_numpy(released.predict(ids)), expected)


def test_growth_of_a_language_model_is_checked_at_the_api(
    client: LifelongClient, lm_job: Any
) -> None:
    """The API summarises a GPT on token ids, so a growth it cannot apply is refused at once."""
    job, _ = lm_job
    status, detail = _refusal(lambda: client.grow(job, "widen", widths={"fc9": 32}))
    assert status == 422 and "groups: tok, blocks.0.attn.q_proj, blocks.0.ffn.fc" in detail
    status, detail = _refusal(lambda: client.grow(job, "deepen", after="nowhere"))
    assert status == 422 and "blocks.0" in detail
    assert client.grow(job, "widen", factor=2).status == "queued"


def test_generation_steps_wait_for_a_trace(client: LifelongClient, lm_job: Any) -> None:
    """While a torch.fx trace runs in the API's process (it patches nn.Module.__call__ for every
    thread), no generation step runs: each waits for the TRACING lock, then goes on."""
    import threading

    from service.runtime.serving import TRACING

    job, _ = lm_job
    expected = client.generate(job, "To be", max_new_tokens=4, seed=1)
    answers: list[Any] = []
    with TRACING:
        worker = threading.Thread(
            target=lambda: answers.append(client.generate(job, "To be", max_new_tokens=4, seed=1))
        )
        worker.start()
        worker.join(timeout=1.0)
        assert worker.is_alive() and not answers  # held at its first step
    worker.join(timeout=30)
    assert answers == [expected]


def test_a_release_that_cannot_be_built_is_retried_then_dropped(
    store: RedisStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Logic alone (MLflow stubbed): the outbox retries a release whose MLflow model fails to
    build, since the failure may pass; after BUILD_TRIES it is dropped, and the outbox goes on."""
    from service.runtime import releases, tracking
    from service.runtime.releases import Release

    tracker = MlflowTracker.for_job(store.client, store.keys, job_id="job_0123456789abcdef",
                                    job_name="writer", tracking_uri="unused")  # fmt: skip
    monkeypatch.setattr(tracker, "_find_or_create_run", lambda generation, start: "run-id")
    monkeypatch.setattr(tracker, "_client", object)

    def fail(path: str, target: Path) -> Path:
        raise RuntimeError("the exporter cannot take this model")

    monkeypatch.setattr(releases, "build_pyfunc", fail)
    made = Release(number=1, generation=0, step=10, samples_seen=640, kind="close",
                   metric_name="perplexity", val_metric=5.0, path=str(tmp_path), dest="release-1",
                   aliases=["generation-0"], parent_version=None, growth_op="base", made_at=1.0)  # fmt: skip
    op = {"kind": "release", "gen": 0, "release": json.loads(made.to_json())}
    for _ in range(tracking.BUILD_TRIES - 1):
        with pytest.raises(RuntimeError, match="cannot take"):
            tracker._apply_one(op)
    assert tracker.status().dropped == 0
    tracker._apply_one(op)  # dropped: nothing raised, the outbox moves on
    assert tracker.status().dropped == 1
