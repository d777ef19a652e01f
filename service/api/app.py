"""The ASGI app: ``create_app(settings)`` for embedders and tests, ``service.api.app:app`` for servers.

``service.api.app:app`` is built on first access from the environment (``Settings()``), so importing
this module reads nothing and connects to nothing. Redis is connected (or the embedded one started)
in the app's lifespan, so that a server that cannot reach Redis still starts, answers /healthz, and
says why in /readyz.

The app refuses to be built open: without a configured API key it raises
:class:`InsecureStartError`, unless ``LIFELONG_AUTH=disabled`` says so explicitly, and that only with
a loopback ``LIFELONG_HOST`` (its requests are then served to loopback clients only).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import redis
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from service import __version__
from service.api.audit import AuditMiddleware
from service.api.deps import no_unknown_query
from service.api.limits import BodyLimitMiddleware
from service.api.metrics import Metrics, MetricsMiddleware, _routes
from service.api.models import ErrorBody, JobCreate
from service.api.routes import commands, data, events, generate, generations, health, jobs, keys
from service.jobs.access import Access
from service.jobs.control import ControlPlane, translate
from service.jobs.errors import ServiceError
from service.jobs.spec import SpecProblem
from service.local.embedded import EmbeddedRedis
from service.runtime.actor import SupervisorConfig
from service.runtime.launcher import SupervisorLauncher
from service.runtime.sweeper import OutboxSweeper
from service.settings import Settings, is_loopback
from service.state.access import AccessStore
from service.state.store import RedisStore, StoreError
from workers.shards import ShardStore

log = logging.getLogger("lifelong.service")

DESCRIPTION = """\
Lifelong trains one model on data that keeps arriving, and grows it with Net2Net when the data
outgrows it. Create a job, push batches to it at any time, ask it to grow, pause, resume or stop,
and follow its events. Every error answer is JSON: `{"detail": "...", "errors": [...]}`.
"""


class InsecureStartError(RuntimeError):
    """The settings would serve the API open to anyone."""


def check_access(settings: Settings) -> None:
    """Refuse settings that would serve an open API (see the module's docstring)."""
    if not settings.auth_enabled:
        if not is_loopback(settings.host):
            raise InsecureStartError(
                f"LIFELONG_AUTH=disabled is accepted on loopback only, and LIFELONG_HOST is "
                f"{settings.host}; configure API keys, or bind 127.0.0.1"
            )
        log.warning("authentication is disabled (LIFELONG_AUTH=disabled): loopback clients only")
        return
    if not settings.api_key_hashes:
        raise InsecureStartError(
            "no API key is configured, and the API does not start open. Run 'lifelong serve' "
            f"(it makes an admin key in {settings.admin_key_path}), or set "
            "LIFELONG_API_KEYS_FILE (lines of 'role:key') or LIFELONG_ADMIN_KEY_FILE, or set "
            "LIFELONG_AUTH=disabled to serve loopback clients without keys"
        )


def create_app(settings: Settings | None = None) -> FastAPI:
    """An app for ``settings`` (default: from the environment); raises
    :class:`InsecureStartError` for settings that would serve an open API."""
    settings = settings or Settings()
    check_access(settings)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        parts = await _start(settings, metrics)
        app.state.plane = parts.plane
        app.state.access = Access(settings, AccessStore(parts.store))
        app.state.launcher = parts.launcher
        app.state.sweeper = parts.sweeper
        try:
            yield
        finally:
            await parts.stop()

    app = FastAPI(
        title="Lifelong",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        responses={500: {"model": ErrorBody, "description": "A server fault (see the log)."}},
        dependencies=[Depends(no_unknown_query)],
    )
    app.state.settings = settings
    app.state.metrics = metrics
    routers = (jobs, data, commands, events, generations, generate, keys, health)
    for router in (module.router for module in routers):
        app.include_router(router)
    _install_error_handlers(app)
    app.add_middleware(
        BodyLimitMiddleware,
        max_push_bytes=settings.max_push_bytes,
        max_request_bytes=settings.max_request_bytes,
    )
    app.add_middleware(AuditMiddleware, root=app)
    app.add_middleware(MetricsMiddleware, metrics=metrics, root=app)
    app.openapi = _openapi_with(app)  # type: ignore[method-assign]
    return app


@dataclass
class _Parts:
    """What the app starts with and stops at the end of its life span."""

    store: RedisStore
    plane: ControlPlane
    embedded: EmbeddedRedis | None
    launcher: SupervisorLauncher | None
    sweeper: OutboxSweeper | None

    async def stop(self) -> None:
        if self.launcher is not None:
            self.launcher.stop()  # supervisors are detached: they go on without the API
        if self.sweeper is not None:
            await run_in_threadpool(self.sweeper.stop)
        self.store.close()
        await self.store.aclose()
        if self.embedded is not None:
            await run_in_threadpool(self.embedded.stop)


async def _start(settings: Settings, metrics: Metrics) -> _Parts:
    """Redis (the embedded one when no URL is given), the control plane, and, when the app
    supervises jobs, the supervisor launcher and the MLflow outbox sweeper."""
    embedded: EmbeddedRedis | None = None
    url = settings.redis_url
    if url is None:
        embedded = EmbeddedRedis(
            settings.embedded_redis_dir, appendfsync=settings.embedded_redis_fsync
        )
        url = await run_in_threadpool(embedded.start)
    store = RedisStore(
        url,
        settings.key_prefix,
        events_maxlen=settings.events_maxlen,
        commands_maxlen=settings.commands_maxlen,
        idempotency_ttl_s=settings.idempotency_ttl_s,
    )
    try:
        await store.aping()
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        log.warning("Redis does not answer yet (%s); /readyz says 503 until it does", exc)
    # Job creation builds the base model on torch's meta device: import torch now, not in the
    # first request.
    await run_in_threadpool(_warm_up)
    plane = ControlPlane(
        settings, store, ShardStore(settings.data_root_uri), on_ingest=metrics.ingested
    )
    try:
        finished = await run_in_threadpool(plane.finish_deletions)
        if finished:
            log.info("finished deleting jobs %s", ", ".join(finished))
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        log.warning("could not finish earlier job deletions yet: %s", exc)
    parts = _Parts(store, plane, embedded, None, None)
    if settings.supervise:
        launcher = parts.launcher = _launcher(settings, store, url)
        plane.on_job_created = lambda job: launcher.ensure(job.id)
        plane.readiness_checks["ray"] = launcher.readiness
        launcher.start()
        parts.sweeper = OutboxSweeper(
            store, settings.mlflow_uri, interval=settings.reconcile_interval_s
        )
        parts.sweeper.start()
    return parts


def _launcher(settings: Settings, store: RedisStore, redis_url: str) -> SupervisorLauncher:
    def config_for(job_id: str) -> SupervisorConfig:
        return SupervisorConfig(
            job_id=job_id,
            redis_url=redis_url,
            key_prefix=settings.key_prefix,
            data_root=settings.data_root_uri,
            ray_storage=settings.ray_storage_uri,
            mlflow_uri=settings.mlflow_uri,
            events_maxlen=settings.events_maxlen,
            commands_maxlen=settings.commands_maxlen,
            observe_every=settings.observe_every,
            checkpoint_every=settings.checkpoint_every,
            max_restarts=settings.max_restarts,
        )

    return SupervisorLauncher(
        store,
        config_for,
        ray_address=settings.ray_address,
        interval=settings.reconcile_interval_s,
    )


def _warm_up() -> None:
    import workers.models  # noqa: F401


def _error(
    status: int, detail: str, errors: list[SpecProblem] | None = None, **kw: Any
) -> JSONResponse:
    body = ErrorBody(detail=detail, errors=errors).model_dump(exclude_none=True)
    return JSONResponse(body, status_code=status, **kw)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return _error(exc.status_code, exc.detail, exc.errors, headers=exc.headers)

    @app.exception_handler(StoreError)
    async def store_error(request: Request, exc: StoreError) -> JSONResponse:
        error = translate(exc)
        return _error(error.status_code, error.detail)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            SpecProblem(
                loc=".".join(str(p) for p in e.get("loc", ())),
                msg=str(e.get("msg", "invalid")).removeprefix("Value error, "),
            )
            for e in exc.errors()
        ]
        if any(e.get("type") == "json_invalid" for e in exc.errors()):
            return _error(400, "the body is not valid JSON", problems)
        summary = "; ".join(f"{p.loc}: {p.msg}" for p in problems)
        return _error(422, f"invalid request: {summary}", problems)

    @app.exception_handler(redis.ConnectionError)
    @app.exception_handler(redis.TimeoutError)
    async def redis_down(request: Request, exc: Exception) -> JSONResponse:
        log.error("Redis unreachable during %s %s: %s", request.method, request.url.path, exc)
        return _error(503, "the state store (Redis) is unreachable; retry shortly",
                      headers={"Retry-After": "2"})  # fmt: skip

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        return _error(500, "internal error; the server log has the details")


def _openapi_with(app: FastAPI) -> Any:
    """The OpenAPI schema, with JobCreate in the components (the route reads the raw body so
    that every spec problem is reported at once, so FastAPI does not add it by itself)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            job_create = JobCreate.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(job_create.pop("$defs", {}))
            components["JobCreate"] = job_create
            _uniform_errors(schema)
            _state_roles(app, schema)
            _no_null_parameters(schema)
            _event_streams(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    return openapi


_ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
_COMMON_ERRORS = {
    "401": "No API key, or one that is not valid (or was revoked).",
    "403": "The API key's role is too low for this route (or, with LIFELONG_AUTH=disabled, "
    "the client is not on loopback).",
    "429": "The API key is above its requests per second or bytes per minute; retry after "
    "the Retry-After seconds.",
    "503": "The state store (Redis) is unreachable; retry shortly.",
}
_IDEMPOTENCY_ERROR = "The Idempotency-Key is not 1 to 255 printable ASCII characters."
_BODY_ERRORS = {
    "400": "The body is not readable (malformed JSON).",
    "413": "The body is above LIFELONG_MAX_REQUEST_BYTES (LIFELONG_MAX_PUSH_BYTES for a push).",
}
_QUERY_ERROR = "A query parameter that the route does not take."


def _uniform_errors(schema: dict[str, Any]) -> None:
    """Every error answer is an ``ErrorBody`` in JSON, and every route documents the errors
    that any request to it may get: FastAPI's own 422 model (a list of details) and the media
    type of a streaming or binary route are not what an error answer carries."""
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            if path.startswith("/v1/"):
                for code, text in _COMMON_ERRORS.items():
                    responses.setdefault(code, {"description": text})
            if "requestBody" in operation:
                for code, text in _BODY_ERRORS.items():
                    responses.setdefault(code, {"description": text})
            responses.setdefault("400", {"description": _QUERY_ERROR})
            names = {p.get("name") for p in operation.get("parameters", [])}
            if "Idempotency-Key" in names:
                responses.setdefault("400", {"description": _IDEMPOTENCY_ERROR})
            for code, response in responses.items():
                if code[0] in "45":
                    response["content"] = {"application/json": {"schema": dict(_ERROR_REF)}}
    components = schema.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)


def _no_null_parameters(schema: dict[str, Any]) -> None:
    """An optional query or header parameter is absent or a string: it never carries a JSON
    null, so its schema is the non-null one (FastAPI writes ``anyOf [X, null]`` for ``X | None``)."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                options = parameter.get("schema", {}).get("anyOf")
                if not options:
                    continue
                kept = [o for o in options if o.get("type") != "null"]
                if len(kept) == 1 and len(kept) < len(options):
                    extra = {k: v for k, v in parameter["schema"].items() if k != "anyOf"}
                    parameter["schema"] = {**kept[0], **extra}


def _event_streams(schema: dict[str, Any]) -> None:
    """A text/event-stream answer is a stream of events, each of whose ``data`` is an event in
    JSON: the model is the schema of each item's data, not of the whole stream."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            ok = operation.get("responses", {}).get("200", {})
            stream = ok.get("content", {}).get("text/event-stream")
            if not stream or "schema" not in stream:
                continue
            model = stream.pop("schema")
            item = stream.setdefault("itemSchema", {"type": "object", "properties": {}})
            item["properties"]["data"] = {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": model,
            }


def _required_role(dependant: Any) -> str | None:
    """The role of the ``require_<role>`` dependency among ``dependant``'s, if any."""
    for sub in getattr(dependant, "dependencies", []):
        name = getattr(sub.call, "__name__", "")
        if name.startswith("require_"):
            return str(name.removeprefix("require_"))
        found = _required_role(sub)
        if found is not None:
            return found
    return None


def _state_roles(app: FastAPI, schema: dict[str, Any]) -> None:
    """Each operation that needs a key says which role (``x-required-role``, and in words)."""
    for route in _routes(app.router.routes):
        role = _required_role(getattr(route, "dependant", None))
        operations = schema.get("paths", {}).get(getattr(route, "path", ""), {})
        for method in getattr(route, "methods", ()):
            operation = operations.get(method.lower())
            if role is None or operation is None:
                continue
            operation["x-required-role"] = role
            text = f"Needs an API key with the role '{role}' (or above) whose scope holds the job."
            operation["description"] = f"{operation.get('description', '')}\n\n{text}".strip()


@functools.cache
def _app_from_environment() -> FastAPI:
    return create_app()


def __getattr__(name: str) -> Any:
    # ``service.api.app:app``: built from the environment on first access.
    if name == "app":
        return _app_from_environment()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
