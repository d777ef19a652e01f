"""The demo: a classification job on MNIST-1D, fed in stages over REST, grown by its policy.

It brings up the embedded stack (Redis, one Ray node, MLflow on SQLite, the API), creates a job,
pushes the data in stages as a live stream would, and shows the job's state and its growth events,
with their reasons, as they happen. At the end it prints the table of generations (parameters,
validation accuracy, op, preservation error) and saves a plot of validation accuracy against the
samples seen, with the growth points marked, which it also logs to MLflow. Every figure it shows
comes from the running job; nothing is scripted.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.live import Live
from rich.table import Table

from service.client import LifelongClient
from service.client.live import JobView
from service.local.stack import Stack


@dataclass(frozen=True)
class DemoConfig:
    workdir: Path
    stages: tuple[int, ...] = (1000, 2000, 4000, 8000, 12000)
    stage_seconds: float = 25.0
    final_seconds: float = 35.0
    val_samples: int = 2000
    hidden: tuple[int, ...] = (32, 32)
    seed: int = 0


def mnist1d(total: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-1D generated offline (``make_dataset``; ``get_dataset`` would download)."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = total
    args.seed = seed
    data = make_dataset(args)
    x = np.concatenate([data["x"], data["x_test"]]).astype(np.float32)
    y = np.concatenate([data["y"], data["y_test"]]).astype(np.int64)
    return x, y


def job_spec(cfg: DemoConfig) -> dict[str, Any]:
    return {
        "name": "demo-mnist1d",
        "task": {"kind": "classification", "input_shape": [40], "num_classes": 10},
        "model": {"family": "mlp", "hidden": list(cfg.hidden)},
        "optimizer": {"name": "adam", "lr": 1e-3},
        "batch_size": 128,
        # A fixed, hash-based share of every push is held out: about val_samples in total.
        "val_fraction": round(cfg.val_samples / (cfg.stages[-1] + cfg.val_samples), 3),
        "seed": cfg.seed,
    }


def run_demo(cfg: DemoConfig, console: Console) -> dict[str, Any]:
    started = time.monotonic()
    console.print("[bold]Lifelong demo[/bold]: one model, data in stages, growth as it pays.")
    with console.status("generating MNIST-1D offline ..."):
        total = cfg.stages[-1] + cfg.val_samples
        x, y = mnist1d(total, cfg.seed)
    console.print(f"MNIST-1D: {len(y):,} samples of 40 features, 10 classes")

    stack = Stack(
        workdir=cfg.workdir,
        ray_nodes=1,
        dashboard=True,  # Ray Train's state API needs it
        # A small MLP on a CPU takes thousands of steps a second: observe every 100 of them and
        # checkpoint every 20,000 (about every 10 s), not at the defaults meant for real models.
        api_env={"LIFELONG_OBSERVE_EVERY": "100", "LIFELONG_CHECKPOINT_EVERY": "20000"},
    )
    with console.status("starting Redis, MLflow, Ray and the API ..."):
        stack.start()
    console.print(stack.describe())
    console.print(f"stack up in {sum(stack.timings.values()):.0f}s")
    assert stack.api is not None and stack.mlflow is not None
    client = LifelongClient(stack.api.url, api_key=stack.admin_key)
    try:
        result = _drive(cfg, stack, client, data=(x, y), console=console)
    finally:
        client.close()
        with console.status("stopping the stack ..."):
            stack.stop()
    result["wall_s"] = time.monotonic() - started
    console.print(f"\ndemo finished in {result['wall_s']:.0f}s")
    console.print(
        f"Open the MLflow UI on this run's store: [bold]lifelong ui --workdir {cfg.workdir}[/bold]"
        " (then http://127.0.0.1:5000)"
    )
    return result


def run_live(
    stack: Stack,
    client: LifelongClient,
    view: JobView,
    console: Console,
    push: Callable[[Screen], None],
) -> Screen:
    """The live view of ``view``'s job while ``push`` feeds it, then the job stopped and seen
    to stop (at most a minute); the screen, which timed the first step."""
    stop_following = threading.Event()
    threading.Thread(
        target=follow_events,
        args=(client.base_url, stack.admin_key, view.job_id, view, stop_following),
        daemon=True,
    ).start()
    with Live(view.render(), console=console, refresh_per_second=4) as live:
        screen = Screen(view, live)
        push(screen)
        view.note = "stopping"
        command = client.stop(view.job_id)
        stop_following.set()
        client.wait_command(view.job_id, command.id, timeout=180)
        deadline = time.monotonic() + 60
        while view.status != "stopped" and time.monotonic() < deadline:
            screen.wait(0.5)
        live.update(view.render())
    return screen


def _drive(
    cfg: DemoConfig,
    stack: Stack,
    client: LifelongClient,
    *,
    data: tuple[np.ndarray, np.ndarray],
    console: Console,
) -> dict[str, Any]:
    job = client.create_job(job_spec(cfg))
    view = JobView(job.id, title=f"job {job.id} ({job.name})")
    screen = run_live(
        stack,
        client,
        view,
        console,
        lambda screen: _push_in_stages(cfg, client, job.id, data, screen),
    )
    listed = client.generations(job.id)
    table = generations_table(listed.model_dump(mode="json")["generations"], view)
    console.print(table)
    plot = cfg.workdir / "demo-accuracy.png"
    plot_history(view, plot)
    console.print(f"plot: {plot}")
    log_plot(stack, listed.generations[-1].mlflow_run_id, plot)
    return {
        "job_id": job.id,
        "first_step_s": screen.first_step,
        "generations": listed.model_dump(mode="json")["generations"],
        "plot": str(plot),
        "final_val_accuracy": view.val_metric,
    }


def follow_events(
    base_url: str,
    api_key: str | None,
    job_id: str,
    view: JobView,
    stop_following: threading.Event,
) -> None:
    """Feed the job's events to the view until the job has stopped after ``stop_following``."""
    with LifelongClient(base_url, api_key=api_key) as events:
        for event in events.events(job_id):
            view.apply(event)
            if stop_following.is_set() and event.type == "status" and view.status == "stopped":
                return


class Screen:
    """The live view on the terminal, refreshed while the demo waits; notes the first step."""

    def __init__(self, view: JobView, live: Live) -> None:
        self.view = view
        self.live = live
        self.created = time.monotonic()
        self.first_step: float | None = None

    def wait(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self.first_step is None and self.view.step > 0:
                self.first_step = time.monotonic() - self.created
            self.live.update(self.view.render())
            time.sleep(0.25)


def _push_in_stages(
    cfg: DemoConfig,
    client: LifelongClient,
    job_id: str,
    data: tuple[np.ndarray, np.ndarray],
    screen: Screen,
) -> None:
    """Push the data stage by stage; the first stage waits for the trainer to start, then
    every stage gets its time."""
    x, y = data
    view = screen.view
    # Every push carries its hash-chosen share of validation samples, so the raw slices are the
    # stage sizes scaled by (train + validation) / train.
    scale = len(y) / cfg.stages[-1]
    pushed = 0
    for index, size in enumerate(cfg.stages):
        end = round(size * scale)
        view.note = f"stage {index + 1}/{len(cfg.stages)}: pushing {end - pushed:,} samples"
        client.push(job_id, x[pushed:end], y[pushed:end])
        pushed = end
        if index == 0:
            while view.step == 0:
                screen.wait(0.5)
        view.note = f"stage {index + 1}/{len(cfg.stages)}: training"
        screen.wait(cfg.stage_seconds if index < len(cfg.stages) - 1 else cfg.final_seconds)


def _op_text(op: dict[str, Any] | None) -> str:
    if not op:
        return "base model"
    kind = op["op"]
    if kind == "widen":
        size = f"×{op['factor']:g}" if op.get("factor") else "to widths"
        return f"widen {size} ({op.get('init')})"
    if kind == "deepen":
        return f"deepen after {op.get('after')} ({op.get('style')})"
    return f"shrink-perturb λ={op.get('shrink'):g} σ={op.get('perturb'):g}"


def generations_table(
    generations: list[dict[str, Any]], view: JobView, metric: str = "accuracy"
) -> Table:
    table = Table(title="Generations")
    table.add_column("gen", justify="right")
    table.add_column("params", justify="right")
    table.add_column("val acc" if metric == "accuracy" else f"val {metric}", justify="right")
    table.add_column("op", overflow="fold")
    table.add_column("policy", overflow="fold")
    table.add_column("max |Δf|", justify="right")
    for g in generations:
        acc = g["metrics"].get(f"val_{metric}")
        err = g["max_abs_error"]
        table.add_row(
            str(g["generation"]),
            f"{g['param_count']:,}" if g["param_count"] else "-",
            f"{acc:.3f}" if acc is not None else "-",
            _op_text(g["op"]),
            g["policy"],
            f"{err:.1e}" if err is not None else "-",
        )
    return table


def plot_history(
    view: JobView,
    path: Path,
    *,
    label: str = "validation accuracy",
    title: str = "Lifelong demo: MNIST-1D in stages, growth points dashed",
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [h for h in view.history if h["val_metric"] is not None]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(
        [p["samples_seen"] for p in points],
        [p["val_metric"] for p in points],
        lw=1.2,
        label=label,
    )
    by_step = {h["step"]: h for h in view.history}
    for growth in view.growths:
        step = growth["step"]
        seen = by_step.get(step, {}).get("samples_seen")
        if seen is None:
            near = [h for h in view.history if h["step"] >= step]
            seen = near[0]["samples_seen"] if near else None
        if seen is not None:
            ax.axvline(seen, color="tab:red", ls="--", lw=0.8)
            ax.text(seen, 0.02, f" gen {growth['generation_after']}", color="tab:red",
                    rotation=90, va="bottom", fontsize=8, transform=ax.get_xaxis_transform())  # fmt: skip
    ax.set_xlabel(f"training {view.unit} seen")
    ax.set_ylabel(label)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def log_plot(stack: Stack, run_id: str | None, plot: Path) -> None:
    if run_id is None or stack.mlflow is None:
        return
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=stack.mlflow.url).log_artifact(run_id, str(plot), "demo")


def summary_json(result: dict[str, Any]) -> str:
    return json.dumps(result, indent=2, default=str)
