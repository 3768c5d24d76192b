"""The OpenAI-compatible routes: /v1/chat/completions, /v1/completions, /v1/models, /health.

Routes are thin: validate, template and tokenize through the engine, build a `Request`, submit it, then
either collect the outputs into one JSON response or stream them as server-sent events. Errors raised by
`engine.submit` (context too long, queue full) happen before any byte is sent, so they get their proper
status. A client that goes away aborts its request, streaming or not.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator

from fastapi import APIRouter, Request as HTTPRequest
from fastapi.responses import JSONResponse, Response

from serve.api.openai import protocol
from serve.api.errors import parse_json_object, validate
from serve.api.openai.sse import (CHAT_CHUNK, TEXT_CHUNK, EventStreamResponse, StreamHeader, finish_reason,
                           stream_events)
from serve.errors import InvalidRequestError, ModelNotFoundError, ServeError
from serve.sequence import Request, SamplingParams, StepOutput

# Without max_tokens a request may run to the end of its context (as llama-server), but not for ever.
DEFAULT_MAX_TOKENS_CAP = 4096
CLIENT_CLOSED_REQUEST = 499  # nginx's status for "the client went away"; nobody reads it


@dataclass
class Generation:
    """A submitted request and what the route needs to answer it."""

    request: Request
    stream: Any  # serve.runtime.engine.RequestStream
    is_finished: bool = False

    async def outputs(self) -> AsyncIterator[StepOutput]:
        async for output in self.stream:
            if output.finish_reason is not None:
                self.is_finished = True
            yield output

    def abort_unless_finished(self) -> None:
        if not self.is_finished:
            self.stream.abort()


def sampling_params(body: protocol.SamplingFields, num_max_tokens: int) -> SamplingParams:
    return SamplingParams(
        max_tokens=num_max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=max(0, body.top_k or 0),
        min_p=body.min_p or 0.0,
        seed=body.seed,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        repeat_penalty=1.0 if body.repeat_penalty is None else body.repeat_penalty,
        logit_bias={int(token): bias for token, bias in (body.logit_bias or {}).items()},
        stop=body.stop,
    )


def check_unsupported(body: protocol.SamplingFields) -> None:
    """Known OpenAI options we do not implement yet: a clear 400 instead of a silently different answer."""
    if body.n is not None and body.n != 1:
        raise InvalidRequestError(f"n>1 is not supported yet (got n={body.n}); send n=1 or omit it", param="n")
    if getattr(body, "logprobs", None):
        raise InvalidRequestError("logprobs are not supported yet", param="logprobs")
    if getattr(body, "echo", None):
        raise InvalidRequestError("echo is not supported yet", param="echo")
    if getattr(body, "suffix", None):
        raise InvalidRequestError("suffix (fill-in-the-middle) is not supported yet", param="suffix")


async def engine_for(pool, model: str | None):
    if model is None:
        infos = pool.model_infos()
        if not infos:
            raise InvalidRequestError("model is required", param="model")
        model = infos[0].name
    return await pool.get(model)


def submit(engine, request_id: str, prompt: str, body: protocol.SamplingFields,
           messages: list[dict] | None) -> Generation:
    prompt_token_ids = engine.tokenize(prompt)
    num_context_left = engine.capabilities.context_length - len(prompt_token_ids)
    num_max_tokens = body.num_max_tokens or max(1, min(num_context_left, DEFAULT_MAX_TOKENS_CAP))
    request = Request(request_id=request_id, model=engine.model_name, prompt=prompt,
                      prompt_token_ids=prompt_token_ids, params=sampling_params(body, num_max_tokens),
                      messages=messages)
    return Generation(request, engine.submit(request))


async def _collect(generation: Generation) -> tuple[str, int, str]:
    parts, num_tokens = [], 0
    async for output in generation.outputs():
        parts.append(output.text)
        num_tokens += output.num_new_tokens
        if output.finish_reason is not None:
            return "".join(parts), num_tokens, finish_reason(output)
    raise ServeError("the engine ended the request without a finish reason")


async def _wait_for_disconnect(http_request: HTTPRequest) -> None:
    while (await http_request.receive())["type"] != "http.disconnect":
        pass


async def collect_unless_gone(http_request: HTTPRequest, generation: Generation) -> tuple[str, int, str] | None:
    """The whole output, or None when the client went away first (the request is then aborted)."""
    work = asyncio.ensure_future(_collect(generation))
    gone = asyncio.ensure_future(_wait_for_disconnect(http_request))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # the server is shutting down: stop generating for nobody
        gone.cancel()
        generation.abort_unless_finished()
        work.cancel()
        raise
    gone.cancel()
    if work.done():
        return work.result()
    generation.abort_unless_finished()
    work.cancel()
    return None


def usage(generation: Generation, num_completion_tokens: int) -> protocol.Usage:
    """Token counts as OpenAI reports them; cached_tokens shows prefix reuse (same system prompt, the
    earlier turns of a chat) at work."""
    stream = generation.stream
    cached = protocol.PromptTokensDetails(cached_tokens=stream.num_cached_tokens)
    return protocol.Usage(prompt_tokens=stream.num_prompt_tokens, completion_tokens=num_completion_tokens,
                          total_tokens=stream.num_prompt_tokens + num_completion_tokens, prompt_tokens_details=cached)


def event_stream(generation: Generation, body: protocol.SamplingFields, is_chat: bool) -> EventStreamResponse:
    header = StreamHeader(request_id=generation.request.request_id, model=generation.request.model,
                          created=int(time.time()), shape=CHAT_CHUNK if is_chat else TEXT_CHUNK,
                          include_usage=body.can_include_usage)
    events = stream_events(generation.outputs(), header, lambda n: usage(generation, n).model_dump())
    return EventStreamResponse(events, on_close=generation.abort_unless_finished)


async def answer(http_request: HTTPRequest, generation: Generation, body: protocol.SamplingFields,
                 is_chat: bool) -> Response:
    """A stream of server-sent events, or the whole output as one chat/text completion object."""
    if body.stream:
        return event_stream(generation, body, is_chat=is_chat)
    result = await collect_unless_gone(http_request, generation)
    if result is None:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    text, num_tokens, reason = result
    common = dict(id=generation.request.request_id, created=int(time.time()), model=generation.request.model,
                  usage=usage(generation, num_tokens))
    if is_chat:
        choice = protocol.ChatChoice(message=protocol.AssistantMessage(content=text), finish_reason=reason)
        response = protocol.ChatCompletionResponse(choices=[choice], **common)
    else:
        response = protocol.CompletionResponse(
            choices=[protocol.CompletionChoice(text=text, finish_reason=reason)], **common)
    return JSONResponse(response.model_dump())


def _model_card(info) -> protocol.ModelCard:
    return protocol.ModelCard(id=info.name, created=info.created, backend=info.backend,
                              context_length=info.context_length, num_parallel=info.num_parallel)


def _find_card(pool, model_id: str | None) -> protocol.ModelCard | None:
    for info in pool.model_infos():
        if info.name == model_id:
            return _model_card(info)
    return None


def build_router(pool) -> APIRouter:
    """The OpenAI routes over a serve.runtime.pool.ModelPool."""
    router = APIRouter()

    @router.post("/v1/chat/completions")
    async def chat_completions(http_request: HTTPRequest) -> Response:
        body = validate(protocol.ChatCompletionRequest, parse_json_object(await http_request.body()))
        check_unsupported(body)
        engine = await engine_for(pool, body.model)
        messages = [message.to_template_dict() for message in body.messages]
        prompt = engine.render_chat(messages)
        generation = submit(engine, f"chatcmpl-{uuid.uuid4().hex}", prompt, body, messages)
        return await answer(http_request, generation, body, is_chat=True)

    @router.post("/v1/completions")
    async def completions(http_request: HTTPRequest) -> Response:
        body = validate(protocol.CompletionRequest, parse_json_object(await http_request.body()))
        check_unsupported(body)
        engine = await engine_for(pool, body.model)
        generation = submit(engine, f"cmpl-{uuid.uuid4().hex}", body.prompt, body, None)
        return await answer(http_request, generation, body, is_chat=False)

    @router.get("/v1/models")
    async def list_models() -> JSONResponse:
        cards = [_model_card(info) for info in pool.model_infos()]
        return JSONResponse(protocol.ModelList(data=cards).model_dump())

    @router.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> JSONResponse:
        card = _find_card(pool, pool.loaded_name(model_id))
        if card is None:  # a GET must not start loading (or downloading) a model
            loaded = ", ".join(info.name for info in pool.model_infos()) or "none"
            raise ModelNotFoundError(f"model {model_id!r} is not loaded; loaded models: {loaded}", param="model")
        return JSONResponse(card.model_dump())

    @router.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": [info.name for info in pool.model_infos()], "stats": pool.stats()}

    return router
