"""GET /metrics in Prometheus' text format, and the API's own count: error answers by model, status, type, code.

The runtime's collectors (serve/runtime/metrics.py: latencies, tokens, loads) and the gauges read from the
pool at scrape time (requests running and waiting, KV cache use) are exposed together. Errors are counted
where they are mapped to answers (serve/api/errors.py, the guards, a stream's error event), once each.
The route sits behind the API key, or behind --metrics-key when one is set (serve/api/guards.py).
"""
from __future__ import annotations

from contextvars import ContextVar

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest

from serve.api.engine_client import PoolClient
from serve.api.openapi import documented
from serve.runtime.metrics import PREFIX, REGISTRY, PoolGauges

METRICS_PATH = "/metrics"
UNRESOLVED_MODEL = "none"  # the `model` label of errors answered before a loaded model was known

ERRORS = Counter(f"{PREFIX}_errors", "Error answers (before a stream began, or as its error event), by model "
                 f"({UNRESOLVED_MODEL!r} before the request's model was resolved to a loaded one), HTTP status, "
                 "error type and code; 429s are code queue_full, 503s while draining shutting_down",
                 ["model", "status", "type", "code"], registry=REGISTRY)
# The model a request's errors are counted under: set once the pool handed its engine over. Until then a
# name from the request (any string a client sends) would let clients grow the label set without bound.
_request_model: ContextVar[str] = ContextVar("quantserve_request_model", default=UNRESOLVED_MODEL)


def count_request_model(name: str) -> None:
    """From here on, this request's errors (its task's, and its stream's) are counted under `name`."""
    _request_model.set(name)


def count_error(status: int, error_type: str, code: str | None) -> None:
    ERRORS.labels(_request_model.get(), str(status), error_type, code or "").inc()


def build_router(pool: PoolClient) -> APIRouter:
    router = APIRouter()
    registry = CollectorRegistry(auto_describe=False)  # this app's view: the process's collectors + its pool
    registry.register(REGISTRY)
    registry.register(PoolGauges(pool.stats))

    @router.get(METRICS_PATH, response_class=Response, summary="Prometheus metrics")
    @documented(media={"text/plain": "Prometheus' text exposition format, version 0.0.4"})
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router
