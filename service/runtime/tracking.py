"""MLflow tracking that never stalls or kills training: a durable outbox drained in the background.

Every tracking call of a job (open a generation's run, log metrics, log the checkpoint, register a
model version, close a run) becomes an *operation* appended to a Redis list, the job's outbox, and
returns at once. One background thread drains the outbox into MLflow in order, batching metrics, and
removes an operation only after MLflow accepted it. When the tracking server is down, operations
wait in Redis (they survive a restart of the supervisor too) and are retried with exponential
backoff; when it comes back, everything is backfilled with its original steps and timestamps.

Stock MLflow would block a synchronous call for minutes and then raise (see STACK.md), and its
asynchronous mode drops data on failure: neither is acceptable for a run that lasts weeks. The
client here is set to fail fast (no retries of its own, a short timeout), since the outbox retries.

Operations are idempotent, so that one retried after a timeout that in fact succeeded does no harm:
a generation's run is found by its tag before one is created, MLflow ignores a metric point logged
twice with the same key, value, step and timestamp, artifacts overwrite, and a model version is
looked up by run id before one is created.

The outbox is bounded (``max_ops``): past the bound, metric points are dropped (and counted) rather
than runs, artifacts or registrations, which are never dropped.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import redis

from service.state.codec import s as text
from service.state.keys import Keys

logger = logging.getLogger(__name__)

GENERATION_TAG = "lifelong.generation"
JOB_TAG = "lifelong.job_id"
JOB_RUN_TAG = "lifelong.job_run"  # the job's parent run, above generation 0
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own lineage tag: the UI nests runs by it
ALIAS = "latest"  # resolved by MLflow to the newest version
# MLflow 3's UI opens an experiment without this tag as a GenAI overview of traces.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
# MLflow error codes that no retry will fix: drop the operation and count it.
BUILD_TRIES = 3  # attempts at a release's MLflow model before it is dropped
PERMANENT_ERRORS = frozenset(
    {"INVALID_PARAMETER_VALUE", "BAD_REQUEST", "INVALID_STATE", "PERMISSION_DENIED"}
)


def fail_fast_client_env() -> None:
    """Make the MLflow client of this process fail within seconds; the outbox retries instead."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@dataclass(frozen=True)
class TrackedIds:
    """Where a job is in MLflow: experiment, registered model, run and version per generation."""

    experiment_id: str | None
    model_name: str | None
    runs: dict[int, str]
    versions: dict[int, str]


def read_tracked_ids(client: redis.Redis, keys: Keys, job_id: str) -> TrackedIds:
    """What the tracker of ``job_id`` has recorded of MLflow's ids (readers need no tracker)."""
    info = {text(k): text(v) for k, v in client.hgetall(keys.mlflow(job_id)).items()}
    runs = client.hgetall(keys.mlflow_runs(job_id))
    versions = client.hgetall(keys.mlflow_versions(job_id))
    return TrackedIds(
        info.get("experiment_id"),
        info.get("model_name"),
        {int(text(k)): text(v) for k, v in runs.items()},
        {int(text(k)): text(v) for k, v in versions.items()},
    )


@dataclass
class TrackerStatus:
    pending: int
    dropped: int
    last_error: str | None
    failing_since: float | None


@dataclass
class MlflowTracker:
    """The tracking of one job: experiment ``experiment_name``, one run per generation.

    The tracker keeps, under the job's keys (``service.state.keys.Keys``): ``mlflow_outbox`` (LIST
    of operations), ``mlflow_runs`` (HASH generation → run id), ``mlflow_versions`` (HASH
    generation → registered model version) and ``mlflow`` (HASH: experiment id, model name, the
    generation that ``latest`` points to, counters, last error).
    """

    client: redis.Redis
    keys: Keys
    job_id: str
    experiment_name: str
    model_name: str
    tracking_uri: str
    artifact_location: str | None = None
    max_ops: int = 200_000
    batch_ops: int = 200
    max_backoff: float = 30.0
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _wake: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _mlflow: Any = field(default=None, init=False, repr=False)
    _experiment_id: str | None = field(default=None, init=False, repr=False)

    @classmethod
    def for_job(
        cls,
        client: redis.Redis,
        keys: Keys,
        *,
        job_id: str,
        job_name: str,
        tracking_uri: str,
        prefix: str = "lifelong",
    ) -> MlflowTracker:
        """The tracker of a job: experiment ``<prefix>/<name>-<id>``, model ``<prefix>-<id>``."""
        return cls(
            client=client,
            keys=keys,
            job_id=job_id,
            experiment_name=f"{prefix}/{job_name}-{job_id}",
            model_name=f"{prefix}-{job_id}",
            tracking_uri=tracking_uri,
        )

    # --- keys --------------------------------------------------------------------------------
    @property
    def outbox_key(self) -> str:
        return self.keys.mlflow_outbox(self.job_id)

    @property
    def runs_key(self) -> str:
        return self.keys.mlflow_runs(self.job_id)

    @property
    def versions_key(self) -> str:
        return self.keys.mlflow_versions(self.job_id)

    @property
    def info_key(self) -> str:
        return self.keys.mlflow(self.job_id)

    # --- producer side: only Redis, never MLflow ---------------------------------------------
    def _put(self, op: dict[str, Any]) -> bool:
        if op["kind"] == "metrics" and int(self.client.llen(self.outbox_key)) >= self.max_ops:
            self.client.hincrby(self.info_key, "dropped", 1)
            return False
        self.client.rpush(self.outbox_key, json.dumps(op, separators=(",", ":")))
        self._wake.set()
        return True

    def open_generation(
        self,
        generation: int,
        *,
        parent: int | None,
        step: int,
        tags: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        time_ms: int | None = None,
    ) -> None:
        """Open generation ``generation``'s run (its parent generation's run is its parent)."""
        self._put(
            {
                "kind": "open",
                "gen": generation,
                "parent": parent,
                "step": step,
                "tags": tags or {},
                "params": params or {},
                "time": time_ms or _now_ms(),
            }
        )

    def log_metrics(
        self, generation: int, step: int, values: dict[str, float], time_ms: int | None = None
    ) -> bool:
        """Queue metric points against the global step; False when the bound dropped them."""
        clean = {k: float(v) for k, v in values.items() if v is not None}
        if not clean:
            return True
        return self._put(
            {
                "kind": "metrics",
                "gen": generation,
                "step": step,
                "time": time_ms or _now_ms(),
                "values": clean,
            }
        )

    def set_tags(self, generation: int, tags: dict[str, str]) -> None:
        """Set (or overwrite) tags of generation ``generation``'s run."""
        self._put({"kind": "tags", "gen": generation, "tags": {k: str(v) for k, v in tags.items()}})

    def log_artifacts(self, generation: int, path: str, artifact_path: str) -> None:
        """Upload a folder (or one file) of ``path`` under ``artifact_path`` of the run."""
        self._put({"kind": "artifacts", "gen": generation, "path": path, "dest": artifact_path})

    def register(self, generation: int, artifact_path: str) -> None:
        """One registered model version per generation; ``latest`` follows the newest."""
        self._put({"kind": "register", "gen": generation, "dest": artifact_path})

    def story(self, generation: int, metric_name: str) -> None:
        """Draw the job's story so far (``service.runtime.story``) into generation
        ``generation``'s run and the job's run, as ``plots/story.png``."""
        self._put({"kind": "story", "gen": generation, "metric": metric_name})

    def finish_job(self, generation: int) -> None:
        """The job stopped: its parent run ends (FINISHED)."""
        self._put({"kind": "finish_job", "gen": generation, "time": _now_ms()})

    def release(self, generation: int, release: str) -> None:
        """A release (``service.runtime.releases.Release`` JSON): its pyfunc model logged in the
        generation's run, a registered model version with its tags, and its aliases."""
        self._put({"kind": "release", "gen": generation, "release": json.loads(release)})

    def close_generation(
        self, generation: int, status: str = "FINISHED", time_ms: int | None = None
    ) -> None:
        self._put({"kind": "close", "gen": generation, "status": status, "time": time_ms})

    # --- what has been tracked ----------------------------------------------------------------
    def run_ids(self) -> dict[int, str]:
        return read_tracked_ids(self.client, self.keys, self.job_id).runs

    def model_versions(self) -> dict[int, str]:
        return read_tracked_ids(self.client, self.keys, self.job_id).versions

    def status(self) -> TrackerStatus:
        info = {text(k): text(v) for k, v in self.client.hgetall(self.info_key).items()}
        since = info.get("failing_since")
        return TrackerStatus(
            pending=int(self.client.llen(self.outbox_key)),
            dropped=int(info.get("dropped", 0)),
            last_error=info.get("last_error") or None,
            failing_since=float(since) if since else None,
        )

    # --- consumer side ------------------------------------------------------------------------
    def start(self) -> None:
        """Drain the outbox in a daemon thread until :meth:`stop`."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"mlflow-outbox-{self.job_id}", daemon=True
        )
        self._thread.start()

    def stop(self, *, flush_timeout: float = 0.0) -> None:
        """Stop draining; with ``flush_timeout``, first try that long to empty the outbox."""
        deadline = time.monotonic() + flush_timeout
        while flush_timeout and time.monotonic() < deadline and self.client.llen(self.outbox_key):
            time.sleep(0.1)
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def flush(self, timeout: float) -> bool:
        """Wait until the outbox is empty (the drain thread must run); False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.client.llen(self.outbox_key):
                return True
            self._wake.set()
            time.sleep(0.1)
        return not self.client.llen(self.outbox_key)

    def _run(self) -> None:
        fail_fast_client_env()
        failures = 0
        while not self._stop.is_set():
            try:
                applied = self.drain_once()
            except Exception as exc:  # an outage or a bug: keep the op, back off, go on
                failures += 1
                self.record_failure(exc)
                self._stop.wait(min(self.max_backoff, 0.5 * 2 ** min(failures, 10)))
                continue
            if failures:
                logger.info("mlflow tracking for job %s is back after %d failures", self.job_id,
                            failures)  # fmt: skip
                self.clear_failure()
                failures = 0
            if not applied:
                self._wake.wait(1.0)
                self._wake.clear()

    def clear_failure(self) -> None:
        self.client.hdel(self.info_key, "failing_since", "last_error")

    def record_failure(self, exc: Exception) -> None:
        message = f"{type(exc).__name__}: {exc}"[:500]
        self.client.hsetnx(self.info_key, "failing_since", str(time.time()))
        self.client.hset(self.info_key, "last_error", message)
        logger.warning("mlflow tracking for job %s is failing (%s); ops stay queued", self.job_id,
                       message)  # fmt: skip

    def drain_once(self) -> int:
        """Apply the operations at the head of the outbox; return how many were applied."""
        raw = self.client.lrange(self.outbox_key, 0, self.batch_ops - 1)
        if not raw:
            return 0
        ops = [json.loads(r) for r in raw]
        done = 0
        while done < len(ops):
            op = ops[done]
            if op["kind"] == "metrics":
                n = self._apply_metrics(ops[done:])
            else:
                self._apply_one(op)
                n = 1
            # Remove exactly what was applied (the producer only appends at the tail).
            self.client.ltrim(self.outbox_key, n, -1)
            done += n
        return done

    # --- applying operations -----------------------------------------------------------------
    def _client(self) -> Any:
        if self._mlflow is None:
            fail_fast_client_env()
            from mlflow.tracking import MlflowClient

            self._mlflow = MlflowClient(tracking_uri=self.tracking_uri)
        return self._mlflow

    def _guard(self, fn: Callable[[], Any], op: dict[str, Any]) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return fn()
        except MlflowException as exc:
            if exc.error_code in PERMANENT_ERRORS:
                logger.error("mlflow refused %s for job %s, dropping it: %s", op["kind"],
                             self.job_id, exc)  # fmt: skip
                self.client.hincrby(self.info_key, "dropped", 1)
                return None
            raise

    def _experiment(self) -> str:
        if self._experiment_id is None:
            cached = self.client.hget(self.info_key, "experiment_id")
            if cached:
                self._experiment_id = text(cached)
            else:
                mlflow = self._client()
                exp = mlflow.get_experiment_by_name(self.experiment_name)
                if exp is not None:
                    self._experiment_id = str(exp.experiment_id)
                    for key, value in EXPERIMENT_KIND.items():
                        mlflow.set_experiment_tag(self._experiment_id, key, value)
                else:
                    self._experiment_id = str(
                        mlflow.create_experiment(
                            self.experiment_name,
                            artifact_location=self.artifact_location,
                            tags={JOB_TAG: self.job_id, **EXPERIMENT_KIND},
                        )
                    )
                self.client.hset(self.info_key, mapping={"experiment_id": self._experiment_id,
                                                         "model_name": self.model_name})  # fmt: skip
        return self._experiment_id

    def _apply_one(self, op: dict[str, Any]) -> None:
        kind = op["kind"]
        if kind == "open":
            self._open(op)
            return
        run_id = self._find_or_create_run(int(op["gen"]), None)
        mlflow = self._client()
        if kind == "artifacts":
            path = Path(op["path"])
            if not path.exists():
                logger.error("artifact %s of job %s is gone; not logged", path, self.job_id)
                self.client.hincrby(self.info_key, "dropped", 1)
            elif path.is_dir():
                self._guard(lambda: mlflow.log_artifacts(run_id, str(path), op["dest"]), op)
            else:
                self._guard(lambda: mlflow.log_artifact(run_id, str(path), op["dest"]), op)
        elif kind == "register":
            self._register(op, run_id)
        elif kind == "release":
            self._release(op, run_id)
        elif kind == "story":
            self._story(op, run_id)
        elif kind == "finish_job":
            job_run = self._job_run(None)
            self._guard(lambda: mlflow.set_terminated(job_run, "FINISHED", end_time=op["time"]), op)
        elif kind == "tags":
            from mlflow.entities import RunTag

            tags = [RunTag(k, v[:5000]) for k, v in op["tags"].items()]
            self._guard(lambda: mlflow.log_batch(run_id, tags=tags), op)
        elif kind == "close":
            end = op.get("time") or _now_ms()
            self._guard(lambda: mlflow.set_terminated(run_id, op["status"], end_time=end), op)
        else:
            logger.error("unknown tracking operation %r dropped", kind)

    def _open(self, op: dict[str, Any]) -> None:
        """The generation's run, found or created, with its tags, lineage and params."""
        from mlflow.entities import Param, RunTag

        generation = int(op["gen"])
        run_id = self._find_or_create_run(generation, op.get("time"))
        tags = {GENERATION_TAG: str(generation), JOB_TAG: self.job_id, **op["tags"]}
        if op["parent"] is None:  # the first generation hangs under the job's run
            tags[PARENT_TAG] = self._job_run(op.get("time"))
        else:
            parent_run = self.client.hget(self.runs_key, str(op["parent"]))
            if parent_run is not None:
                tags[PARENT_TAG] = text(parent_run)
                tags["lifelong.parent_generation"] = str(op["parent"])
        params = [Param(k, str(v)[:6000]) for k, v in op["params"].items()]
        run_tags = [RunTag(k, str(v)) for k, v in tags.items()]
        self._guard(lambda: self._client().log_batch(run_id, params=params, tags=run_tags), op)

    def _job_run(self, start_ms: int | None) -> str:
        """The job's parent run (found by its tag, or created): the root of the lineage tree,
        where the newest story plot is."""
        cached = self.client.hget(self.info_key, "job_run_id")
        if cached is not None:
            return text(cached)
        mlflow = self._client()
        experiment_id = self._experiment()
        existing = mlflow.search_runs(
            [experiment_id], filter_string=f"tags.`{JOB_RUN_TAG}` = 'true'", max_results=1
        )
        if existing:
            run_id = str(existing[0].info.run_id)
        else:
            run = mlflow.create_run(
                experiment_id, start_time=start_ms or _now_ms(), run_name="job",
                tags={JOB_RUN_TAG: "true", JOB_TAG: self.job_id},
            )  # fmt: skip
            run_id = str(run.info.run_id)
        self.client.hset(self.info_key, "job_run_id", run_id)
        return run_id

    def _story(self, op: dict[str, Any], run_id: str) -> None:
        """Draw the story from the generation runs' metric histories and log it."""
        import tempfile

        from service.runtime.story import GenerationSeries, draw_story, join_on_step

        mlflow = self._client()
        series = []
        for generation, gen_run in sorted(self.run_ids().items()):

            def history(key: str, run: str = gen_run) -> dict[int, float]:
                return {int(m.step): float(m.value) for m in mlflow.get_metric_history(run, key)}

            samples = history("samples_seen")
            op_tag = mlflow.get_run(gen_run).data.tags.get("lifelong.op", "")
            series.append(GenerationSeries(
                generation, op_tag, join_on_step(samples, history(f"val_{op['metric']}")),
                join_on_step(samples, history("param_count")),
            ))  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="lifelong-story-") as folder:
            path = draw_story(series, op["metric"], Path(folder) / "story.png")
            job_run = self._job_run(None)
            for target in (run_id, job_run):
                self._guard(partial(mlflow.log_artifact, target, str(path), "plots"), op)

    def _find_or_create_run(self, generation: int, start_ms: int | None) -> str:
        cached = self.client.hget(self.runs_key, str(generation))
        if cached is not None:
            return text(cached)
        mlflow = self._client()
        experiment_id = self._experiment()
        existing = mlflow.search_runs(
            [experiment_id],
            filter_string=f"tags.`{GENERATION_TAG}` = '{generation}'",
            max_results=1,
        )
        if existing:
            run_id = str(existing[0].info.run_id)
        else:
            run = mlflow.create_run(
                experiment_id,
                start_time=start_ms or _now_ms(),
                tags={GENERATION_TAG: str(generation), JOB_TAG: self.job_id},
                run_name=f"generation-{generation}",
            )
            run_id = str(run.info.run_id)
        self.client.hset(self.runs_key, str(generation), run_id)
        return run_id

    def _apply_metrics(self, ops: list[dict[str, Any]]) -> int:
        """Log the leading run of metric ops of one generation in one batch; return its length."""
        from mlflow.entities import Metric

        generation = ops[0]["gen"]
        metrics: list[Any] = []
        n = 0
        for op in ops:
            if op["kind"] != "metrics" or op["gen"] != generation:
                break
            if len(metrics) + len(op["values"]) > 1000:  # MLflow's log_batch limit
                break
            metrics += [Metric(k, v, op["time"], op["step"]) for k, v in op["values"].items()]
            n += 1
        run_id = self._find_or_create_run(int(generation), None)
        self._guard(lambda: self._client().log_batch(run_id, metrics=metrics), ops[0])
        return max(n, 1)

    def _register(self, op: dict[str, Any], run_id: str) -> None:
        from mlflow.exceptions import MlflowException

        mlflow = self._client()
        generation = int(op["gen"])
        try:
            mlflow.create_registered_model(self.model_name, tags={JOB_TAG: self.job_id})
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        versions = mlflow.search_model_versions(
            f"name = '{self.model_name}' and run_id = '{run_id}'"
        )
        if versions:
            version = str(versions[0].version)
        else:
            mv = mlflow.create_model_version(
                self.model_name,
                source=f"runs:/{run_id}/{op['dest']}",
                run_id=run_id,
                tags={GENERATION_TAG: str(generation)},
            )
            version = str(mv.version)
        self.client.hset(self.versions_key, str(generation), version)
        # MLflow 3 reserves the alias ``latest`` and resolves it to the highest version itself;
        # versions are created in generation order (one consumer, FIFO), so ``@latest`` is
        # always the newest generation. Each version also gets its generation as an alias.
        mlflow.set_registered_model_alias(self.model_name, f"generation-{generation}", version)
        self.client.hset(self.info_key, "latest_generation", str(generation))

    def _release(self, op: dict[str, Any], run_id: str) -> None:
        """Build the release's pyfunc model, log it, register it, point its aliases."""
        import tempfile

        from mlflow.exceptions import MlflowException

        from service.runtime.releases import Release, build_pyfunc
        from workers.shards import is_remote

        release = Release(**op["release"])
        mlflow = self._client()
        if not is_remote(release.path) and not Path(release.path).exists():
            logger.error("release %s of job %s is gone; not registered", release.number,
                         self.job_id)  # fmt: skip
            self.client.hincrby(self.info_key, "dropped", 1)
            return
        with tempfile.TemporaryDirectory(prefix="lifelong-release-") as folder:
            try:
                model_dir = build_pyfunc(release.path, Path(folder) / "model")
            except Exception:
                # Retried (the outbox backs off) while it may pass, e.g. a torch.fx trace of this
                # process at a growth; an architecture the exporter cannot take never will.
                tries = int(self.client.hincrby(self.info_key, f"build:{release.number}", 1))
                if tries < BUILD_TRIES:
                    raise
                logger.exception("release %s of job %s cannot be built as an MLflow model "
                                 "(%d tries); not registered", release.number, self.job_id,
                                 tries)  # fmt: skip
                self.client.hincrby(self.info_key, "dropped", 1)
                return
            self._guard(lambda: mlflow.log_artifacts(run_id, str(model_dir), release.dest), op)
        try:
            mlflow.create_registered_model(self.model_name, tags={JOB_TAG: self.job_id})
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        found = [
            v for v in mlflow.search_model_versions(
                f"name = '{self.model_name}' and run_id = '{run_id}'")
            if str(v.source).rstrip("/").endswith(f"/{release.dest}")
        ]  # fmt: skip
        key = self.keys.releases(self.job_id)
        parent = self.client.hget(key, str(release.number - 1))
        if parent is not None:  # the parent's actual version (numbers match in a fresh registry)
            release.parent_version = _int_or_none(json.loads(text(parent)).get("version"))
        if found:
            version = str(found[0].version)
        else:
            version = str(
                mlflow.create_model_version(
                    self.model_name, source=f"runs:/{run_id}/{release.dest}", run_id=run_id,
                    tags=release.tags(),
                ).version
            )  # fmt: skip
        for alias in release.aliases:
            mlflow.set_registered_model_alias(self.model_name, alias, version)
        release.version = version
        self.client.hset(key, str(release.number), release.to_json())
        self.client.hset(self.versions_key, str(release.generation), version)
        self.client.hset(self.info_key, "latest_generation", str(release.generation))


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, int | str) and str(value).isdigit() else None


def _now_ms() -> int:
    return int(time.time() * 1000)
