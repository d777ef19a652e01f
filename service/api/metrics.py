"""Prometheus metrics of one app (its own registry, so that several apps can live in one process)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.jobs.control import IngestStats

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "lifelong_http_requests",
            "HTTP requests answered, by method, route template and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "lifelong_http_request_duration_seconds",
            "Time from request to the end of the answer, by method and route template.",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.samples = Counter(
            "lifelong_ingest_samples",
            "Samples accepted by pushes, by split.",
            ["split"],
            registry=self.registry,
        )
        self.ingest_bytes = Counter(
            "lifelong_ingest_body_bytes",
            "Body bytes of accepted pushes, by format.",
            ["format"],
            registry=self.registry,
        )
        self.pushes = Counter(
            "lifelong_ingest_pushes",
            "Accepted pushes, by format.",
            ["format"],
            registry=self.registry,
        )
        self.event_streams = Gauge(
            "lifelong_event_streams_open",
            "Server-Sent Event streams open now.",
            registry=self.registry,
        )

    def ingested(self, stats: IngestStats) -> None:
        self.samples.labels("train").inc(stats.samples_train)
        self.samples.labels("val").inc(stats.samples_val)
        self.ingest_bytes.labels(stats.format).inc(stats.body_bytes)
        self.pushes.labels(stats.format).inc()


def route_template(app: Any, scope: Scope) -> str:
    """The matched route's path template (``/v1/jobs/{job_id}``), never the raw path."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    # No route in the scope: the answer came before routing (the body limit's 413). Match the
    # routes here, those of included routers too, and only those with a path template.
    for candidate in _routes(getattr(getattr(app, "router", None), "routes", [])):
        template = getattr(candidate, "path", None)
        if isinstance(template, str) and candidate.matches(scope)[0] == Match.FULL:
            return template
    return "unmatched"


def _routes(routes: Any) -> Iterator[Any]:
    for route in routes:
        included = getattr(route, "original_router", None)  # FastAPI's included routers
        if included is not None:
            yield from _routes(getattr(included, "routes", []))
        else:
            yield route


class MetricsMiddleware:
    """Counts requests and measures latency by route template (bounded label values)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, root: Any) -> None:
        self.app = app
        self.metrics = metrics
        self.root = root

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = route_template(self.root, scope)
            method = scope["method"]
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - started)
