"""Liveness, readiness and Prometheus metrics (no API key needed)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.api.deps import MetricsDep, Plane
from service.api.models import ErrorBody, Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> Health:
    """The process is alive (it checks nothing else)."""
    return Health(status="ok")


@router.get(
    "/readyz",
    responses={
        503: {
            "model": ErrorBody,
            "description": "Not ready, by design, until every dependency answers: Redis, the "
            "data root, and, in an API that supervises jobs, Ray (which takes seconds to "
            "connect after a start). The detail names each check; retry.",
        }
    },
)
async def readyz(plane: Plane) -> Readiness:
    """Ready to serve: Redis answers, the data root is writable and (when the API supervises
    jobs) Ray is connected. A 503 while they come up is expected: poll until 200."""
    return Readiness(status="ready", checks=await plane.readiness())


@router.get("/metrics", response_class=Response)
def metrics(metrics: MetricsDep) -> Response:
    """Prometheus text format: requests and latency by route, samples and bytes ingested."""
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
