"""GET /metrics in Prometheus' text format, and the API's own count: error answers by status, type, code.

The runtime's collectors (serve/runtime/metrics.py: latencies, tokens, loads) and the gauges read from the
pool at scrape time (requests running and waiting, KV cache use) are exposed together. Errors are counted
where they are mapped to answers (serve/api/errors.py, the guards, a stream's error event), once each.
The route sits behind the API key, or behind --metrics-key when one is set (serve/api/guards.py).
"""
from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest

from serve.api.engine_client import PoolClient
from serve.api.openapi import documented
from serve.runtime.metrics import PREFIX, REGISTRY, PoolGauges

METRICS_PATH = "/metrics"

ERRORS = Counter(f"{PREFIX}_errors", "Error answers (before a stream began, or as its error event), by HTTP "
                 "status, error type and code; 429s are code queue_full, 503s while draining shutting_down",
                 ["status", "type", "code"], registry=REGISTRY)


def count_error(status: int, error_type: str, code: str | None) -> None:
    ERRORS.labels(str(status), error_type, code or "").inc()


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
