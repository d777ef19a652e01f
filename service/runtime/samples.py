"""Text samples of a language model, one per generation, for the reader of the MLflow UI.

When a generation of a language-modelling job closes (its closing or the job's final checkpoint),
:func:`start_sample` loads that checkpoint in a child process (from a background thread), writes
``SAMPLE_TOKENS`` tokens from a fixed prompt and seed, and hands the file to the job's tracker as
the artifact ``samples/generation-N.txt`` of the generation's run. Read in order, the samples show
the model learning to write. It is off the training path (the workers never wait for it) and off
the tracking path (the tracker only gets a finished file): a failure is logged, never raised.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from workers.shards import is_remote

if TYPE_CHECKING:
    from service.runtime.tracking import MlflowTracker

log = logging.getLogger("lifelong.service")

SAMPLE_TOKENS = 300
SAMPLE_SEED = 0
SAMPLE_TEMPERATURE = 0.8
# The prompt: a newline (where a document's line begins) for text; id 0 for the 'ids' tokenizer.
TEXT_PROMPT = "\n"
ARTIFACT_DIR = "samples"
SAMPLE_TIMEOUT_S = 600


def sample_path(data_root: str | None, job_id: str, generation: int) -> Path:
    """Where generation ``generation``'s sample is written (a local folder even when the data
    root is an object store: the tracker uploads it from there)."""
    if data_root is None or is_remote(data_root):
        root = Path(tempfile.gettempdir()) / "lifelong-samples"
    else:
        root = Path(data_root.removeprefix("file://"))
    return root / job_id / ARTIFACT_DIR / f"generation-{generation}.txt"


def write_sample(checkpoint: str, target: Path, generation: int) -> Path:
    """Load ``checkpoint`` and write its sample to ``target`` (a header line, then the prompt and
    the text the model wrote)."""
    from workers.checkpoint import load_checkpoint
    from workers.text import decode_tokens, encode_text, generate

    loaded = load_checkpoint(checkpoint, with_optimizer=False)
    task = loaded.meta.task
    prompt = encode_text(TEXT_PROMPT, task).tolist() if task.tokenizer == "bytes" else [0]
    ids = list(
        generate(
            loaded.model,
            prompt,
            max_new_tokens=SAMPLE_TOKENS,
            temperature=SAMPLE_TEMPERATURE,
            seed=SAMPLE_SEED,
            context_length=task.context_length,
        )
    )
    header = (
        f"generation {generation}, step {loaded.meta.step:,}, {loaded.meta.param_count:,} "
        f"parameters, {loaded.meta.samples_seen:,} tokens seen; {SAMPLE_TOKENS} tokens at "
        f"temperature {SAMPLE_TEMPERATURE}, seed {SAMPLE_SEED}, after the prompt "
        f"{decode_tokens(prompt, task)!r}\n"
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".tmp")
    partial.write_text(header + "\n" + decode_tokens(prompt + ids, task), encoding="utf-8")
    partial.replace(target)
    return target


def write_sample_apart(checkpoint: str, target: Path, generation: int) -> Path:
    """:func:`write_sample` in a child process of one thread: the model runs apart from the
    supervisor, whose own torch.fx traces (net2net summaries at a growth) patch
    ``nn.Module.__call__`` for the whole process while they run."""
    command = [sys.executable, "-m", "service.runtime.samples", checkpoint, str(target),
               str(generation)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=SAMPLE_TIMEOUT_S, env=env, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"the sample writer exited with {done.returncode}: {done.stderr[-2000:]}"
        )
    return target


def start_sample(
    tracker: MlflowTracker, checkpoint: str, target: Path, generation: int
) -> threading.Thread:
    """Write the sample (in a child process) from a daemon thread, then queue it as the run's
    artifact."""

    def run() -> None:
        try:
            path = write_sample_apart(checkpoint, target, generation)
            tracker.log_artifacts(generation, str(path), ARTIFACT_DIR)
        except Exception:  # a sample is a nicety: training and tracking go on without it
            log.warning(
                "no text sample for generation %d of job %s", generation, tracker.job_id,
                exc_info=True,
            )  # fmt: skip

    thread = threading.Thread(target=run, name=f"sample-{tracker.job_id}-{generation}", daemon=True)
    thread.start()
    return thread


def main(argv: list[str]) -> None:
    """``python -m service.runtime.samples CHECKPOINT TARGET GENERATION``."""
    import torch

    torch.set_num_threads(1)  # beside training: one core at most
    checkpoint, target, generation = argv
    write_sample(checkpoint, Path(target), int(generation))


if __name__ == "__main__":
    main(sys.argv[1:])
