"""The HTTP application: routes, error handlers, API key and body size guards over a model pool."""
from __future__ import annotations

from fastapi import FastAPI

from serve.api.errors import install_error_handlers
from serve.api.guards import APIKeyGuard, BodySizeLimit
from serve.api.ollama.routes import build_router as build_ollama_router
from serve.api.openai.routes import build_router
from serve.config import ServerConfig


def create_app(pool, config: ServerConfig) -> FastAPI:
    """The FastAPI app serving `pool` (a serve.runtime.pool.ModelPool) with `config`'s API key and body limit."""
    app = FastAPI(title="quantserve", summary="OpenAI-compatible server for quantized models",
                  docs_url="/docs", redoc_url=None)
    app.state.pool = pool
    app.state.config = config
    install_error_handlers(app)
    app.include_router(build_router(pool))
    app.include_router(build_ollama_router(pool, config))
    # The last middleware added runs first: the key is checked before any body is read.
    app.add_middleware(BodySizeLimit, max_body_bytes=config.max_body_bytes)
    if config.api_key:
        app.add_middleware(APIKeyGuard, api_key=config.api_key)
    return app
