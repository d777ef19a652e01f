"""The Redis key layout, in one place.

Every key starts with the deployment's prefix (``Settings.key_prefix``, default ``lifelong:``). A
job's keys carry its id in braces (a Redis Cluster hash tag), so every script that touches one job
touches one slot::

    <p>jobs                          ZSET   job id -> creation time (listing order, job count)
    <p>job:{<id>}                    HASH   id, name, spec (JSON), status, reason, generation,
                                            param_count, metrics (JSON), created, updated
    <p>job:{<id>}:manifest           HASH   version, train_samples, val_samples, shards, bytes,
                                            log_id (last entry of :manifest:log), updated
    <p>job:{<id>}:shards             LIST   ShardInfo JSON, in append order (with its version)
    <p>job:{<id>}:manifest:log       STREAM one entry per manifest append (version); what
                                            RedisManifest.wait_newer blocks on (XREAD BLOCK)
    <p>job:{<id>}:idem:<sha256(key)> HASH   a push's fingerprint and original answer (with TTL)
    <p>job:{<id>}:commands           STREAM commands (command_id, kind, args); group 'supervisor'
    <p>job:{<id>}:command:<cid>      HASH   one command: kind, args, status, detail, result, times
    <p>job:{<id>}:events             STREAM events (type, time, data JSON), trimmed MAXLEN ~
    <p>job:{<id>}:lease              STRING the supervisor's lease (owner token, PX expiry)
    <p>job:{<id>}:generations        HASH   generation -> GenerationRecord JSON
                                            (``service.runtime.generations``)
    <p>job:{<id>}:tracked            SET    '<generation>:<what>': checkpoints sent to MLflow
    <p>job:{<id>}:releases           HASH   release number -> Release JSON; 'count', 'champion',
                                            'last', 'best:<generation>' (``runtime.releases``)
    <p>job:{<id>}:releases:validated LIST   the newest observations' [generation, step, metric,
                                            samples seen], for the checkpoints at their steps
    <p>job:{<id>}:mlflow             HASH   experiment id, model name, counters, last error
    <p>job:{<id>}:mlflow:runs        HASH   generation -> MLflow run id
    <p>job:{<id>}:mlflow:versions    HASH   generation -> its newest registered model version
    <p>job:{<id>}:mlflow:outbox      LIST   MLflow operations not yet sent
                                            (``service.runtime.tracking``)
    <p>deleting                      SET    ids of deleted jobs whose keys and files are being
                                            removed (finished again at start-up after a crash)

Access (``service.state.access``)::

    <p>apikeys                       HASH   sha256(key) -> the key's record JSON (id, role, scope,
                                            limits); the key itself is never stored
    <p>apikey-ids                    HASH   key id -> sha256(key)
    <p>apikey:<kid>:jobs             SET    the job ids of a key scoped to a set of jobs
    <p>tenants                       HASH   job id -> the tenant it was created in
    <p>request:<sha256>              STRING the answer of a create, command or delete request
                                            made with an Idempotency-Key (with TTL)
    <p>rate:<kid>:<s|m>:<window>     STRING requests in this second, bytes in this minute (TTL)

Deleting a job removes every key under ``<p>job:{<id>}`` (see ``RedisStore.delete_job``).

Nothing here imports Redis: this module is loaded by worker processes too (via ``RedisManifest``).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

COMMAND_GROUP = "supervisor"


@dataclass(frozen=True)
class Keys:
    prefix: str

    def jobs(self) -> str:
        return f"{self.prefix}jobs"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}job:{{{job_id}}}"

    def manifest(self, job_id: str) -> str:
        return f"{self.job(job_id)}:manifest"

    def shards(self, job_id: str) -> str:
        return f"{self.job(job_id)}:shards"

    def manifest_log(self, job_id: str) -> str:
        return f"{self.job(job_id)}:manifest:log"

    def idempotency(self, job_id: str, key: str) -> str:
        # Hashed: the client's key may hold any printable character and up to 255 of them.
        return f"{self.job(job_id)}:idem:{hashlib.sha256(key.encode()).hexdigest()[:40]}"

    def commands(self, job_id: str) -> str:
        return f"{self.job(job_id)}:commands"

    def command(self, job_id: str, command_id: str) -> str:
        return f"{self.job(job_id)}:command:{command_id}"

    def events(self, job_id: str) -> str:
        return f"{self.job(job_id)}:events"

    def lease(self, job_id: str) -> str:
        return f"{self.job(job_id)}:lease"

    def generations(self, job_id: str) -> str:
        return f"{self.job(job_id)}:generations"

    def tracked(self, job_id: str) -> str:
        return f"{self.job(job_id)}:tracked"

    def releases(self, job_id: str) -> str:
        return f"{self.job(job_id)}:releases"

    def mlflow(self, job_id: str) -> str:
        return f"{self.job(job_id)}:mlflow"

    def mlflow_runs(self, job_id: str) -> str:
        return f"{self.job(job_id)}:mlflow:runs"

    def mlflow_versions(self, job_id: str) -> str:
        return f"{self.job(job_id)}:mlflow:versions"

    def mlflow_outbox(self, job_id: str) -> str:
        return f"{self.job(job_id)}:mlflow:outbox"

    def job_pattern(self, job_id: str) -> str:
        """A SCAN pattern that matches every key of the job but its hash (glob-escaped)."""
        return re.sub(r"([*?\[\]\\])", r"\\\1", self.job(job_id)) + ":*"

    def deleting(self) -> str:
        return f"{self.prefix}deleting"

    # --- access ------------------------------------------------------------------------------

    def api_keys(self) -> str:
        return f"{self.prefix}apikeys"

    def api_key_ids(self) -> str:
        return f"{self.prefix}apikey-ids"

    def api_key_jobs(self, key_id: str) -> str:
        return f"{self.prefix}apikey:{key_id}:jobs"

    def tenants(self) -> str:
        return f"{self.prefix}tenants"

    def request(self, scope: str, key: str) -> str:
        # Hashed: the client's key may hold any printable character and up to 255 of them.
        digest = hashlib.sha256(f"{scope}\0{key}".encode()).hexdigest()[:40]
        return f"{self.prefix}request:{digest}"

    def rate(self, key_id: str, unit: str, window: int) -> str:
        return f"{self.prefix}rate:{key_id}:{unit}:{window}"
