"""The HTTP application: every dialect's routes, error handlers, API key and body size guards over a model pool."""
from __future__ import annotations

from fastapi import FastAPI

from serve.api import health, metrics
from serve.api.anthropic import routes as anthropic_routes
from serve.api.engine_client import PoolClient
from serve.api.errors import OpenAIError, install_error_handlers
from serve.api.guards import OPEN_PATHS, APIKeyGuard, BodySizeLimit
from serve.api.ollama import routes as ollama_routes
from serve.api.openai import embeddings as openai_embeddings
from serve.api.openai import routes as openai_routes
from serve.api.rerank import routes as rerank_routes
from serve.api.openapi import install_openapi
from serve.api.responses import routes as responses_routes
from serve.api.responses.store import ResponseStore
from serve.api.web import routes as web_routes
from serve.config import ServerConfig
from serve.models.access import ModelAccess
from serve.models.catalog import Catalog


def create_app(pool: PoolClient, config: ServerConfig, catalog: Catalog) -> FastAPI:
    """The FastAPI app serving `pool` with `config`'s API key and body limit; `catalog` is the one the
    pool's loader resolves names with (Ollama's listings and pulls read it)."""
    app = FastAPI(title="quantserve", summary="OpenAI-compatible server for quantized models",
                  docs_url="/docs", redoc_url=None)
    install_error_handlers(app)
    app.include_router(openai_routes.build_router(pool))
    app.include_router(openai_embeddings.build_router(pool))
    app.include_router(rerank_routes.build_router(pool))
    access = ModelAccess.from_config(config, catalog)  # the loader's policy, for Ollama's pulls
    app.include_router(ollama_routes.build_router(pool, catalog, access, config.plan_choices.backend))
    app.include_router(anthropic_routes.build_router(pool))
    app.include_router(responses_routes.build_router(pool, ResponseStore(config.max_stored_responses)))
    app.include_router(health.build_router(pool))
    app.include_router(metrics.build_router(pool))
    app.include_router(web_routes.build_router())  # `/`: the chat page or "Ollama is running"
    install_openapi(app, error_shape=OpenAIError, open_paths=OPEN_PATHS)  # every route's bodies and answers
    # The last middleware added runs first: the key is checked before any body is read.
    app.add_middleware(BodySizeLimit, max_body_bytes=config.max_body_bytes)
    if config.api_key or config.metrics_key:
        app.add_middleware(APIKeyGuard, api_key=config.api_key, metrics_key=config.metrics_key)
    return app
