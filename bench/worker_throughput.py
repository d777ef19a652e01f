"""Worker loop throughput against a bare PyTorch loop, and the growth pause, in the same run.

1. Throughput: the Ray Train loop with one worker (``workers.runner.run_trainer``, 1 CPU) against
   a bare PyTorch loop in this process (1 thread, like the Ray worker), over the same in-memory data,
   model, optimizer, batch size and sampling. The Ray loop's figure is taken from its own
   observations' wall-clock times, so it includes everything the loop does besides training steps
   (validation every ``observe_every`` steps, model summary and group signals, periodic checkpoints
   through ``ray.train.report``). The bare loop runs before and after the Ray run, to see drift from
   other load on the machine.
2. Growth pause: for MLPs of about 1M and 10M parameters, a scripted widen ×2 (and a deepen) in the
   Ray loop; the pause is the loop's own measure from the decision to the end of the first step of
   the grown model (validation before and after, transform, optimizer transfer, DDP re-wrap, rank
   check, closing and opening checkpoints), shown in seconds, without the first step, and as a
   multiple of one training step of the model before growth (median of the observation windows
   before it). The loop's defaults write the growth's checkpoints in the background and measure
   the loss before and after on 256 validation samples; the 10M widen runs a second time with the
   checkpoints written in the pause and the whole validation set measured
   (``background_checkpoints=False, growth_val_samples=None``), for the pause before and after in
   the same run.

Run: ``.venv/bin/python -m bench.worker_throughput`` (about 5 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench._report import table, write_section
from growth_policy.types import GrowthOp
from workers.checkpoint import build_optimizer
from workers.loop import WorkerConfig
from workers.models import build_model, count_parameters
from workers.runner import TrainerSettings, run_trainer
from workers.shards import FileManifest, ShardStore
from workers.sources import JsonlRecorder, ScriptedAction, ScriptedSource, read_jsonl
from workers.spec import ComputeSpec, ModelSpec, OptimizerSpec, TaskSpec

FEATURES = 256
TASK = TaskSpec(kind="classification", input_shape=(FEATURES,), num_classes=10)
MODEL_1M = ModelSpec(family="mlp", hidden=[896, 896])  # 1.04M parameters
MODEL_10M = ModelSpec(family="mlp", hidden=[2200, 2200, 2200])  # 10.3M parameters
BATCH = 256


def make_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian inputs labelled by a random two-layer teacher: learnable, not trivial."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, FEATURES), dtype=np.float32)
    w1 = rng.standard_normal((FEATURES, 64), dtype=np.float32) / np.sqrt(FEATURES)
    w2 = rng.standard_normal((64, 10), dtype=np.float32)
    y = (np.tanh(x @ w1) @ w2).argmax(axis=1).astype(np.int64)
    return x, y


def bare_loop(
    spec: ModelSpec, x: torch.Tensor, y: torch.Tensor, steps: int, warmup: int = 30
) -> float:
    """Samples per second of a plain loop: the same model, Adam, batch size and sampling."""
    torch.manual_seed(0)
    model = build_model(spec, TASK).train()
    opt = build_optimizer(OptimizerSpec(), model.parameters())
    gen = torch.Generator().manual_seed(0)
    loss_sum = torch.zeros(())
    order = torch.randperm(x.shape[0], generator=gen)
    pos = 0
    start = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            start = time.perf_counter()
        if pos + BATCH > order.shape[0]:
            order, pos = torch.randperm(x.shape[0], generator=gen), 0
        idx = order[pos : pos + BATCH]
        pos += BATCH
        xb, yb = x.index_select(0, idx), y.index_select(0, idx)
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        torch.autograd.backward(loss)
        opt.step()
        loss_sum += loss.detach()
    elapsed = time.perf_counter() - start
    loss_sum.item()
    return steps * BATCH / elapsed


def ray_run(
    root: Path,
    name: str,
    spec: ModelSpec,
    actions: list[ScriptedAction],
    **loop: Any,
) -> list[dict[str, Any]]:
    """Fit one single-worker run to its scripted stop; return its recorded events."""
    events = root / f"{name}.jsonl"
    worker = WorkerConfig(
        job_id="bench",
        task=TASK,
        model=spec,
        store_root=str(root / "data"),
        manifest=FileManifest(root / "manifest", "bench"),
        source=JsonlRecorder(ScriptedSource(actions), events),
        batch_size=BATCH,
        checkpoint_root=str(root / "durable" / name),
        compute=ComputeSpec(idle_when_converged=False),  # steps by script: never wait
        **loop,
    )
    result = run_trainer(
        TrainerSettings(
            worker=worker,
            num_workers=1,
            resources_per_worker={"CPU": 1},
            storage_path=str(root / "ray"),
            run_name=name,
        )
    )
    if result.error is not None:
        raise RuntimeError(f"run {name} failed: {result.error}")
    return read_jsonl(events)


def window_rates(observations: Sequence[dict[str, Any]]) -> list[tuple[int, float, float]]:
    """Per window between consecutive observations: (end step, samples/s, seconds per step)."""
    out = []
    for a, b in itertools.pairwise(observations):
        dt = b["wall_time"] - a["wall_time"]
        out.append(
            (b["step"], (b["samples_seen"] - a["samples_seen"]) / dt, dt / (b["step"] - a["step"]))
        )
    return out


SYNC_GROWTH = {"background_checkpoints": False, "growth_val_samples": None}


def pause_row(name: str, events: Sequence[dict[str, Any]]) -> list[str]:
    """The growth-pause row of one run: its one growth, against the median step before it."""
    (growth,) = [r for r in events if r["type"] == "growth"]
    before = [o for o in events if o["type"] == "observation" and o["generation"] == 0]
    step_s = statistics.median(w[2] for w in window_rates(before)[1:])
    label = f"{growth['op']['op']} ({name.split('-', maxsplit=1)[0].upper()})"
    if name.endswith("-sync"):
        label += ", checkpoints and full validation in the pause"
    writes = growth.get("checkpoint_write_s")
    return [
        label,
        f"{growth['params_before']:,} → {growth['params_after']:,}",
        f"{step_s * 1e3:.1f}",
        f"{growth['pause_s']:.3f}",
        f"{growth['pause_s'] - growth['first_step_s']:.3f}",
        f"{growth['pause_s'] / step_s:.1f}×",
        f"{growth['transform_s']:.3f}",
        f"{growth['checkpoint_s']:.3f}",
        f"{growth['eval_s']:.3f}",
        f"{growth['first_step_s'] * 1e3:.1f}",
        "–" if writes is None else f"{writes:.3f}",
        f"{abs(growth['val_loss_after'] - growth['val_loss_before']):.1e}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=900, help="Ray loop steps before growth")
    parser.add_argument("--bare-steps", type=int, default=400)
    parser.add_argument("--samples", type=int, default=50_000)
    args = parser.parse_args()

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.2"
    torch.set_num_threads(1)  # a Ray worker with 1 CPU runs torch on 1 thread (OMP_NUM_THREADS=1)

    import ray

    root = Path(tempfile.mkdtemp(prefix="lifelong-bench-"))
    x, y = make_data(args.samples + 2000)
    store = ShardStore(str(root / "data"))
    manifest = FileManifest(root / "manifest", "bench")
    shards = [
        store.write("bench", x[i : i + 10_000], y[i : i + 10_000], "train")
        for i in range(0, args.samples, 10_000)
    ]
    manifest.append([*shards, store.write("bench", x[-2000:], y[-2000:], "val")])
    tx, ty = torch.from_numpy(x[: args.samples]), torch.from_numpy(y[: args.samples])

    ray_temp = tempfile.mkdtemp(prefix="rbw-", dir="/tmp")  # short: Ray's socket paths
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        _temp_dir=ray_temp,
        log_to_driver=False,
    )
    loads = [os.getloadavg()[0]]
    try:
        widen = GrowthOp(op="widen", factor=2.0, seed=1)
        deepen = GrowthOp(op="deepen", after="act1", seed=2)
        s = args.steps
        runs: dict[str, list[dict[str, Any]]] = {}
        bare_before = bare_loop(MODEL_1M, tx, ty, args.bare_steps)
        # Throughput with the loop's defaults (observe every 50, checkpoint every 500), then a
        # widen of the 1M model at the end of the measured window. The bare loop runs right
        # before and right after it, with Ray up and idle.
        runs["1m-widen"] = ray_run(
            root,
            "1m-widen",
            MODEL_1M,
            [ScriptedAction(at_step=s, op=widen), ScriptedAction(at_step=s + 50, stop=True)],
        )
        bare_after = bare_loop(MODEL_1M, tx, ty, args.bare_steps)
        loads.append(os.getloadavg()[0])
        runs["1m-deepen"] = ray_run(
            root,
            "1m-deepen",
            MODEL_1M,
            [ScriptedAction(at_step=150, op=deepen), ScriptedAction(at_step=200, stop=True)],
        )
        for op, name, growth in (
            (widen, "10m-widen-sync", SYNC_GROWTH),
            (widen, "10m-widen", {}),
            (deepen, "10m-deepen", {}),
        ):
            runs[name] = ray_run(
                root,
                name,
                MODEL_10M,
                [ScriptedAction(at_step=60, op=op), ScriptedAction(at_step=70, stop=True)],
                observe_every=10,
                **growth,
            )
        loads.append(os.getloadavg()[0])
    finally:
        ray.shutdown()
        # The 10M runs leave about 3 GB of checkpoints.
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(ray_temp, ignore_errors=True)

    # -- throughput ---------------------------------------------------------------------------
    obs = [r for r in runs["1m-widen"] if r["type"] == "observation" and r["generation"] == 0]
    steady = [o for o in obs if o["step"] >= 150]  # skip the first windows (warm-up)
    first, last = steady[0], steady[-1]
    ray_rate = (last["samples_seen"] - first["samples_seen"]) / (
        last["wall_time"] - first["wall_time"]
    )
    train_only = statistics.median(o["throughput"] for o in steady[1:])
    bare = (bare_before + bare_after) / 2
    checkpoints = [
        r for r in runs["1m-widen"] if r["type"] == "checkpoint" and r["kind"] == "periodic"
    ]
    throughput_rows = [
        ["bare PyTorch loop (before the Ray run)", f"{bare_before:,.0f}", "", ""],
        ["bare PyTorch loop (right after the Ray run)", f"{bare_after:,.0f}", "", ""],
        [
            "Ray Train loop, 1 worker, everything included",
            f"{ray_rate:,.0f}",
            f"{ray_rate / bare:.3f}",
            f"steps {first['step']}–{last['step']}",
        ],
        [
            "Ray Train loop, training windows only",
            f"{train_only:,.0f}",
            f"{train_only / bare:.3f}",
            "median of the loop's own `throughput` (excludes observation time)",
        ],
    ]
    model = build_model(MODEL_1M, TASK)

    pause_rows = [pause_row(name, events) for name, events in runs.items()]

    body = (
        f"Data: {args.samples:,} samples × {FEATURES} features in 10k-sample shards (plus 2,000 "
        f"validation samples), 10 classes; model: MLP {list(MODEL_1M.options()['hidden'])} "
        f"({count_parameters(model):,} parameters), Adam, batch {BATCH}; one thread per loop. "
        "The Ray loop ran with its defaults: validation, summary and group signals every 50 steps, "
        f"a checkpoint through `ray.train.report` every 500 ({len(checkpoints)} in the window, "
        f"median {statistics.median(c['seconds'] for c in checkpoints):.3f} s each). The machine "
        "is shared: 1-minute load average "
        f"{', '.join(f'{v:.1f}' for v in loads)} (start, after the throughput run, end); the "
        "ratio uses the mean of the two bare runs around the Ray run.\n\n"
        + table(["loop", "samples/s", "ratio to bare", "note"], throughput_rows)
        + "\n\nGrowth pause: from the decision to the end of the first step of the grown model, "
        "in the Ray loop (1 worker); *w/o first step* leaves that step out. *step* is the median "
        "time of one training step before growth; *transform* includes net2net, the optimizer "
        "transfer, the rank check (more than one rank) and the DDP re-wrap; *checkpoints* the "
        "closing and opening checkpoints' share of the pause (by default their snapshots; written "
        "in the pause in the *checkpoints and full validation in the pause* row); *writes* the "
        "background writes of both while the grown model trained, reported once durable; *eval* "
        "the validation loss before and after (by default on 256 validation samples; the whole "
        "validation set in the other row); *Δ val loss* their difference.\n\n"
        + table(
            [
                "op (model)",
                "parameters",
                "step ms",
                "pause s",
                "w/o first step s",
                "pause / step",
                "transform s",
                "checkpoints s",
                "eval s",
                "first step ms",
                "writes s",
                "Δ val loss",
            ],
            pause_rows,
        )
    )
    write_section("worker-throughput", "Worker loop: throughput and growth pause", body)


if __name__ == "__main__":
    main()
