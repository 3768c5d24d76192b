"""GET /health: liveness and load, for every dialect's users and for Docker's HEALTHCHECK (no API key).
While the server drains before exiting it answers 503 "stopping", so a load balancer sends no more."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from serve.api.engine_client import PoolClient


def build_router(pool: PoolClient) -> APIRouter:
    router = APIRouter()

    @router.get("/health")
    async def health() -> JSONResponse:
        body: dict[str, Any] = {"status": "stopping" if pool.is_stopping else "ok",
                                "models": [info.name for info in pool.model_infos()], "stats": pool.stats()}
        return JSONResponse(body, status_code=503 if pool.is_stopping else 200)

    return router
