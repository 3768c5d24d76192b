"""The OpenAI-compatible routes: /v1/chat/completions, /v1/completions, /v1/models.

Routes are thin: validate, translate (serve/api/openai/request.py), then hand the generation to the shared
core (serve/api/generation.py), which streams it as server-sent events (serve/api/openai/sse.py) or
collects it into the JSON bodies built here. Errors raised by `engine.submit` (context too long, queue
full) happen before any byte is sent, so they get their proper status.
"""
from __future__ import annotations

import time
import uuid
from typing import Any

from fastapi import APIRouter, Request as HTTPRequest
from fastapi.responses import JSONResponse, Response

from serve.api.engine_client import PoolClient
from serve.api.errors import parse_json_object, validate
from serve.api.generation import (Completion, Generation, Prompt, Timings, answer, chat_prompt, resolve_engine,
                                  submit, text_prompt, token_prompt)
from serve.api.openai import protocol
from serve.api.openapi import GENERATES, SSE, documented
from serve.api.openai.logprobs import chat_logprobs, completion_logprobs
from serve.api.openai.request import chat_messages, check_supported, request_params, thinking, tool_request
from serve.api.openai.sse import CHAT_CHUNK, TEXT_CHUNK, SSEFraming, StreamHeader
from serve.errors import ModelNotFoundError
from serve.runtime.pool import ModelInfo


def usage(generation: Generation, num_completion_tokens: int) -> protocol.Usage:
    """Token counts as OpenAI reports them; cached_tokens shows prefix reuse (same system prompt, the
    earlier turns of a chat) at work."""
    stream = generation.stream
    cached = protocol.PromptTokensDetails(cached_tokens=stream.num_cached_tokens)
    return protocol.Usage(prompt_tokens=stream.num_prompt_tokens, completion_tokens=num_completion_tokens,
                          total_tokens=stream.num_prompt_tokens + num_completion_tokens, prompt_tokens_details=cached)


def _echoed(prompt_text: str, completion: Completion) -> tuple[str, list, str]:
    """echo: the prompt's text in front of the output, and its tokens' logprobs in front of the output's.
    The first prompt token has no logprob; its text is what the later tokens leave of the prompt (a
    token-id prompt has no text of its own: its echo starts at the second token)."""
    entries = list(completion.prompt_logprobs or [])
    rest = b"".join(entry.piece for entry in entries if entry is not None).decode("utf-8", "replace")
    if not prompt_text:
        prompt_text = rest
    first_text = prompt_text[:len(prompt_text) - len(rest)] if prompt_text.endswith(rest) else ""
    return prompt_text, entries, first_text


def _text_choice(completion: Completion, echo_prompt: str | None, wants_logprobs: bool) -> protocol.CompletionChoice:
    text, entries, first_text = completion.text, list(completion.logprobs or []), ""
    if echo_prompt is not None:
        prefix, prompt_entries, first_text = _echoed(echo_prompt, completion)
        text, entries = prefix + text, prompt_entries + entries
    logprobs = completion_logprobs(entries, first_token_text=first_text) if wants_logprobs else None
    return protocol.CompletionChoice(text=text, logprobs=logprobs, finish_reason=completion.finish_reason)


def _collected(generation: Generation, body: protocol.SamplingFields, completion: Completion,
               prompt: Prompt) -> dict[str, Any]:
    """The whole output as one chat.completion or text_completion object."""
    request_id, model, created = generation.request_id, generation.request.model, int(time.time())
    counts = usage(generation, completion.num_output_tokens)
    if isinstance(body, protocol.ChatCompletionRequest):
        reasoning = completion.reasoning or None
        calls = [protocol.ToolCall(id=call.id, function=protocol.FunctionCall(name=call.name, arguments=call.arguments))
                 for call in completion.tool_calls]
        message = protocol.AssistantMessage(content=None if calls and not completion.text else completion.text,
                                            tool_calls=calls or None, reasoning_content=reasoning, reasoning=reasoning)
        choice = protocol.ChatChoice(message=message, logprobs=chat_logprobs(completion.logprobs),
                                     finish_reason=completion.finish_reason)
        return protocol.ChatCompletionResponse(id=request_id, created=created, model=model, choices=[choice],
                                               usage=counts).model_dump()
    assert isinstance(body, protocol.CompletionRequest)
    text_choice = _text_choice(completion, prompt.text if body.echo else None, body.logprobs is not None)
    return protocol.CompletionResponse(id=request_id, created=created, model=model, choices=[text_choice],
                                       usage=counts).model_dump()


async def _answer(http_request: HTTPRequest, generation: Generation, body: protocol.SamplingFields,
                  is_chat: bool, prompt: Prompt) -> Response:
    header = StreamHeader(request_id=generation.request_id, model=generation.request.model,
                          created=int(time.time()), shape=CHAT_CHUNK if is_chat else TEXT_CHUNK,
                          include_usage=body.can_include_usage)
    framing = SSEFraming(header, lambda n: usage(generation, n).model_dump())
    return await answer(http_request, generation, can_stream=bool(body.stream), framing=framing,
                        collected=lambda completion: _collected(generation, body, completion, prompt))


def _model_card(info: ModelInfo) -> protocol.ModelCard:
    return protocol.ModelCard(id=info.name, created=info.created, backend=info.backend,
                              context_length=info.context_length, num_parallel=info.num_parallel)


def _find_card(pool: PoolClient, model_id: str | None) -> protocol.ModelCard | None:
    for info in pool.model_infos():
        if info.name == model_id:
            return _model_card(info)
    return None


def build_router(pool: PoolClient) -> APIRouter:
    """The OpenAI routes over the model pool."""
    router = APIRouter()

    @router.post("/v1/chat/completions", summary="A chat completion, collected or streamed")
    @documented(protocol.ChatCompletionRequest, protocol.ChatCompletionResponse, stream=SSE, errors=GENERATES)
    async def chat_completions(http_request: HTTPRequest) -> Response:
        timings = Timings(started=time.perf_counter())
        body = validate(protocol.ChatCompletionRequest, parse_json_object(await http_request.body()))
        check_supported(body)
        messages, tools = chat_messages(body), tool_request(body)
        engine = await resolve_engine(pool, body.model, timings)
        prompt = chat_prompt(engine, messages, tools, thinking(body))
        generation = submit(engine, f"chatcmpl-{uuid.uuid4().hex}", prompt,
                            request_params(engine, prompt, body), timings)
        return await _answer(http_request, generation, body, is_chat=True, prompt=prompt)

    @router.post("/v1/completions", summary="A text completion, collected or streamed")
    @documented(protocol.CompletionRequest, protocol.CompletionResponse, stream=SSE, errors=GENERATES)
    async def completions(http_request: HTTPRequest) -> Response:
        timings = Timings(started=time.perf_counter())
        body = validate(protocol.CompletionRequest, parse_json_object(await http_request.body()))
        check_supported(body)
        engine = await resolve_engine(pool, body.model, timings)
        token_ids = body.prompt_token_ids
        prompt = token_prompt(engine, token_ids) if token_ids is not None else text_prompt(engine, body.prompt)
        generation = submit(engine, f"cmpl-{uuid.uuid4().hex}", prompt, request_params(engine, prompt, body),
                            timings)
        return await _answer(http_request, generation, body, is_chat=False, prompt=prompt)

    @router.get("/v1/models", summary="The loaded models")
    @documented(answer=protocol.ModelList)
    async def list_models() -> JSONResponse:
        cards = [_model_card(info) for info in pool.model_infos()]
        return JSONResponse(protocol.ModelList(data=cards).model_dump())

    @router.get("/v1/models/{model_id:path}", summary="One loaded model")
    @documented(answer=protocol.ModelCard, errors=(404,))
    async def get_model(model_id: str) -> JSONResponse:
        card = _find_card(pool, pool.loaded_name(model_id))
        if card is None:  # a GET must not start loading (or downloading) a model
            loaded = ", ".join(info.name for info in pool.model_infos()) or "none"
            raise ModelNotFoundError(f"model {model_id!r} is not loaded; loaded models: {loaded}", param="model")
        return JSONResponse(card.model_dump())

    return router
