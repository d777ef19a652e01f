"""Serving a job's generations: their records, their weights, and predictions from them.

The generations and the checkpoint that serves each come from the job's generation ledger
(``service.runtime.generations``). Loaded models are cached by checkpoint path (checkpoints are
immutable), a few at a time.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Any

import numpy as np
import torch

from service.jobs.errors import ConflictError, InvalidError, NotFoundError, TooLargeError
from service.runtime.generations import GenerationLedger, GenerationRecord
from service.state.store import RedisStore
from workers.checkpoint import LoadedCheckpoint, load_checkpoint

MAX_PREDICT_SAMPLES = 10_000


class ModelServer:
    """Generation records, weights and predictions for the jobs of one deployment."""

    def __init__(self, store: RedisStore, data_root: str, *, cache_size: int = 4) -> None:
        self.store = store
        self.data_root = data_root
        self.cache_size = cache_size
        self._cache: OrderedDict[str, LoadedCheckpoint] = OrderedDict()
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
        with self._lock:
            if path in self._cache:
                self._cache.move_to_end(path)
                return self._cache[path]
        loaded = load_checkpoint(path, with_optimizer=False)
        with self._lock:
            self._cache[path] = loaded
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return loaded

    def forget(self, job_id: str) -> None:
        """Drop the job's cached models (it was deleted)."""
        with self._lock:  # under <data_root>/<id>/ or <ray_storage>/lifelong-<id>/
            for path in [p for p in self._cache if job_id in p]:
                del self._cache[path]

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
        from safetensors.torch import save

        record, loaded = self.load_generation(job_id, generation)
        architecture = self.architecture(job_id, record.generation)
        state = {k: v.detach().contiguous() for k, v in loaded.model.state_dict().items()}
        payload = save(state, metadata={"lifelong.architecture": json.dumps(architecture)})
        return payload, architecture

    def predict(self, job_id: str, features: np.ndarray, generation: int | None) -> dict[str, Any]:
        record, loaded = self.load_generation(job_id, generation)
        task = loaded.meta.task
        expected = tuple(task.input_shape)
        if features.ndim != len(expected) + 1 or tuple(features.shape[1:]) != expected:
            raise_shape(features.shape, expected)
        if features.shape[0] > MAX_PREDICT_SAMPLES:
            raise TooLargeError(
                f"{features.shape[0]} samples to predict; at most {MAX_PREDICT_SAMPLES} per call"
            )
        with torch.no_grad():
            out = loaded.model(torch.from_numpy(np.ascontiguousarray(features, np.float32)))
        answer: dict[str, Any] = {
            "generation": record.generation,
            "step": loaded.meta.step,
            "kind": task.kind,
        }
        if task.kind == "classification":
            probs = torch.softmax(out, dim=-1)
            answer["predictions"] = out.argmax(dim=-1).tolist()
            answer["probabilities"] = probs.tolist()
        else:
            answer["predictions"] = out.tolist()
        return answer


def raise_shape(got: tuple[int, ...], expected: tuple[int, ...]) -> None:
    raise InvalidError(
        f"features have shape {list(got)}; this job's model takes [n, "
        f"{', '.join(map(str, expected))}]"
    )
