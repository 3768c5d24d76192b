"""GET /health: liveness and load, for every dialect's users and for Docker's HEALTHCHECK (no API key)."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from serve.api.engine_client import PoolClient


def build_router(pool: PoolClient) -> APIRouter:
    router = APIRouter()

    @router.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": [info.name for info in pool.model_infos()], "stats": pool.stats()}

    return router
