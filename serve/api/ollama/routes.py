"""Ollama's API on the same port as the OpenAI one: /api/chat, /api/generate, /api/tags, /api/ps, /api/show,
/api/pull, /api/version, and `GET /` answering "Ollama is running".

Generation goes the same way as the OpenAI routes (pool -> engine.submit -> per-request stream): only the
edges differ (serve/api/ollama/generation.py). Replies stream as NDJSON unless `"stream": false`. Every error
on these routes has Ollama's shape `{"error": "..."}` (the OpenAI routes keep OpenAI's), with the status of
the ServeError behind it. Model names may carry Ollama's `:latest` tag; keep_alive goes to the pool.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any, AsyncIterator, Awaitable, Callable

from fastapi import APIRouter, Request as HTTPRequest
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from serve.api.ollama import models as ollama_models
from serve.api.errors import parse_json_object, validate
from serve.api.ollama.ndjson import NDJSONResponse
from serve.api.ollama.generation import (CHAT, GENERATE, INTERNAL_ERROR, ReplyShape, Timings, answer,
                                         chat_prompt, generate_prompt, submit)
from serve.api.ollama.models import find_model, local_models
from serve.api.ollama.protocol import ChatRequest, GenerateRequest, ModelRequest, normalize_model_name
from serve.api.ollama.pull import pull_backend, pull_progress
from serve.models.catalog import Catalog, load_catalog, resolve_model
from serve.errors import InvalidRequestError, ModelNotFoundError, OverloadedError, ServeError

logger = logging.getLogger("serve.api")

# The Ollama API version we answer like (GET /api/version); clients gate features on it.
OLLAMA_API_VERSION = "0.9.0"
ROOT_TEXT = "Ollama is running"
NOT_IMPLEMENTED = {"/api/create", "/api/copy", "/api/delete", "/api/push", "/api/embed", "/api/embeddings",
                   "/api/blobs"}


# --- errors ---------------------------------------------------------------------------------------------

def ollama_error(exc: ServeError) -> JSONResponse:
    headers = {"Retry-After": str(max(1, int(exc.retry_after)))} if isinstance(exc, OverloadedError) else None
    return JSONResponse({"error": exc.message}, status_code=exc.status_code, headers=headers)


def ollama_errors(handler: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
    """Answer a route's failures in Ollama's shape instead of the app-wide OpenAI one."""
    @functools.wraps(handler)
    async def wrapper(*args: Any, **kwargs: Any) -> Response:
        try:
            return await handler(*args, **kwargs)
        except ServeError as exc:
            if exc.status_code >= 500:
                logger.error("ollama route failed: %s", exc.message)
            return ollama_error(exc)
        except Exception:  # noqa: BLE001 - the client gets a generic error, the log the traceback
            logger.exception("internal error on an Ollama route")
            return JSONResponse({"error": INTERNAL_ERROR}, status_code=500)
    return wrapper


# --- the router -----------------------------------------------------------------------------------------

class OllamaAPI:
    """The routes' shared state: the pool, the catalog, and how to ask the pool for an engine."""

    def __init__(self, pool: Any, config: Any):
        self.pool = pool
        self.config = config
        self.catalog: Catalog = load_catalog(getattr(config, "catalog_file", None))

    async def engine(self, name: str, keep_alive: float | None, timings: Timings) -> Any:
        timings.load_started = time.perf_counter()
        engine = await self.pool.get(name, keep_alive=keep_alive)  # loads it (making room) when needed
        timings.loaded = time.perf_counter()
        return engine

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
        await self.engine(name, keep_alive, timings)
        return JSONResponse(shape.reply(model, "", done=True, done_reason="load"))

    async def unload(self, name: str) -> None:
        if name in {info.name for info in self.pool.model_infos()}:
            await self.pool.unload(name)  # its running requests finish first
            return
        await self.model(name)  # not loaded: fine if it exists here, else the 404 naming what does


def build_router(pool: Any, config: Any = None) -> APIRouter:
    """Ollama's routes over a serve.runtime.pool.ModelPool; `config` is the server's ServerConfig."""
    api = OllamaAPI(pool, config)
    router = APIRouter()
    _add_generation_routes(router, api)
    _add_model_routes(router, api)
    _add_misc_routes(router)
    return router


def _add_generation_routes(router: APIRouter, api: OllamaAPI) -> None:
    @router.post("/api/chat")
    @ollama_errors
    async def chat(http_request: HTTPRequest) -> Response:
        return await _generation(api, http_request, ChatRequest, CHAT, chat_prompt)

    @router.post("/api/generate")
    @ollama_errors
    async def generate(http_request: HTTPRequest) -> Response:
        return await _generation(api, http_request, GenerateRequest, GENERATE, generate_prompt)


async def _generation(api: OllamaAPI, http_request: HTTPRequest, request_class: type, shape: ReplyShape,
                      prompt_of: Callable[[Any, Any], tuple[str, list[dict] | None]]) -> Response:
    """/api/chat or /api/generate: a request without input loads (or unloads) the model; otherwise the
    prompt made by `prompt_of(engine, body)` is generated and answered in `shape`."""
    timings = Timings(started=time.perf_counter())
    body = validate(request_class, parse_json_object(await http_request.body()))
    name = normalize_model_name(body.model)
    if body.is_load_only:
        return await api.load_or_unload(name, body.model, body.keep_alive, shape, timings)
    engine = await api.engine(name, body.keep_alive, timings)
    prompt, messages = prompt_of(engine, body)
    generation = submit(engine, prompt, body.sampling_options, messages, timings)
    return await answer(http_request, generation, shape, body.model, timings, body.can_stream)


def _model_name(body: ModelRequest) -> str:
    if not body.model_name:
        raise InvalidRequestError("model is required", param="model")
    return normalize_model_name(body.model_name)


def _add_model_routes(router: APIRouter, api: OllamaAPI) -> None:
    @router.get("/api/tags")
    @ollama_errors
    async def tags() -> Response:
        models = await api.local_models()
        return JSONResponse({"models": await asyncio.to_thread(lambda: [ollama_models.tag_entry(m) for m in models])})

    @router.get("/api/ps")
    @ollama_errors
    async def ps() -> Response:
        models = [m for m in await api.local_models() if m.loaded is not None]
        return JSONResponse({"models": await asyncio.to_thread(lambda: [ollama_models.ps_entry(m) for m in models])})

    @router.post("/api/show")
    @ollama_errors
    async def show(http_request: HTTPRequest) -> Response:
        body = validate(ModelRequest, parse_json_object(await http_request.body()))
        model = await api.model(_model_name(body))
        return JSONResponse(await asyncio.to_thread(ollama_models.show_response, model))

    @router.post("/api/pull")
    @ollama_errors
    async def pull(http_request: HTTPRequest) -> Response:
        body = validate(ModelRequest, parse_json_object(await http_request.body()))
        spec = resolve_model(_model_name(body), api.catalog)
        progress = pull_progress(spec, pull_backend(spec, getattr(api.config, "backend", None)))
        if body.stream is not False:
            return NDJSONResponse(_errors_as_objects(progress))
        last: dict[str, Any] = {}
        async for last in progress:
            pass
        return JSONResponse(last)


async def _errors_as_objects(objects: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    try:
        async for payload in objects:
            yield payload
    except ServeError as exc:
        yield {"error": exc.message}
    except Exception:  # noqa: BLE001
        logger.exception("pull failed")
        yield {"error": INTERNAL_ERROR}


def _add_misc_routes(router: APIRouter) -> None:
    @router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def root() -> Response:
        return PlainTextResponse(ROOT_TEXT)

    @router.get("/api/version")
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
