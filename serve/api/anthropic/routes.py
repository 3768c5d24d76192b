"""Anthropic's Messages API: POST /v1/messages and /v1/messages/count_tokens.

Generation goes through the core every dialect shares (serve/api/generation.py); only the edges are
Anthropic's: the request (serve/api/anthropic/request.py) and the answer (serve/api/anthropic/sse.py).
Every error on these routes has Anthropic's shape (serve/api/anthropic/errors.py). The API key may come
as `x-api-key` (what Anthropic's clients send) or as a bearer token: serve/api/guards.py reads both.
"""
from __future__ import annotations

import time
import uuid

from fastapi import APIRouter, Request as HTTPRequest
from fastapi.responses import JSONResponse, Response

from serve.api.anthropic.answers import AnthropicError, Message, TokenCount
from serve.api.anthropic.errors import anthropic_errors
from serve.api.anthropic.protocol import CountTokensRequest, MessagesRequest
from serve.api.anthropic.request import messages_prompt, sampling_params
from serve.api.anthropic.sse import MessageFraming
from serve.api.engine_client import PoolClient
from serve.api.errors import parse_json_object, validate
from serve.api.generation import Timings, answer, resolve_engine, submit
from serve.api.openapi import GENERATES, LOADS_MODEL, SSE, documented


def new_message_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def build_router(pool: PoolClient) -> APIRouter:
    """Anthropic's routes over the model pool; a reasoning model's thinking is answered as thinking blocks."""
    router = APIRouter()

    @router.post("/v1/messages", summary="A message, collected or streamed (Anthropic's Messages API)")
    @documented(MessagesRequest, Message, stream=SSE, errors=GENERATES, error_shape=AnthropicError)
    @anthropic_errors
    async def messages(http_request: HTTPRequest) -> Response:
        timings = Timings(started=time.perf_counter())
        body = validate(MessagesRequest, parse_json_object(await http_request.body()))
        engine = await resolve_engine(pool, body.model, timings)
        prompt = messages_prompt(engine, body)
        generation = submit(engine, new_message_id(), prompt, sampling_params(body), timings)
        shows_thinking = body.thinking is None or body.thinking.shows_thinking
        framing = MessageFraming(generation, body.model, shows_thinking=shows_thinking)
        return await answer(http_request, generation, can_stream=body.stream, framing=framing,
                            collected=framing.collected)

    @router.post("/v1/messages/count_tokens", summary="The prompt's tokens")
    @documented(CountTokensRequest, TokenCount, errors=LOADS_MODEL, error_shape=AnthropicError)
    @anthropic_errors
    async def count_tokens(http_request: HTTPRequest) -> Response:
        """The prompt's tokens as this model's chat template renders the conversation."""
        timings = Timings(started=time.perf_counter())
        body = validate(CountTokensRequest, parse_json_object(await http_request.body()))
        engine = await resolve_engine(pool, body.model, timings)
        prompt = messages_prompt(engine, body)
        return JSONResponse({"input_tokens": len(prompt.token_ids)})

    return router
