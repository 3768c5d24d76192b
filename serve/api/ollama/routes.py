"""Ollama's API on the same port as the OpenAI one: /api/chat, /api/generate, /api/embed, /api/embeddings,
/api/tags, /api/ps, /api/show, /api/pull, /api/version (`GET /`, "Ollama is running" to non-browsers, is in serve/api/web/routes.py).

Generation goes through the core every dialect shares (serve/api/generation.py); only the edges are Ollama's:
the request (serve/api/ollama/request.py: prompt, num_ctx, options) and the replies (serve/api/ollama/ndjson.py),
streamed as NDJSON unless `"stream": false`. Every error
on these routes has Ollama's shape `{"error": "..."}` (the OpenAI routes keep OpenAI's), with the status of
the ServeError behind it. Model names may carry Ollama's `:latest` tag; keep_alive goes to the pool.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any, Callable

from fastapi import APIRouter, Request as HTTPRequest
from fastapi.responses import JSONResponse, Response

from serve.api.engine_client import EngineClient, PoolClient
from serve.api.errors import error_headers, errors_answered_by, parse_json_object, validate
from serve.api.generation import Prompt, Timings, answer, errors_as_events, resolve_engine, submit
from serve.api.ollama import models as ollama_models
from serve.api.ollama.answers import ChatReply, GenerateReply, OllamaError, PullStatus, Ps, ShowReply, Tags, Version
from serve.api.ollama.embed import add_embed_routes
from serve.api.ollama.models import find_model, local_models
from serve.api.ollama.ndjson import CHAT, GENERATE, NDJSONFraming, NDJSONResponse, ReplyShape, error_object
from serve.api.ollama.protocol import ChatRequest, GenerateRequest, ModelRequest, normalize_model_name
from serve.api.ollama.pull import pull_backend, pull_progress
from serve.api.ollama.request import (can_show_thinking, chat_request_prompt, check_fields, generate_request_prompt,
                                      request_params)
from serve.api.openapi import GENERATES, LOADS_MODEL, NDJSON, documented
from serve.api.reasoning import THINK_TAGS, opens_reasoning
from serve.errors import InvalidRequestError, ModelNotFoundError, ServeError
from serve.models.access import ModelAccess
from serve.models.catalog import Catalog

logger = logging.getLogger("serve.api")

# The Ollama API version we answer like (GET /api/version); clients gate features on it.
OLLAMA_API_VERSION = "0.9.0"
NOT_IMPLEMENTED = {"/api/create", "/api/copy", "/api/delete", "/api/push", "/api/blobs"}


# --- errors ---------------------------------------------------------------------------------------------

def ollama_error(exc: ServeError) -> JSONResponse:
    """Ollama's error shape {"error": "..."} with the status of the ServeError behind it."""
    return JSONResponse(error_object(exc), status_code=exc.status_code, headers=error_headers(exc))


ollama_errors = errors_answered_by(ollama_error)


def ollama_documented(*args: Any, **kwargs: Any) -> Callable:
    """`documented` with Ollama's error shape."""
    return documented(*args, error_shape=OllamaError, **kwargs)


# --- the router -----------------------------------------------------------------------------------------

class OllamaAPI:
    """The routes' shared state: the pool, the catalog, what a request may load (pulls are only allowed
    with --allow-pull), and the backend the server was told to use (pulls fetch that backend's files;
    None: the GGUF when there is one)."""

    def __init__(self, pool: PoolClient, catalog: Catalog, access: ModelAccess, backend: str | None):
        self.pool = pool
        self.catalog = catalog
        self.access = access
        self.backend = backend

    async def local_models(self) -> list[ollama_models.LocalModel]:
        return await asyncio.to_thread(local_models, self.pool.model_infos(), self.catalog)

    async def model(self, name: str) -> ollama_models.LocalModel:
        models = await self.local_models()
        found = find_model(models, self.pool.loaded_name(name) or name)
        if found is None:
            raise ModelNotFoundError(f"model {name!r} not found; available models: "
                                     f"{ollama_models.available_names(models)}", param="model")
        return found

    async def load_or_unload(self, name: str, model: str, keep_alive: float | None,
                             shape: ReplyShape, timings: Timings) -> JSONResponse:
        """An empty prompt (or no messages): load the model, or unload it when keep_alive is 0."""
        if keep_alive == 0:
            await self.unload(name)
            return JSONResponse(shape.reply(model, "", done=True, done_reason="unload"))
        await resolve_engine(self.pool, name, timings, keep_alive=keep_alive)
        return JSONResponse(shape.reply(model, "", done=True, done_reason="load"))

    async def unload(self, name: str) -> None:
        if name in {info.name for info in self.pool.model_infos()}:
            await self.pool.unload(name)  # its running requests finish first
            return
        await self.model(name)  # not loaded: fine if it exists here, else the 404 naming what does


def build_router(pool: PoolClient, catalog: Catalog, access: ModelAccess, backend: str | None = None) -> APIRouter:
    """Ollama's routes over the model pool; `backend` is the one the server was told to use, if any."""
    api = OllamaAPI(pool, catalog, access, backend)
    router = APIRouter()
    _add_generation_routes(router, api)
    add_embed_routes(router, pool, ollama_errors)
    _add_model_routes(router, api)
    _add_misc_routes(router)
    return router


def _add_generation_routes(router: APIRouter, api: OllamaAPI) -> None:
    @router.post("/api/chat", summary="A chat answer, streamed (NDJSON) unless \"stream\": false")
    @ollama_documented(ChatRequest, ChatReply, stream=NDJSON, errors=GENERATES)
    @ollama_errors
    async def chat(http_request: HTTPRequest) -> Response:
        return await _generation(api, http_request, ChatRequest, CHAT, chat_request_prompt)

    @router.post("/api/generate", summary="A completion, streamed (NDJSON) unless \"stream\": false")
    @ollama_documented(GenerateRequest, GenerateReply, stream=NDJSON, errors=GENERATES)
    @ollama_errors
    async def generate(http_request: HTTPRequest) -> Response:
        return await _generation(api, http_request, GenerateRequest, GENERATE, generate_request_prompt)


async def _generation(api: OllamaAPI, http_request: HTTPRequest, request_class: type, shape: ReplyShape,
                      prompt_of: Callable[[EngineClient, Any], Prompt]) -> Response:
    """/api/chat or /api/generate: a request without input loads (or unloads) the model; otherwise the
    prompt made by `prompt_of(engine, body)` is generated and answered in `shape`."""
    timings = Timings(started=time.perf_counter())
    body = validate(request_class, parse_json_object(await http_request.body()))
    check_fields(body)
    name = normalize_model_name(body.model)
    if body.is_load_only:
        return await api.load_or_unload(name, body.model, body.keep_alive, shape, timings)
    engine = await resolve_engine(api.pool, name, timings, keep_alive=body.keep_alive)
    prompt = prompt_of(engine, body)
    reasoning_format = engine.reasoning_format
    if reasoning_format is None and opens_reasoning(prompt.text):
        reasoning_format = THINK_TAGS  # an R1-style template opened the block: the model reasons
    show_thinking = can_show_thinking(body.think, reasoning_format, body.model)
    generation = submit(engine, f"ollama-{uuid.uuid4().hex}", prompt,
                        request_params(engine, prompt, body.sampling_options, body.format), timings)
    framing = NDJSONFraming(generation, shape, body.model, can_show_thinking=show_thinking)
    return await answer(http_request, generation, can_stream=body.can_stream, framing=framing,
                        collected=framing.collected)


def _model_name(body: ModelRequest) -> str:
    if not body.model_name:
        raise InvalidRequestError("model is required", param="model")
    return normalize_model_name(body.model_name)


def _add_model_routes(router: APIRouter, api: OllamaAPI) -> None:
    @router.get("/api/tags", summary="The local models")
    @ollama_documented(answer=Tags)
    @ollama_errors
    async def tags() -> Response:
        models = await api.local_models()
        return JSONResponse({"models": await asyncio.to_thread(lambda: [ollama_models.tag_entry(m) for m in models])})

    @router.get("/api/ps", summary="The loaded models")
    @ollama_documented(answer=Ps)
    @ollama_errors
    async def ps() -> Response:
        models = [m for m in await api.local_models() if m.loaded is not None]
        return JSONResponse({"models": await asyncio.to_thread(lambda: [ollama_models.ps_entry(m) for m in models])})

    @router.post("/api/show", summary="A local model's details")
    @ollama_documented(ModelRequest, ShowReply, errors=(404,), refuses_unknown_fields=False)
    @ollama_errors
    async def show(http_request: HTTPRequest) -> Response:
        body = validate(ModelRequest, parse_json_object(await http_request.body()))
        model = await api.model(_model_name(body))
        return JSONResponse(await asyncio.to_thread(ollama_models.show_response, model))

    @router.post("/api/pull", summary="Download a model (with --allow-pull), progress streamed unless "
                 "\"stream\": false")
    @ollama_documented(ModelRequest, PullStatus, stream=NDJSON, errors=(403, 404, 502, 503),
                       refuses_unknown_fields=False)
    @ollama_errors
    async def pull(http_request: HTTPRequest) -> Response:
        body = validate(ModelRequest, parse_json_object(await http_request.body()))
        loaded = [info.name for info in api.pool.model_infos()]
        spec = api.access.resolve_pull(_model_name(body), loaded)
        progress = pull_progress(spec, pull_backend(spec, api.backend))
        if body.stream is not False:
            return NDJSONResponse(errors_as_events(progress, error_object, f"pull of {body.model_name}"))
        last: dict[str, Any] = {}
        async for last in progress:
            pass
        return JSONResponse(last)


def _add_misc_routes(router: APIRouter) -> None:
    @router.get("/api/version", summary="The Ollama API version this server answers like")
    @ollama_documented(answer=Version)
    async def version() -> dict[str, str]:
        return {"version": OLLAMA_API_VERSION}

    @router.api_route("/api/{rest:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"],
                      include_in_schema=False)
    async def unknown(http_request: HTTPRequest, rest: str) -> Response:
        path = http_request.url.path
        if any(path == known or path.startswith(known + "/") for known in NOT_IMPLEMENTED):
            return JSONResponse({"error": f"{http_request.method} {path} is not supported by this server"},
                                status_code=501)
        return JSONResponse({"error": f"no route {http_request.method} {path}"}, status_code=404)
