"""Ollama's POST /api/embed and POST /api/embeddings over the pooling core (serve/api/pooling.py), with
Ollama's error shape. An empty input loads the model (keep_alive applies) and answers no vectors, as Ollama."""
from __future__ import annotations

import time
import uuid
from typing import Any, Callable

from fastapi import APIRouter, Request as HTTPRequest
from fastapi.responses import JSONResponse, Response

from serve.api import pooling
from serve.api.engine_client import EngineClient, PoolClient
from serve.api.errors import Handler, parse_json_object, validate
from serve.api.generation import Timings, resolve_engine
from serve.api.openapi import GENERATES, documented
from serve.api.ollama.answers import OllamaError
from serve.api.ollama.embed_protocol import (EmbeddingFields, EmbeddingsRequest, EmbeddingsResponse, EmbedRequest,
                                             EmbedResponse)
from serve.api.ollama.protocol import normalize_model_name
from serve.api.tasks import EMBEDDINGS
from serve.errors import InvalidRequestError


def _check(body: EmbeddingFields) -> int | None:
    """Unknown fields and options: a 400 naming them. Returns num_ctx, the only option an embedding reads."""
    if body.unknown_fields:
        raise InvalidRequestError(f"unrecognized request field(s): {', '.join(body.unknown_fields)}; not part of "
                                  "Ollama's API or not implemented by this server, so remove them",
                                  param=body.unknown_fields[0])
    options = body.options
    if options is not None and options.model_extra:
        raise InvalidRequestError(f"unknown option(s): {', '.join(sorted(options.model_extra))}; not an Ollama "
                                  "option this server implements, so remove them", param="options")
    return options.num_ctx if options is not None else None


def _nanoseconds(seconds: float) -> int:
    return max(0, int(seconds * 1e9))


async def _embedding_request(http_request: HTTPRequest, pool: PoolClient, request_class: type[EmbeddingFields],
                             timings: Timings) -> tuple[Any, int | None, EngineClient]:
    """The validated body, its num_ctx and the engine of its model (which must embed)."""
    body = validate(request_class, parse_json_object(await http_request.body()))
    num_ctx = _check(body)
    engine = await resolve_engine(pool, normalize_model_name(body.model), timings, keep_alive=body.keep_alive,
                                  task=EMBEDDINGS)
    return body, num_ctx, engine


def add_embed_routes(router: APIRouter, pool: PoolClient, ollama_errors: Callable[[Handler], Handler]) -> None:
    """The two routes; `ollama_errors` answers their failures in Ollama's error shape (routes.py)."""

    @router.post("/api/embed", summary="Embeddings of one or more inputs (L2-normalised); none: load the model")
    @documented(EmbedRequest, EmbedResponse, errors=GENERATES, error_shape=OllamaError)
    @ollama_errors
    async def embed(http_request: HTTPRequest) -> Response:
        timings = Timings(started=time.perf_counter())
        body, num_ctx, engine = await _embedding_request(http_request, pool, EmbedRequest, timings)
        dimensions = body.dimensions or None
        pooling.check_dimensions(engine, dimensions)
        if not body.inputs:
            return JSONResponse({"model": body.model, "embeddings": []})
        inputs = pooling.embedding_inputs(engine, body.inputs, truncate=body.truncate is not False, num_ctx=num_ctx)
        vectors = await pooling.embed(engine, f"ollama-embed-{uuid.uuid4().hex}", inputs, dimensions=dimensions)
        return JSONResponse({"model": body.model, "embeddings": [pooling.float_list(v) for v in vectors],
                             "total_duration": _nanoseconds(time.perf_counter() - timings.started),
                             "load_duration": _nanoseconds(timings.loaded - timings.load_started),
                             "prompt_eval_count": inputs.num_tokens})

    @router.post("/api/embeddings", summary="The embedding of one prompt (Ollama's older route; not normalised)")
    @documented(EmbeddingsRequest, EmbeddingsResponse, errors=GENERATES, error_shape=OllamaError)
    @ollama_errors
    async def embeddings(http_request: HTTPRequest) -> Response:
        body, num_ctx, engine = await _embedding_request(http_request, pool, EmbeddingsRequest,
                                                         Timings(started=time.perf_counter()))
        if not body.prompt:
            return JSONResponse({"embedding": []})
        # Ollama's older endpoint refuses an input longer than the context (it has no truncate field).
        inputs = pooling.embedding_inputs(engine, [body.prompt], param="prompt", num_ctx=num_ctx)
        vectors = await pooling.embed(engine, f"ollama-embed-{uuid.uuid4().hex}", inputs, normalize=False)
        return JSONResponse({"embedding": pooling.float_list(vectors[0])})
