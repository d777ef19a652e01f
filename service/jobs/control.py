"""The domain layer: what each request does, independent of HTTP.

Routes parse the request, call one method of :class:`ControlPlane`, and return a response model.
Every method validates before it stores anything, and raises a ``service.jobs.errors`` error (with its
status code) that names the problem.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pydantic_core
import redis
from starlette.concurrency import run_in_threadpool

from growth_policy import GrowthOp
from service.jobs import ingest, text_ingest
from service.jobs.errors import (
    BadRequestError,
    ConflictError,
    InvalidError,
    NotFoundError,
    ServiceError,
    UnavailableError,
)
from service.jobs.growth import GrowthChecker
from service.jobs.spec import SpecError, base_param_count, validate_job_spec
from service.runtime.serving import ModelServer
from service.settings import Settings
from service.state.records import CommandRecord, DatasetSummary, EventRecord, JobRecord, PushRecord
from service.state.states import CommandKind, JobStatus
from service.state.store import (
    AppendOutcome,
    JobActiveError,
    JobLeasedError,
    JobNotFoundError,
    JobTerminalError,
    RedisStore,
    StoreError,
    TooManyJobsError,
    TrackingPendingError,
    TransitionError,
)
from workers.checkpoint import run_name
from workers.shards import ShardInfo, ShardStore, Split, remove_tree

log = logging.getLogger("lifelong.service")

IDEMPOTENCY_KEY_MAX = 255


@dataclass(frozen=True)
class PushOutcome:
    record: PushRecord
    replayed: bool


@dataclass(frozen=True)
class DeleteOutcome:
    """What deleting a job removed."""

    job_id: str
    status: JobStatus
    redis_keys: int
    data_removed: bool
    checkpoints_removed: bool


@dataclass(frozen=True)
class IngestStats:
    """What one accepted push added (for metrics)."""

    samples_train: int
    samples_val: int
    body_bytes: int
    format: str


# Store errors answered with 409, and what the answer adds to say what to do.
_CONFLICTS: dict[type[StoreError], str] = {
    JobTerminalError: "; it accepts no more data or commands",
    TooManyJobsError: " (LIFELONG_MAX_JOBS); raise the limit to create more",
    TransitionError: "",
    JobActiveError: "; only a stopped or failed job can be deleted: stop it first "
    "(POST /v1/jobs/{id}/stop) and delete it once its status is 'stopped'",
    JobLeasedError: "; retry in a few seconds",
    TrackingPendingError: " (the MLflow server was unreachable when it stopped); retry once "
    "MLflow answers, or delete with force=true to drop them",
}


def translate(exc: StoreError) -> ServiceError:
    """The API error for a store error."""
    if isinstance(exc, JobNotFoundError):
        return NotFoundError(str(exc))
    for kind, hint in _CONFLICTS.items():
        if isinstance(exc, kind):
            return ConflictError(f"{exc}{hint}")
    return ServiceError(str(exc))


class ControlPlane:
    """Jobs, data, commands and events of one deployment."""

    def __init__(
        self,
        settings: Settings,
        store: RedisStore,
        shards: ShardStore,
        *,
        on_ingest: Callable[[IngestStats], None] | None = None,
        on_job_created: Callable[[JobRecord], None] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.shards = shards
        self.on_ingest = on_ingest
        # Who starts the job's supervisor; a failure there is logged, not answered:
        # the job is stored, and whatever reconciles jobs with supervisors picks it up.
        self.on_job_created = on_job_created
        self.readiness_checks: dict[str, Callable[[], str]] = {"storage": self._storage_check}
        self.serving = ModelServer(store, settings.data_root_uri)
        self.growth = GrowthChecker(self.serving)

    # --- jobs ------------------------------------------------------------------------------

    def create_job(self, body: bytes) -> JobRecord:
        try:
            raw = pydantic_core.from_json(body) if body else None
        except ValueError as exc:
            raise BadRequestError(f"the body is not valid JSON: {exc}") from None
        if raw is None:
            raise BadRequestError("the body is empty; send a job spec as a JSON object")
        try:
            spec = validate_job_spec(raw, max_workers=self.settings.max_workers_per_job)
        except SpecError as exc:
            raise InvalidError(str(exc), errors=exc.problems) from None
        try:
            job = self.store.create_job(
                spec, max_jobs=self.settings.max_jobs, param_count=base_param_count(spec)
            )
        except StoreError as exc:
            raise translate(exc) from None
        if self.on_job_created is not None:
            try:
                self.on_job_created(job)
            except Exception:
                log.exception("job %s is stored, but starting it failed", job.id)
        return job

    def get_job(self, job_id: str) -> tuple[JobRecord, DatasetSummary]:
        job = self.store.get_job(job_id)
        if job is None:
            raise NotFoundError(f"job '{job_id}' not found")
        return job, self.store.dataset_summary(job_id)

    def require_job(self, job_id: str) -> JobRecord:
        job = self.store.get_job(job_id)
        if job is None:
            raise NotFoundError(f"job '{job_id}' not found")
        return job

    def list_jobs(
        self, *, offset: int, limit: int, among: list[str] | None = None
    ) -> tuple[list[tuple[JobRecord, DatasetSummary]], int]:
        """A page of the jobs (of those ``among``, when given) and how many there are."""
        if among is None:
            jobs = self.store.list_jobs(offset=offset, limit=limit)
            total = self.store.count_jobs()
        else:
            jobs = self.store.get_jobs(among[offset : offset + limit])
            total = len(among)
        summaries = self.store.dataset_summaries([j.id for j in jobs])
        return list(zip(jobs, summaries, strict=True)), total

    def delete_job(self, job_id: str, *, force: bool = False) -> DeleteOutcome:
        """Delete a stopped or failed job: its Redis state, its shards and its checkpoints.

        The job disappears from the API at once (one atomic step in Redis); its files and the
        rest of its keys follow. Should this process die in between, :meth:`finish_deletions`
        (run at start-up) completes the work. Its MLflow experiment, runs and registered model
        versions stay: they are the record of what was trained.
        """
        try:
            status = self.store.delete_job(job_id, force=force)
        except StoreError as exc:
            raise translate(exc) from None
        data, checkpoints, keys = self._purge(job_id)
        log.info("job %s deleted (%d keys, data %s)", job_id, keys, data)
        return DeleteOutcome(job_id, status, keys, data, checkpoints)

    def finish_deletions(self) -> list[str]:
        """Complete the deletions that an earlier process started and did not finish."""
        done = []
        for job_id in self.store.pending_deletions():
            try:
                self._purge(job_id)
                done.append(job_id)
            except (OSError, StoreError) as exc:
                log.warning("finishing the deletion of job %s failed: %s", job_id, exc)
        return done

    def _purge(self, job_id: str) -> tuple[bool, bool, int]:
        self.serving.forget(job_id)
        data = self.shards.delete_job(job_id)
        checkpoints = remove_tree(self.settings.ray_storage_uri, run_name(job_id))
        # Keys last: the id stays in the 'deleting' set until the files are gone.
        return data, checkpoints, self.store.purge_job(job_id)

    # --- data ------------------------------------------------------------------------------

    def push(
        self, job_id: str, body: bytes, content_type: str | None, idempotency_key: str | None
    ) -> PushOutcome:
        """Validate a batch, write its shards durably, then append them to the manifest."""
        job = self.require_job(job_id)
        fmt = ingest.media_type(content_type)
        fingerprint = ""
        if idempotency_key is not None:
            check_idempotency_key(idempotency_key)
            fingerprint = _fingerprint(fmt, body)
            stored = self.store.get_push(job_id, idempotency_key)
            if stored is not None:  # a retry: the original answer, even if the job stopped since
                return self._replay(stored[0], stored[1], fingerprint)
        if job.status.terminal:
            raise ConflictError(f"job '{job_id}' is {job.status}; it accepts no more data")

        if text_ingest.is_language_modeling(job.spec.task):
            written = self._write_documents(job, body, fmt, content_type)
        elif fmt == "text":
            raise text_ingest.refuse_text(job.spec.task)
        else:
            limit = self.settings.max_samples_per_push
            batch = ingest.decode(
                body, fmt, max_samples=limit, max_decoded_bytes=4 * self.settings.max_push_bytes
            )
            checked = ingest.check(batch, job.spec.task, max_samples=limit)
            val = ingest.validation_mask(checked.features, job.spec.val_fraction)
            written = self._write_shards(job_id, checked, val)
        outcome = self._append(job_id, written, idempotency_key, fingerprint)
        if outcome.replayed:
            # A concurrent retry with the same key won the race: its answer stands, ours goes.
            self._discard(written)
            return self._replay(outcome.record, outcome.fingerprint or "", fingerprint)
        if self.on_ingest is not None:
            self.on_ingest(
                IngestStats(
                    samples_train=outcome.record.accepted_train,
                    samples_val=outcome.record.accepted_val,
                    body_bytes=len(body),
                    format=fmt,
                )
            )
        return PushOutcome(outcome.record, replayed=False)

    def _write_shards(
        self, job_id: str, checked: ingest.CheckedBatch, val: np.ndarray
    ) -> list[ShardInfo]:
        """One shard per split that has samples, written durably; none left behind on failure."""
        splits: tuple[tuple[Split, np.ndarray], ...] = (("train", ~val), ("val", val))
        return self._durably(job_id, [
            partial(self.shards.write, job_id, checked.features[mask], checked.labels[mask], split)
            for split, mask in splits if mask.any()
        ])  # fmt: skip

    def _write_documents(
        self, job: JobRecord, body: bytes, fmt: str, content_type: str | None
    ) -> list[ShardInfo]:
        """A language-modelling push: its documents checked, then one token shard per split
        that has documents (each document whole in the split its hash chooses)."""
        limits = text_ingest.DocumentLimits(
            self.settings.max_documents_per_push, self.settings.max_document_tokens
        )
        documents = text_ingest.read_documents(body, fmt, content_type, job.spec.task, limits)
        val = text_ingest.validation_split(documents, job.spec.val_fraction)
        splits: tuple[tuple[Split, np.ndarray], ...] = (("train", ~val), ("val", val))
        return self._durably(job.id, [
            partial(self.shards.write_tokens, job.id, *documents.select(mask), split)
            for split, mask in splits if mask.any()
        ])  # fmt: skip

    def _durably(self, job_id: str, writes: list[Callable[[], ShardInfo]]) -> list[ShardInfo]:
        """Run the shard writes in order; on any failure, delete what was written."""
        written: list[ShardInfo] = []
        try:
            for write in writes:
                written.append(write())
        except OSError as exc:  # the shard store (disk full, permissions, object store down)
            self._discard(written)
            log.error("writing a shard of job %s failed: %s", job_id, exc)
            raise UnavailableError(
                f"the data store could not write the batch ({exc.strerror or exc}); nothing "
                "was stored, retry later"
            ) from None
        except BaseException:
            self._discard(written)
            raise
        return written

    def _append(
        self,
        job_id: str,
        written: list[ShardInfo],
        idempotency_key: str | None,
        fingerprint: str,
    ) -> AppendOutcome:
        """Append the written shards to the job's manifest (one script: all or nothing)."""
        try:
            return self.store.append_shards(
                job_id, written, idempotency_key=idempotency_key, fingerprint=fingerprint
            )
        except StoreError as exc:  # the script answered: it appended nothing
            self._discard(written)
            raise translate(exc) from None
        except (redis.ConnectionError, redis.TimeoutError):
            # The connection broke with the append on its way: the script may have run (the
            # manifest lists these shards, only the answer was lost) or not. Keep the files: an
            # unlisted file is harmless, a listed one deleted would be acknowledged data lost.
            # The 503 asks for a retry with the same Idempotency-Key, which finds out which.
            log.warning("job %s: Redis went away during a manifest append; shards kept", job_id)
            raise
        except BaseException:
            self._discard(written)
            raise

    def _replay(self, record: PushRecord, stored: str, fingerprint: str) -> PushOutcome:
        if stored != fingerprint:
            raise ConflictError(
                "this Idempotency-Key was already used for a different body; use a new key "
                "for new data, and the same body when retrying"
            )
        return PushOutcome(record, replayed=True)

    def _discard(self, shards: list[ShardInfo]) -> None:
        for info in shards:
            try:
                self.shards.delete(info)
            except OSError as exc:  # an orphan file is harmless: no manifest lists it
                log.warning("could not delete unlisted shard %s: %s", info.path, exc)

    def dataset(
        self, job_id: str, *, shard_offset: int, shard_limit: int
    ) -> tuple[DatasetSummary, list[ShardInfo]]:
        self.require_job(job_id)
        summary = self.store.dataset_summary(job_id)
        shards = (
            self.store.shard_page(job_id, offset=shard_offset, limit=shard_limit)
            if shard_limit
            else []
        )
        return summary, shards

    # --- commands --------------------------------------------------------------------------

    def command(self, job_id: str, kind: CommandKind, op: GrowthOp | None = None) -> CommandRecord:
        if op is not None:
            job = self.require_job(job_id)
            if not job.status.terminal:  # a finished job: the store answers 409 below
                self.growth.check(job, op)
        args: dict[str, Any] = {} if op is None else op.model_dump(mode="json", exclude_unset=True)
        try:
            return self.store.enqueue_command(job_id, kind, args)
        except StoreError as exc:
            raise translate(exc) from None

    def get_command(self, job_id: str, command_id: str) -> CommandRecord:
        self.require_job(job_id)
        command = self.store.get_command(job_id, command_id)
        if command is None:
            raise NotFoundError(f"command '{command_id}' of job '{job_id}' not found")
        return command

    def list_commands(self, job_id: str, *, limit: int) -> list[CommandRecord]:
        self.require_job(job_id)
        return self.store.list_commands(job_id, limit=limit)

    # --- events ----------------------------------------------------------------------------

    async def stored_events(self, job_id: str, after: str, *, limit: int) -> list[EventRecord]:
        """Up to ``limit`` stored events after ``after`` (no waiting)."""
        return await self.store.aread_range(job_id, after=after, count=limit)

    async def follow_events(
        self, job_id: str, after: str, *, keepalive_s: float
    ) -> AsyncIterator[EventRecord | None]:
        """Events after ``after`` as they arrive; ``None`` after each ``keepalive_s`` of silence.

        Ends when the job is finished (stopped or failed) and nothing new arrived for one
        keep-alive period. The caller stops iterating when its client goes away.
        """
        block_ms = max(1, int(keepalive_s * 1000))
        last = after
        while True:
            events = await self.store.aread_events(job_id, after=last, block_ms=block_ms)
            if events:
                for event in events:
                    last = event.id
                    yield event
                continue
            status = await self.store.ajob_status(job_id)
            if status is None or status.terminal:
                return
            yield None

    # --- health ----------------------------------------------------------------------------

    def _storage_check(self) -> str:
        """A local data root must exist (it is created) and be writable; object stores are
        checked by their first write."""
        folder = _local_root(self.shards.root)
        if folder is None:
            return "ok (object store, not probed)"
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return f"unusable: {exc.strerror}"
        return "ok" if os.access(folder, os.W_OK) else f"not writable: {folder}"

    async def readiness(self) -> dict[str, str]:
        """Each dependency and whether it answers; raises UnavailableError if one does not.

        Redis is always checked; ``readiness_checks`` maps more names to functions that return
        "ok…" or what is wrong (the data root is one; the supervisor launcher can add Ray).
        """
        checks: dict[str, str] = {}
        try:
            started = time.perf_counter()
            await self.store.aping()
            checks["redis"] = f"ok ({(time.perf_counter() - started) * 1000:.1f} ms)"
        except Exception as exc:
            checks["redis"] = f"unreachable: {type(exc).__name__}"
        for name, check in self.readiness_checks.items():
            try:
                checks[name] = await run_in_threadpool(check)
            except Exception as exc:
                checks[name] = f"check failed: {type(exc).__name__}: {exc}"
        if any(not v.startswith("ok") for v in checks.values()):
            raise UnavailableError("not ready: " + ", ".join(f"{k} {v}" for k, v in checks.items()))
        return checks


def _local_root(root: str) -> Path | None:
    if "://" in root and not root.startswith("file://"):
        return None
    return Path(root.removeprefix("file://")).expanduser()


def check_idempotency_key(key: str) -> None:
    if not 1 <= len(key) <= IDEMPOTENCY_KEY_MAX or not key.isprintable() or not key.isascii():
        raise BadRequestError(
            f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX} printable ASCII characters "
            "(a UUID is a good choice)"
        )


def _fingerprint(fmt: str, body: bytes) -> str:
    digest = hashlib.sha256(fmt.encode())
    digest.update(b"\0")
    digest.update(body)
    return digest.hexdigest()


__all__ = ["ControlPlane", "IngestStats", "JobStatus", "PushOutcome", "translate"]
