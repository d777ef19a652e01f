"""The text demo (``lifelong demo --text``): Shakespeare read in stages by a small GPT that grows.

It brings up the embedded stack (or uses one it is given), creates a language-modelling job (bytes
tokenizer, a small GPT), pushes the training text of Tiny Shakespeare (the first 90%, speech by
speech, each speech one document) in stages, and shows the job's state and growth events as they
happen, with a sample of text from the newest generation after each stage. At the end it prints the
table of generations (parameters, validation perplexity, op) and the samples, and saves a plot of
validation perplexity against the tokens seen. Every figure and every sample comes from the running
job; the MLflow run of each generation also holds the job's own sample (``samples/``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from service.client import LifelongClient, LifelongError
from service.client.live import JobView
from service.local.demo import Screen, generations_table, log_plot, plot_history, run_live
from service.local.stack import Stack

CORPUS = Path(__file__).resolve().parent / "data" / "tinyshakespeare.txt"
PROMPT = "\n"  # where a speech begins
MAX_DOCUMENTS = 5000  # per push, under LIFELONG_MAX_DOCUMENTS_PER_PUSH


@dataclass(frozen=True)
class TextDemoConfig:
    workdir: Path
    # Shares of the training text that have arrived by the end of each stage.
    stages: tuple[float, ...] = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)
    stage_seconds: float = 30.0
    final_seconds: float = 30.0
    context_length: int = 64
    n_layer: int = 2
    n_head: int = 2
    d_model: int = 32
    sample_tokens: int = 160
    seed: int = 0
    corpus: Path = CORPUS


def speeches(path: Path) -> list[str]:
    """The training text (the first 90%, as nanoGPT splits it) as documents: one per speech
    (the blocks between blank lines), each with its blank line."""
    text = path.read_text(encoding="utf-8")
    train = text[: int(0.9 * len(text))]
    return [block + "\n\n" for block in train.split("\n\n") if block.strip()]


def job_spec(cfg: TextDemoConfig) -> dict[str, Any]:
    return {
        "name": "demo-shakespeare",
        "task": {"kind": "language_modeling", "context_length": cfg.context_length},
        "model": {"family": "gpt", "n_layer": cfg.n_layer, "n_head": cfg.n_head,
                  "d_model": cfg.d_model},
        "optimizer": {"name": "adamw", "lr": 3e-3},
        "batch_size": 32,
        "val_fraction": 0.1,  # of the speeches, each whole in one split
        "seed": cfg.seed,
    }  # fmt: skip


def run_text_demo(
    cfg: TextDemoConfig, console: Console, stack: Stack | None = None
) -> dict[str, Any]:
    """The demo on ``stack`` (left running), or on an embedded stack of its own."""
    started = time.monotonic()
    console.print("[bold]Lifelong text demo[/bold]: a GPT reads Shakespeare as it arrives.")
    documents = speeches(cfg.corpus)
    console.print(
        f"Tiny Shakespeare: {len(documents):,} speeches of training text, bytes as tokens"
    )
    own = stack is None
    if stack is None:
        stack = Stack(workdir=cfg.workdir, ray_nodes=1, dashboard=True,
                      api_env={"LIFELONG_OBSERVE_EVERY": "50", "LIFELONG_CHECKPOINT_EVERY": "500"})  # fmt: skip
        with console.status("starting Redis, MLflow, Ray and the API ..."):
            stack.start()
        console.print(stack.describe())
    assert stack.api is not None
    client = LifelongClient(stack.api.url, api_key=stack.admin_key)
    try:
        result = _drive(cfg, stack, client, documents, console)
    finally:
        client.close()
        if own:
            with console.status("stopping the stack ..."):
                stack.stop()
    result["wall_s"] = time.monotonic() - started
    console.print(f"\ntext demo finished in {result['wall_s']:.0f}s")
    if own:
        console.print(
            f"Open the MLflow UI on this run's store: [bold]lifelong ui --workdir {cfg.workdir}"
            "[/bold] (each generation's run holds its sample under samples/)"
        )
    return result


def _drive(
    cfg: TextDemoConfig,
    stack: Stack,
    client: LifelongClient,
    documents: list[str],
    console: Console,
) -> dict[str, Any]:
    job = client.create_job(job_spec(cfg))
    view = JobView(job.id, title=f"job {job.id} ({job.name})", metric_name="perplexity")
    run_live(
        stack,
        client,
        view,
        console,
        lambda screen: _push_in_stages(cfg, client, job.id, documents, screen),
    )
    return _summary(cfg, stack, client, view, console)


def _push_in_stages(
    cfg: TextDemoConfig,
    client: LifelongClient,
    job_id: str,
    documents: list[str],
    screen: Screen,
) -> None:
    """Push the speeches stage by stage; the first stage waits for the trainer to start. After
    each stage, the newest generation writes a sample."""
    view = screen.view
    pushed = 0
    for index, share in enumerate(cfg.stages):
        end = round(share * len(documents))
        view.note = f"stage {index + 1}/{len(cfg.stages)}: pushing {end - pushed:,} speeches"
        for start in range(pushed, end, MAX_DOCUMENTS):
            client.push_text(job_id, documents[start : min(end, start + MAX_DOCUMENTS)])
        pushed = end
        if index == 0:
            while view.step == 0:
                screen.wait(0.5)
        view.note = f"stage {index + 1}/{len(cfg.stages)}: training"
        screen.wait(cfg.stage_seconds if index < len(cfg.stages) - 1 else cfg.final_seconds)
        _sample(cfg, client, job_id, view)


def _sample(cfg: TextDemoConfig, client: LifelongClient, job_id: str, view: JobView) -> None:
    """The newest generation's text (its newest checkpoint; while a growth has just opened a
    generation without one, the one before it), from the demo's fixed prompt and seed."""
    options = {"max_new_tokens": cfg.sample_tokens, "temperature": 0.8, "seed": cfg.seed}
    newest = view.generation
    for generation in (newest, *([newest - 1] if newest else []), None):
        try:
            answer = client.generate(job_id, PROMPT, generation=generation, **options)
        except LifelongError as exc:
            if exc.status_code in (404, 409):  # no checkpoint of it yet
                continue
            raise
        view.add_sample(answer.generation, PROMPT + answer.text)
        return


def _summary(
    cfg: TextDemoConfig,
    stack: Stack,
    client: LifelongClient,
    view: JobView,
    console: Console,
) -> dict[str, Any]:
    job_id = view.job_id
    listed = client.generations(job_id)
    generations = listed.model_dump(mode="json")["generations"]
    console.print(generations_table(generations, view, "perplexity"))
    for generation, text in view.sample_log:
        console.print(f"[bold cyan]generation {generation} writes:[/bold cyan]")
        console.print(text.strip("\n"), markup=False, highlight=False)
    plot = cfg.workdir / "demo-perplexity.png"
    plot_history(view, plot, label="validation perplexity",
                 title="Lifelong text demo: Tiny Shakespeare in stages, growth points dashed")  # fmt: skip
    console.print(f"plot: {plot}")
    log_plot(stack, listed.generations[-1].mlflow_run_id, plot)
    return {
        "job_id": job_id,
        "generations": generations,
        "samples": [{"generation": g, "text": t} for g, t in view.sample_log],
        "plot": str(plot),
        "final_val_perplexity": view.val_metric,
        "final_val_loss": view.val_loss,
    }
