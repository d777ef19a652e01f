"""The GPU check: the worker loop on one CUDA device, in one run (at most 8 minutes on an H200).

1. **Growth on the GPU in a job with ``use_gpu``** (Ray Train, one worker with one GPU; where Ray
   is not installed, the same loop on ``LocalRuntime(device='cuda')``, and the table says so): an
   MLP widened ×2 and then deepened, once in fp32 and once in bf16 autocast (the default on CUDA);
   Δ validation loss across each growth (fp32: within float rounding, 1e-5; bf16: ≤ 1e-3).
2. **Samples per second** of the bf16 loop (observations included: validation, summary and group
   signals every 50 steps) against a bare PyTorch CUDA loop of the same model, optimizer, batch
   size, autocast and pinned host batches, in the same run (target ≥ 0.9×).
3. **The growth pause on the GPU** for an MLP of about 100M parameters widened ×2 (target ≤ 0.5 s
   without the grown model's first step), from the loop's own measure.
4. **Peak GPU memory during that growth** (from the decision to the end of the first step, the
   loop's ``torch.cuda.max_memory_allocated``) against the grown model's weights plus its
   optimizer state.

It installs what it lacks first (:func:`ensure_dependencies`): a CUDA build of the pinned torch
where torch sees no GPU, and the project's requirements (from ``.whl/`` where that folder holds
wheels, for a machine without a registry).

Run: ``make bench-gpu`` (``python -m bench.gpu``). Smoke test on a CPU: ``python -m bench.gpu
--device cpu --quick`` (a tiny model, a few steps, the loop in this process; writes no table).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TORCH_VERSION = "2.13.0"
TORCH_CUDA_INDEX = "https://download.pytorch.org/whl/cu128"
FEATURES = 256


@dataclass(frozen=True)
class Sizes:
    """The models and step counts of one mode (full, or the CPU smoke test)."""

    hidden: tuple[int, ...]  # the job's model (growth checks, throughput)
    big: tuple[int, ...]  # the ~100M-parameter model of the pause
    batch: int
    samples: int
    throughput_steps: int  # the bf16 run trains this long before its growths
    bare_steps: int
    observe_every: int


FULL = Sizes((4096, 4096, 4096), (7168, 7168, 7168), 2048, 200_000, 1500, 600, 50)
QUICK = Sizes((32, 32), (64, 64), 64, 4_000, 60, 40, 10)


NEEDS = {"pydantic": "pydantic", "safetensors": "safetensors", "pyarrow": "pyarrow",
         "sklearn": "scikit-learn", "numpy": "numpy"}  # fmt: skip


def ensure_dependencies() -> None:
    """Install what this check needs into the running Python: a CUDA build of the pinned torch
    where torch is a CPU build (then run again), the packages the workers import, and Ray (the
    loop runs on ``LocalRuntime`` where Ray cannot be installed). Wheels in ``.whl/`` are used
    where there are any (a machine without a registry); else the registry, with the lock file."""
    wheels = ROOT / ".whl"
    local = ["--no-index", "--find-links", str(wheels)] if any(wheels.glob("*.whl")) else []
    lock = ROOT / "requirements" / "lock.txt"
    constraint = ["-c", str(lock)] if lock.exists() and not local else []
    pip = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
           "--retries", "1", "--timeout", "10", *local]  # fmt: skip
    import torch

    if torch.version.cuda is None and not local:
        subprocess.run(
            [*pip, f"torch=={TORCH_VERSION}", "--index-url", TORCH_CUDA_INDEX], check=True
        )
        os.execv(sys.executable, [sys.executable, "-m", "bench.gpu", *sys.argv[1:]])
    missing = [package for module, package in NEEDS.items() if not _has(module)]
    if missing:
        subprocess.run([*pip, *constraint, *missing], check=True)
    if not _has("ray"):
        done = subprocess.run([*pip, *constraint, "ray[default,train]"], check=False)
        if done.returncode != 0:
            print("Ray could not be installed: the loop runs on LocalRuntime(device='cuda')")


def run_gpu_tests() -> str:
    """``tests/gpu`` on this machine's GPU; the summary line of pytest. The root conftest needs the
    service's stack (Redis, MLflow), which a GPU machine may lack, so conftests are off here (the
    'gpu' marker's skip is for machines without CUDA)."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--noconftest", "-o", "addopts=", "-p", "no:cacheprovider",
         "-q", "tests/gpu"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    print(done.stdout[-4000:], done.stderr[-2000:])
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    return lines[-1].strip("= ") if lines else f"pytest exited with {done.returncode}"


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def make_data(n: int, seed: int = 0) -> tuple[Any, Any]:
    """Gaussian inputs labelled by a random two-layer teacher (as bench.worker_throughput)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, FEATURES), dtype=np.float32)
    w1 = rng.standard_normal((FEATURES, 64), dtype=np.float32) / np.sqrt(FEATURES)
    w2 = rng.standard_normal((64, 10), dtype=np.float32)
    return x, (np.tanh(x @ w1) @ w2).argmax(axis=1).astype(np.int64)


def write_shards(root: Path, x: Any, y: Any, val: int) -> Any:
    """The data as shards and a manifest under ``root``; returns the manifest."""
    from workers.shards import FileManifest, ShardStore

    store = ShardStore(str(root / "data"))
    manifest = FileManifest(root / "manifest", "gpu")
    n, step = x.shape[0] - val, 50_000
    shards = [store.write("gpu", x[i : min(i + step, n)], y[i : min(i + step, n)], "train")
              for i in range(0, n, step)]  # fmt: skip
    manifest.append([*shards, store.write("gpu", x[n:], y[n:], "val")])
    return manifest


def bare_loop(hidden: tuple[int, ...], x: Any, y: Any, *, device: str, batch: int, steps: int,
              bf16: bool, warmup: int = 30) -> float:  # fmt: skip
    """Samples/s of a plain PyTorch loop: host batches gathered, pinned, copied non-blocking."""
    import torch

    from workers.checkpoint import build_optimizer
    from workers.models import build_model
    from workers.spec import ModelSpec, OptimizerSpec

    torch.manual_seed(0)
    model = build_model(ModelSpec(family="mlp", hidden=list(hidden)), _task()).to(device).train()
    opt = build_optimizer(OptimizerSpec(), model.parameters())
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(0)
    pin = device != "cpu"
    loss_sum = torch.zeros((), device=device)
    start = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            _sync(device)
            start = time.perf_counter()
        idx = torch.randint(0, tx.shape[0], (batch,), generator=gen)
        xb, yb = tx.index_select(0, idx), ty.index_select(0, idx)
        if pin:
            xb, yb = xb.pin_memory(), yb.pin_memory()
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16,
                            enabled=bf16):  # fmt: skip
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
        loss_sum += loss.detach()
    _sync(device)
    return steps * batch / (time.perf_counter() - start)


def _sync(device: str) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _task() -> Any:
    from workers.spec import TaskSpec

    return TaskSpec(kind="classification", input_shape=(FEATURES,), num_classes=10)


@dataclass
class Job:
    """One run of the loop: its name, model, precision, script and where it runs."""

    name: str
    hidden: tuple[int, ...]
    precision: str
    actions: list[Any]
    observe_every: int
    checkpoint_every: int = 0


def run_job(job: Job, root: Path, manifest: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run ``job`` to its scripted stop (Ray Train with one GPU, or in this process); return its
    recorded events. Its checkpoints are removed afterwards (they are large)."""
    from workers.loop import WorkerConfig, run_loop
    from workers.runtime import LocalRuntime
    from workers.sources import JsonlRecorder, ScriptedSource, read_jsonl
    from workers.spec import ComputeSpec, ModelSpec

    events = root / f"{job.name}.jsonl"
    worker = WorkerConfig(
        job_id="gpu", task=_task(), model=ModelSpec(family="mlp", hidden=list(job.hidden)),
        store_root=str(root / "data"), manifest=manifest,
        source=JsonlRecorder(ScriptedSource(job.actions), events), batch_size=args.sizes.batch,
        checkpoint_root=str(root / "durable" / job.name), observe_every=job.observe_every,
        checkpoint_every=job.checkpoint_every,
        compute=ComputeSpec(idle_when_converged=False, precision=job.precision),
    )  # fmt: skip
    try:
        if args.runtime == "ray":
            _fit_on_ray(worker, root, job.name, gpu=args.device == "cuda")
        else:
            run_loop(worker, LocalRuntime(root / "run" / job.name, device=args.device))
        return read_jsonl(events)
    finally:
        for folder in (root / "durable" / job.name, root / "run" / job.name, root / "ray"):
            shutil.rmtree(folder, ignore_errors=True)


def _fit_on_ray(worker: Any, root: Path, name: str, *, gpu: bool) -> None:
    from workers.runner import TrainerSettings, run_trainer

    resources = {"CPU": 2.0, "GPU": 1.0} if gpu else {"CPU": 1.0}
    result = run_trainer(
        TrainerSettings(worker=worker, num_workers=1, use_gpu=gpu, resources_per_worker=resources,
                        storage_path=str(root / "ray"), run_name=name, max_failures=0)
    )  # fmt: skip
    if result.error is not None:
        raise RuntimeError(f"run {name} failed: {result.error}")


def jobs(sizes: Sizes) -> list[Job]:
    """The three runs: growth in fp32; throughput then growth in bf16; the ~100M pause."""
    from growth_policy.types import GrowthOp
    from workers.sources import ScriptedAction

    widen = GrowthOp(op="widen", factor=2.0, seed=1)
    deepen = GrowthOp(op="deepen", after="act1", seed=2)
    every = sizes.observe_every
    s = sizes.throughput_steps

    def script(at: int) -> list[Any]:
        return [ScriptedAction(at_step=at, op=widen), ScriptedAction(at_step=at + 2 * every, op=deepen),
                ScriptedAction(at_step=at + 4 * every, stop=True)]  # fmt: skip

    return [
        Job("fp32", sizes.hidden, "fp32", script(4 * every), every),
        Job("bf16", sizes.hidden, "bf16", script(s), every),
        Job("pause-100m", sizes.big, "auto",
            [ScriptedAction(at_step=6 * every, op=widen), ScriptedAction(at_step=8 * every, stop=True)],
            every),
    ]  # fmt: skip


def growth_rows(runs: dict[str, list[dict[str, Any]]]) -> list[list[str]]:
    """One row per growth of the growth-check runs: Δ loss against its tolerance."""
    rows = []
    for name, tolerance in (("fp32", 1e-5), ("bf16", 1e-3)):
        for g in (e for e in runs[name] if e["type"] == "growth"):
            delta = abs(g["val_loss_after"] - g["val_loss_before"])
            rows.append([
                f"{g['op']['op']} ({name})",
                f"{g['params_before']:,} → {g['params_after']:,}",
                f"{g['val_loss_before']:.6f}", f"{g['val_loss_after']:.6f}", f"{delta:.1e}",
                f"≤ {tolerance:.0e}: {'yes' if delta <= tolerance else 'NO'}",
                f"{g['pause_s'] - (g['first_step_s'] or 0.0):.3f}",
            ])  # fmt: skip
    return rows


def loop_rate(events: list[dict[str, Any]]) -> float:
    """Samples/s of the loop before its first growth, observations included (wall clock between
    the second and the last observation of generation 0)."""
    obs = [o for o in events if o["type"] == "observation" and o["generation"] == 0][1:]
    first, last = obs[0], obs[-1]
    return float(
        (last["samples_seen"] - first["samples_seen"]) / (last["wall_time"] - first["wall_time"])
    )


def pause_row(events: list[dict[str, Any]]) -> list[str]:
    """The ~100M model's widen: pause, its parts, and peak device memory against the grown
    weights plus optimizer state (fp32 weights, Adam's two fp32 values per parameter)."""
    (g,) = [e for e in events if e["type"] == "growth"]
    without = g["pause_s"] - (g["first_step_s"] or 0.0)
    grown = g["params_after"] * 4 * 3
    peak, before = g.get("memory_peak_bytes"), g.get("memory_before_bytes")
    gib = 1 << 30
    return [
        f"{g['params_before']:,} → {g['params_after']:,}",
        f"{without:.3f}", f"{'yes' if without <= 0.5 else 'NO'}",
        f"{g['transform_s']:.3f}", f"{g['eval_s']:.3f}", f"{g['checkpoint_s']:.3f}",
        f"{(g['first_step_s'] or 0.0) * 1e3:.1f}",
        "–" if g.get("checkpoint_write_s") is None else f"{g['checkpoint_write_s']:.2f}",
        "–" if before is None else f"{before / gib:.2f}",
        "–" if peak is None else f"{peak / gib:.2f}",
        f"{grown / gib:.2f}",
        "–" if peak is None or before is None else f"{(peak - before) / grown:.2f}",
    ]  # fmt: skip


def report(runs: dict[str, list[dict[str, Any]]], bare: float, args: argparse.Namespace,
           elapsed: float) -> str:  # fmt: skip
    """The section's body: the three tables and how they were measured."""
    from bench._report import table

    loop = loop_rate(runs["bf16"])
    where = (f"Ray Train, one worker with `use_gpu={args.device == 'cuda'}`" if args.runtime == "ray"
             else f"`LocalRuntime(device='{args.device}')` in this process ({args.why_local})")  # fmt: skip
    s = args.sizes
    return (
        f"The loop ran on {where}. Data: {s.samples:,} samples × {FEATURES} features, 10 "
        f"classes (2,000 for validation); Adam; batch {s.batch}; observations every "
        f"{s.observe_every} steps. Wall time of the whole check: {elapsed:.0f} s.\n\n"
        f"Growth on the device: MLP {list(s.hidden)} widened ×2, then deepened after act1, in "
        "fp32 and in bf16 autocast (the default on CUDA); Δ val loss on the 256 samples measured "
        "before and after each growth.\n\n"
        + table(["op (precision)", "parameters", "val loss before", "val loss after",
                 "Δ val loss", "within", "pause w/o first step s"], growth_rows(runs))
        + "\n\nThroughput, bf16, before the growths (the loop's observations included), against "
        "a bare PyTorch loop of the same model, optimizer, batch and autocast with pinned host "
        "batches, in the same run:\n\n"
        + table(["loop", "samples/s", "ratio to bare (target ≥ 0.9)"],
                [["bare PyTorch loop", f"{bare:,.0f}", ""],
                 ["the worker loop", f"{loop:,.0f}", f"{loop / bare:.3f}"]])
        + f"\n\nGrowth pause of MLP {list(s.big)} widened ×2, bf16: *w/o first step* is the "
        "loop's pause from the decision to the grown model's first step (target ≤ 0.5 s); "
        "*writes* the background checkpoint writes while it trained; memory is the loop's "
        "`torch.cuda.memory_allocated` at the decision and `max_memory_allocated` from the "
        "decision to the end of the first step; *grown state* is the grown model's fp32 weights "
        "and Adam's two values per parameter; *added / grown state* what the growth added at its "
        "peak over that.\n\n"
        + table(["parameters", "pause w/o first step s", "≤ 0.5 s", "transform s", "eval s",
                 "checkpoints s", "first step ms", "writes s", "memory before GiB",
                 "peak GiB", "grown state GiB", "added / grown state"],
                [pause_row(runs["pause-100m"])])
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--runtime", choices=["auto", "ray", "local"], default="auto")
    parser.add_argument("--no-install", action="store_true", help="do not install anything")
    parser.add_argument("--root", type=Path, default=None, help="scratch folder (default: temp)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not args.no_install:
        ensure_dependencies()
    args.sizes = QUICK if args.quick else FULL
    args.why_local = "--runtime local"
    if args.runtime == "auto":
        args.runtime = "ray" if _has("ray") and not args.quick else "local"
        args.why_local = "Ray is not installed" if not _has("ray") else "--quick"
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"torch {torch.__version__} sees no CUDA device; try --device cpu --quick")
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 for the Δ-loss check
    started = time.perf_counter()
    root = args.root or Path(tempfile.mkdtemp(prefix="lifelong-gpu-"))
    tests = run_gpu_tests() if args.device == "cuda" else "not run (no GPU)"
    runs, bare = run_all(root, args)
    body = report(runs, bare, args, time.perf_counter() - started)
    body += f"\n\n`tests/gpu` on this machine, before the runs: {tests}."
    if args.quick:
        print(body)
        return
    from bench._report import write_section

    write_section("gpu", "The worker loop on one GPU: growth, throughput, pause, memory", body)


def run_all(root: Path, args: argparse.Namespace) -> tuple[dict[str, list[dict[str, Any]]], float]:
    """Write the data, run the bare loop and the three jobs; returns their events and the bare
    loop's samples/s."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    # Ray's worker processes import this project's packages from here (it may not be installed).
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])
    )
    s = args.sizes
    x, y = make_data(s.samples + 2000)
    manifest = write_shards(root, x, y, 2000)
    if args.runtime == "ray":
        import ray

        ray.init(address="local", include_dashboard=False, log_to_driver=False,
                 _temp_dir=tempfile.mkdtemp(prefix="rg-", dir="/tmp"))  # fmt: skip
    try:
        runs: dict[str, list[dict[str, Any]]] = {}
        for job in jobs(s):
            if job.name == "bf16":  # right before the loop it is compared with, both warm
                bare = bare_loop(s.hidden, x[: s.samples], y[: s.samples], device=args.device,
                                 batch=s.batch, steps=s.bare_steps, bf16=True)  # fmt: skip
            runs[job.name] = run_job(job, root, manifest, args)
    finally:
        if args.runtime == "ray":
            import ray

            ray.shutdown()
        if args.root is None:
            shutil.rmtree(root, ignore_errors=True)
    return runs, bare


if __name__ == "__main__":
    main()
