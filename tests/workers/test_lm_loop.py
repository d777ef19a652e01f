"""A language-modelling job in the train loop (``LocalRuntime``): it trains on token windows, its
validation loss (nats per token) falls, counts are in tokens, and a widen and a deepen keep the
loss measured before and after within 1e-4."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from growth_policy.types import GrowthOp
from tests.workers.test_loop_local import Recorder
from workers.loop import TrainLoop, WorkerConfig, run_loop
from workers.recipe import StepCounters, learning_rate
from workers.runtime import LocalRuntime
from workers.shards import FileManifest, ShardStore
from workers.sources import Directive
from workers.spec import ComputeSpec, ModelSpec, OptimizerSpec, ReplaySpec, TaskSpec
from workers.text import encode_text

TASK = TaskSpec(kind="language_modeling", context_length=16)
MODEL = ModelSpec.model_validate({"family": "gpt", "n_layer": 1, "n_head": 2, "d_model": 16})
WORDS = ["the", "cat", "dog", "sat", "ran", "on", "a", "mat", "log", "and", "then", "saw", "big"]


def sentences(count: int, seed: int) -> list[str]:
    """Short sentences from a small word list: text with structure a tiny model learns fast."""
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 7))) + ".\n" for _ in range(count)
    ]


def write_text_job(root: Path, *, train_docs: int = 400, val_docs: int = 60) -> Path:
    """Job ``job``: training text in two token shards and a validation shard."""
    store = ShardStore(str(root / "data"))
    shards = []
    for split, docs in (("train", sentences(train_docs, 0)), ("val", sentences(val_docs, 1))):
        halves = [docs[: len(docs) // 2], docs[len(docs) // 2 :]] if split == "train" else [docs]
        for part in halves:
            ids = [encode_text(d, TASK) for d in part]
            offsets = np.cumsum([0, *(len(i) for i in ids)])
            shards.append(store.write_tokens("job", np.concatenate(ids), offsets, split))  # type: ignore[arg-type]
    FileManifest(root / "manifest", "job").append(shards)
    return root


@pytest.fixture(scope="module")
def text_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_text_job(tmp_path_factory.mktemp("text"))


@pytest.mark.slow
def test_lm_job_trains_and_grows_exactly(text_root: Path, tmp_path: Path) -> None:
    manifest = FileManifest(text_root / "manifest", "job")
    source = Recorder(
        {
            40: Directive(op=GrowthOp(op="widen", factor=2.0, seed=1), reason="w"),
            60: Directive(op=GrowthOp(op="deepen", after="blocks.0", seed=2), reason="d"),
            80: Directive(stop=True),
        }
    )
    config = WorkerConfig(
        job_id="job",
        task=TASK,
        model=MODEL,
        store_root=str(text_root / "data"),
        manifest=manifest,
        source=source,
        optimizer=OptimizerSpec.model_validate({"schedule": {"warmup_steps": 10}}),
        batch_size=16,
        observe_every=10,
        checkpoint_every=0,
        checkpoint_root=str(tmp_path / "durable"),
        poll_interval=0.01,
        replay=ReplaySpec(newest_share=0.0),
        compute=ComputeSpec(idle_when_converged=False),
    )
    run_loop(config, LocalRuntime(tmp_path / "run"))

    obs = source.observations
    assert [o.step for o in obs] == [10, 20, 30, 40, 50, 60, 70, 80]
    tokens = manifest.load().train_size
    for o in obs:
        assert o.dataset_size == tokens  # counted in tokens
        assert o.samples_seen == o.step * 16 * 16  # windows x context: tokens seen
        assert o.metric_name == "perplexity"
        assert o.val_loss is not None and o.val_metric is not None
        assert o.val_metric == pytest.approx(math.exp(o.val_loss), rel=1e-9)
    assert obs[0].val_loss is not None and obs[-1].val_loss is not None
    assert obs[0].val_loss > math.log(20)  # near uniform over the bytes at first
    assert obs[-1].val_loss < obs[0].val_loss - 1.0  # and it learns
    widen, deepen = source.growths
    assert (widen.step, deepen.step, deepen.generation_after) == (40, 60, 2)
    for g in (widen, deepen):
        assert g.val_loss_before is not None and g.val_loss_after is not None
        assert abs(g.val_loss_after - g.val_loss_before) <= 1e-4
        assert g.params_after > g.params_before and g.ranks_identical
    assert not source.failures


def test_bf16_autocast_trains_the_language_model(text_root: Path, tmp_path: Path) -> None:
    """precision='bf16' (the default on a GPU) runs the gpt's forward in bfloat16 autocast: the
    loss of a step is a bf16 computation, the weights stay fp32, and validation agrees with fp32."""
    config = WorkerConfig(
        job_id="job",
        task=TASK,
        model=MODEL,
        store_root=str(text_root / "data"),
        manifest=FileManifest(text_root / "manifest", "job"),
        batch_size=8,
        checkpoint_root=str(tmp_path / "durable"),
        compute=ComputeSpec(precision="bf16"),
    )
    loop = TrainLoop(config, runtime=LocalRuntime(tmp_path / "run"))
    try:
        loop.setup()
        loop.restore()
        loop.sync_manifest()
        assert loop._amp == torch.bfloat16
        seen: list[torch.dtype] = []
        hook = loop.module.head.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
        plan = loop.reader.plan(0)
        for x, y in list(loop.reader.batches(plan))[:3]:
            assert loop.train_step(x, y)
        hook.remove()
        assert seen == [torch.bfloat16] * 3
        assert all(p.dtype == torch.float32 for p in loop.module.parameters())
        bf16_loss, _ = loop.validate()
        loop._amp = None
        fp32_loss, _ = loop.validate()
        assert math.isfinite(bf16_loss) and abs(bf16_loss - fp32_loss) < 0.05
    finally:
        loop.cleanup()


@pytest.mark.slow
def test_lm_job_with_the_recipe_resumes_after_growth(text_root: Path, tmp_path: Path) -> None:
    """AdamW with weight decay on matrices (two param groups), a cosine schedule, clipping and
    accumulation: a widen and a deepen, a final checkpoint, and a resume that goes on from it with
    the same groups and the rate of the resumed step."""
    recipe = OptimizerSpec.model_validate(
        {
            "name": "adamw",
            "weight_decay": 0.1,
            "clip_grad_norm": 1.0,
            "accumulation_steps": 2,
            "schedule": {"kind": "cosine", "warmup_steps": 5, "decay_steps": 100, "min_lr": 1e-4},
        }
    )

    def config(source: Recorder) -> WorkerConfig:
        return WorkerConfig(
            job_id="job",
            task=TASK,
            model=MODEL,
            optimizer=recipe,
            store_root=str(text_root / "data"),
            manifest=FileManifest(text_root / "manifest", "job"),
            source=source,
            batch_size=4,
            observe_every=5,
            checkpoint_every=0,
            checkpoint_root=str(tmp_path / "durable"),
            poll_interval=0.01,
            replay=ReplaySpec(newest_share=0.0),
            compute=ComputeSpec(idle_when_converged=False),
            growth_val_samples=32,
            val_max_samples=32,
            signals=False,
        )

    first = Recorder(
        {
            5: Directive(op=GrowthOp(op="deepen", after="blocks.0", seed=1), reason="d"),
            10: Directive(op=GrowthOp(op="widen", factor=2.0, seed=2), reason="w"),
            15: Directive(stop=True),
        }
    )
    run_loop(config(first), LocalRuntime(tmp_path / "run"))
    assert [g.op.op for g in first.growths] == ["deepen", "widen"] and not first.failures
    for g in first.growths:
        assert g.val_loss_before is not None and g.val_loss_after is not None
        assert abs(g.val_loss_after - g.val_loss_before) <= 1e-4
    assert first.observations[-1].samples_seen == 15 * 2 * 4 * 16  # micro-batches count

    again = Recorder({20: Directive(stop=True)})
    loop = TrainLoop(config(again), runtime=LocalRuntime(tmp_path / "run"))
    try:
        loop.setup()
        loop.restore()
        assert loop.progress.step == 15 and loop.progress.generation == 2
        assert [g["weight_decay"] for g in loop.optimizer.param_groups] == [0.1, 0.0]
        assert len(loop.optimizer.state) > 0  # the saved moments came back
        loop.run()
    finally:
        loop.cleanup()
    (obs,) = again.observations
    assert obs.step == 20 and obs.val_loss is not None
    assert obs.val_loss < first.observations[0].val_loss  # type: ignore[operator]
    expected = learning_rate(recipe, StepCounters(step=19), 5)
    assert loop.lr == pytest.approx(expected)
