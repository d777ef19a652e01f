"""Serving a job's generations: their records, their weights, and predictions from them.

The generations and the checkpoint that serves each come from the job's generation ledger
(``service.runtime.generations``). Predictions come from a release (``service.runtime.releases``):
the ``champion`` by default, ``generation-N`` when a generation is named; before a job has any
release, from the newest checkpoint of the newest (or the named) generation. Loaded models are cached by checkpoint path (checkpoints are
immutable), a few at a time.
"""

from __future__ import annotations

import codecs
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from service.jobs.errors import ConflictError, InvalidError, NotFoundError, TooLargeError
from service.runtime.batching import MicroBatcher
from service.runtime.exports import ExportFormat, export
from service.runtime.generations import GenerationLedger, GenerationRecord
from service.runtime.releases import CHAMPION, Release
from service.state.store import RedisStore
from workers.checkpoint import LoadedCheckpoint, load_checkpoint
from workers.spec import TaskSpec

MAX_PREDICT_SAMPLES = 10_000
# torch.fx patches nn.Module.__call__ for the whole process while it traces (net2net's summaries,
# service.jobs.growth): a model run in another thread meanwhile goes through the tracer and fails.
# The API's traces and its language models' steps take turns under this lock.
TRACING = threading.RLock()


class ModelServer:
    """Generation records, weights and predictions for the jobs of one deployment."""

    def __init__(
        self,
        store: RedisStore,
        data_root: str,
        *,
        cache_size: int = 4,
        batch_window_s: float = 0.002,
    ) -> None:
        self.store = store
        self.data_root = data_root
        self.cache_size = cache_size
        self.batch_window_s = batch_window_s
        self.loads = 0  # checkpoints read from storage (each model once while it is cached)
        self._cache: OrderedDict[str, LoadedCheckpoint] = OrderedDict()
        self._batchers: dict[int, MicroBatcher] = {}  # by id() of a cached LoadedCheckpoint
        self._loading: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def ledger(self, job_id: str) -> GenerationLedger:
        """The job's generations, read-only."""
        return GenerationLedger(self.store, job_id, data_root=self.data_root)

    def generations(self, job_id: str) -> list[GenerationRecord]:
        return self.ledger(job_id).records()

    def resolve(self, job_id: str, generation: int | None) -> tuple[GenerationRecord, str]:
        """The generation (default: the newest) and the checkpoint that serves it."""
        records = self.generations(job_id)
        if not records:
            raise ConflictError(f"job '{job_id}' has no generation yet: it has not started")
        if generation is None:
            record = records[-1]
        else:
            found = [r for r in records if r.generation == generation]
            if not found:
                newest = records[-1].generation
                raise NotFoundError(
                    f"job '{job_id}' has no generation {generation} (generations 0 to {newest})"
                )
            record = found[0]
        path = self.ledger(job_id).checkpoint_of(record)
        if path is None:
            raise ConflictError(
                f"generation {record.generation} of job '{job_id}' has no checkpoint yet; "
                "the first is written after the first training steps"
            )
        return record, path

    def load(self, path: str) -> LoadedCheckpoint:
        """The checkpoint's model, read once while it stays among the ``cache_size`` newest used:
        concurrent first calls wait for one read."""
        with self._lock:
            if path in self._cache:
                self._cache.move_to_end(path)
                return self._cache[path]
            loading = self._loading.setdefault(path, threading.Lock())
        with loading:
            with self._lock:
                if path in self._cache:
                    return self._cache[path]
            loaded = load_checkpoint(path, with_optimizer=False)
            with self._lock:
                self.loads += 1
                self._cache[path] = loaded
                self._batchers[id(loaded)] = MicroBatcher(
                    loaded.model, window_s=self.batch_window_s
                )
                self._loading.pop(path, None)
                while len(self._cache) > self.cache_size:
                    _, evicted = self._cache.popitem(last=False)
                    self._batchers.pop(id(evicted), None)
        return loaded

    def batcher(self, loaded: LoadedCheckpoint) -> MicroBatcher:
        """The micro-batcher of a loaded model (a fresh one if it was evicted meanwhile)."""
        with self._lock:
            found = self._batchers.get(id(loaded))
            if found is not None and found.forward is loaded.model:
                return found
        return MicroBatcher(loaded.model, window_s=0.0)

    def forget(self, job_id: str) -> None:
        """Drop the job's cached models (it was deleted)."""
        with self._lock:  # under <data_root>/<id>/ or <ray_storage>/lifelong-<id>/
            for path in [p for p in self._cache if job_id in p]:
                self._batchers.pop(id(self._cache.pop(path)), None)

    def load_generation(
        self, job_id: str, generation: int | None
    ) -> tuple[GenerationRecord, LoadedCheckpoint]:
        """The generation and its newest checkpoint, loaded.

        Ray Train deletes all but its newest periodic checkpoints as new ones arrive, so the one
        just resolved may vanish while it is read: resolve again (the record names a newer one by
        then, or the durable copy serves).
        """
        for attempt in range(3):
            record, path = self.resolve(job_id, generation)
            try:
                return record, self.load(path)
            except (OSError, ValueError):
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def architecture(self, job_id: str, generation: int | None) -> dict[str, Any]:
        record, loaded = self.load_generation(job_id, generation)
        meta = loaded.meta
        return {
            "generation": record.generation,
            "step": meta.step,
            "task": meta.task.model_dump(mode="json"),
            "model": meta.model.model_dump(mode="json"),
            "records": meta.records,
            "param_count": meta.param_count,
        }

    def weights(self, job_id: str, generation: int | None) -> tuple[bytes, dict[str, Any]]:
        """The generation's weights as safetensors, the architecture in its metadata."""
        return self.export(job_id, generation, "safetensors")

    def export(
        self, job_id: str, generation: int | None, fmt: ExportFormat
    ) -> tuple[bytes, dict[str, Any]]:
        """The generation's model in ``fmt`` (``service.runtime.exports``), and its architecture."""
        record, loaded = self.load_generation(job_id, generation)
        architecture = self.architecture(job_id, record.generation)
        try:
            payload = export(loaded.model, fmt, list(loaded.meta.task.input_shape), architecture)
        except Exception as exc:  # an exporter's limit on this architecture, said plainly
            raise ConflictError(
                f"generation {record.generation} of job '{job_id}' cannot be exported as {fmt}: "
                f"{type(exc).__name__}: {str(exc)[:300]}"
            ) from exc
        return payload, architecture

    def released(
        self, job_id: str, generation: int | None
    ) -> tuple[Release | None, int, LoadedCheckpoint]:
        """The release that serves: the champion, or the named generation's newest release;
        without one, the newest checkpoint of the newest (or named) generation."""
        ledger = self.ledger(job_id)
        release = ledger.release(CHAMPION if generation is None else f"generation-{generation}")
        if release is not None:
            try:
                return release, release.generation, self.load(release.path)
            except (OSError, ValueError):
                pass  # its copy is gone: the newest checkpoint serves
        record, loaded = self.load_generation(job_id, generation)
        return None, record.generation, loaded

    def predict(self, job_id: str, features: np.ndarray, generation: int | None) -> dict[str, Any]:
        release, served, loaded = self.released(job_id, generation)
        task = loaded.meta.task
        expected = tuple(task.input_shape)
        if features.ndim != len(expected) + 1 or tuple(features.shape[1:]) != expected:
            raise_shape(features.shape, expected)
        if features.shape[0] > MAX_PREDICT_SAMPLES:
            raise TooLargeError(
                f"{features.shape[0]} samples to predict; at most {MAX_PREDICT_SAMPLES} per call"
            )
        out = self.batcher(loaded)(torch.from_numpy(np.ascontiguousarray(features, np.float32)))
        answer = {**_served(release, served, loaded, generation), "kind": task.kind}
        if task.kind == "classification":
            probs = torch.softmax(out, dim=-1)
            answer["predictions"] = out.argmax(dim=-1).tolist()
            answer["probabilities"] = probs.tolist()
            if task.class_names:
                answer["class_names"] = [task.class_name(i) for i in answer["predictions"]]
        else:
            answer["predictions"] = out.tolist()
        return answer

    # --- language models -------------------------------------------------------------------

    def score(
        self, job_id: str, documents: Sequence[Sequence[int]], generation: int | None
    ) -> dict[str, Any]:
        """The loss (mean nats per predicted token) and perplexity of each token sequence under
        the generation that serves (as for :meth:`predict`)."""
        from workers.text import score

        release, served, loaded = self.released(job_id, generation)
        task = loaded.meta.task
        scores = []
        for ids in documents:
            with TRACING:
                loss, perplexity = score(loaded.model, ids, context_length=task.context_length)
            scores.append({"tokens": len(ids), "loss": loss, "perplexity": perplexity})
        return {
            **_served(release, served, loaded, generation),
            "kind": task.kind,
            "predictions": scores,
        }

    def generate(
        self, job_id: str, prompt_ids: Sequence[int], options: Sampling, generation: int | None
    ) -> tuple[dict[str, Any], TaskSpec, Iterator[int]]:
        """Who answers (as for :meth:`predict`), its task, and the new token ids one at a time
        (lazily: each ``next`` runs the model once, so a caller can stream them)."""
        from workers.text import generate

        release, served, loaded = self.released(job_id, generation)
        task = loaded.meta.task
        tokens = generate(
            loaded.model,
            prompt_ids,
            max_new_tokens=options.max_new_tokens,
            temperature=options.temperature,
            top_k=options.top_k,
            seed=options.seed,
            context_length=task.context_length,
        )
        return _served(release, served, loaded, generation), task, _in_turn(tokens)


def _in_turn(tokens: Iterator[int]) -> Iterator[int]:
    """Each step of a generation under :data:`TRACING` (never across steps: a long stream does not
    hold up a trace, nor another stream)."""
    try:
        while True:
            with TRACING:
                token = next(tokens, None)
            if token is None:
                return
            yield token
    finally:
        close = getattr(tokens, "close", None)
        if close is not None:
            with TRACING:
                close()


@dataclass(frozen=True)
class Sampling:
    """How a generation samples its tokens (``workers.text.generate``)."""

    max_new_tokens: int
    temperature: float = 1.0
    top_k: int | None = None
    seed: int | None = None


class TokenText:
    """The text of generated tokens, piece by piece: for the ``bytes`` tokenizer each piece holds
    the characters a byte completes (a multi-byte character appears with its last byte), so the
    pieces join to the UTF-8 decoding of all the bytes; for ``ids``, each id as text."""

    def __init__(self, task: TaskSpec) -> None:
        self.task = task
        self._utf8 = (
            codecs.getincrementaldecoder("utf-8")(errors="replace")
            if task.tokenizer == "bytes"
            else None
        )

    def piece(self, token: int) -> str:
        if self._utf8 is None:
            return str(token)
        return str(self._utf8.decode(bytes([token])))

    def whole(self, tokens: Sequence[int]) -> str:
        from workers.text import decode_tokens

        return decode_tokens(tokens, self.task)


def _served(
    release: Release | None, served: int, loaded: LoadedCheckpoint, generation: int | None
) -> dict[str, Any]:
    """Which weights answered: generation, step, release, version and alias."""
    return {
        "generation": served,
        "step": loaded.meta.step,
        "release": release.number if release else None,
        "version": release.version if release else None,
        "alias": None if release is None else CHAMPION if generation is None else
        f"generation-{generation}",
    }  # fmt: skip


def raise_shape(got: tuple[int, ...], expected: tuple[int, ...]) -> None:
    raise InvalidError(
        f"features have shape {list(got)}; this job's model takes [n, "
        f"{', '.join(map(str, expected))}]"
    )
