"""GET /health: liveness and load, for every dialect's users and for Docker's HEALTHCHECK (no API key).
While the server drains before exiting it answers 503 "stopping", so a load balancer sends no more."""
from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from serve.api.engine_client import PoolClient
from serve.api.openapi import documented


class ModelStats(BaseModel):
    running: int
    waiting: int
    num_parallel: int
    context_length: int
    kv_cache_usage: float


class Health(BaseModel):
    status: Literal["ok", "stopping"]
    models: list[str]
    stats: dict[str, ModelStats]  # per loaded model


def build_router(pool: PoolClient) -> APIRouter:
    router = APIRouter()

    @router.get("/health", summary="Liveness and load (no API key)")
    @documented(answer=Health, other={503: (Health, "The server is shutting down: send no more requests")})
    async def health() -> JSONResponse:
        body: dict[str, Any] = {"status": "stopping" if pool.is_stopping else "ok",
                                "models": [info.name for info in pool.model_infos()], "stats": pool.stats()}
        return JSONResponse(body, status_code=503 if pool.is_stopping else 200)

    return router
