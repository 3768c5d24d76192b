"""One Ollama generation: `options` -> our Request, the reply objects (streamed as NDJSON or collected into
one), and Ollama's metrics in nanoseconds.

    total_duration        request start -> finish
    load_duration         waiting for the pool to hand over the engine (a model load, when it was not loaded)
    prompt_eval_duration  submit -> first token (queueing and prefill)
    eval_duration         first token -> finish
"""
from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator

from fastapi import Request as HTTPRequest
from fastapi.responses import JSONResponse, Response

from serve.api.ollama.ndjson import NDJSONResponse
from serve.api.ollama.models import timestamp
from serve.api.ollama.protocol import (DEFAULT_REPEAT_PENALTY, DEFAULT_TEMPERATURE, DEFAULT_TOP_K, DEFAULT_TOP_P,
                                       ChatRequest, GenerateRequest, Options)
from serve.api.ollama.template import TemplateError, render_prompt_template
from serve.api.openai.routes import CLIENT_CLOSED_REQUEST, Generation, collect_unless_gone
from serve.api.openai.sse import finish_reason
from serve.errors import ContextLengthError, InvalidRequestError, ServeError
from serve.sequence import Request, SamplingParams, StepOutput

logger = logging.getLogger("serve.api")

INTERNAL_ERROR = "internal server error; see the server log"


def _nanoseconds(seconds: float) -> int:
    return max(0, int(seconds * 1e9))


@dataclass
class Timings:
    """perf_counter() marks of one request, for Ollama's durations."""

    started: float
    loaded: float = 0.0
    load_started: float = 0.0
    submitted: float = 0.0
    first_output: float | None = None
    finished: float | None = None

    def metrics(self, num_prompt_tokens: int, num_eval_tokens: int) -> dict[str, int]:
        end = self.finished or time.perf_counter()
        first = self.first_output or end
        return {"total_duration": _nanoseconds(end - self.started),
                "load_duration": _nanoseconds(self.loaded - self.load_started),
                "prompt_eval_count": num_prompt_tokens, "prompt_eval_duration": _nanoseconds(first - self.submitted),
                "eval_count": num_eval_tokens, "eval_duration": _nanoseconds(end - first)}


class TimedStream:
    """A serve.runtime.engine.RequestStream that marks when the first token and the finish arrived."""

    def __init__(self, stream: Any, timings: Timings):
        self._stream = stream
        self._timings = timings

    @property
    def num_prompt_tokens(self) -> int:
        return self._stream.num_prompt_tokens

    def abort(self) -> None:
        self._stream.abort()

    def __aiter__(self) -> "TimedStream":
        return self

    async def __anext__(self) -> StepOutput:
        output = await self._stream.__anext__()
        now = time.perf_counter()
        if self._timings.first_output is None and output.num_new_tokens:
            self._timings.first_output = now
        if output.finish_reason is not None:
            self._timings.finished = now
        return output


def sampling_params(options: Options, num_max_tokens: int) -> SamplingParams:
    """Ollama's options -> ours; what is not given gets Ollama's defaults (temperature 0.8, top_k 40, ...)."""
    def given(value: Any, default: Any) -> Any:
        return default if value is None else value

    return SamplingParams(
        max_tokens=num_max_tokens, temperature=given(options.temperature, DEFAULT_TEMPERATURE),
        top_p=given(options.top_p, DEFAULT_TOP_P), top_k=given(options.top_k, DEFAULT_TOP_K),
        min_p=given(options.min_p, 0.0), seed=options.seed if options.seed is not None and options.seed >= 0 else None,
        presence_penalty=given(options.presence_penalty, 0.0), frequency_penalty=given(options.frequency_penalty, 0.0),
        repeat_penalty=given(options.repeat_penalty, DEFAULT_REPEAT_PENALTY),
        stop=tuple(s for s in options.stop or () if s))


def _context_limit(engine: Any, options: Options) -> int:
    """The per-request context: the server's, or a smaller num_ctx; a larger num_ctx is a 400."""
    served = engine.capabilities.context_length
    if options.num_ctx is not None and options.num_ctx > served:
        raise InvalidRequestError(
            f"num_ctx {options.num_ctx} is larger than the context this server gives each request of "
            f"{engine.model_name} ({served} tokens); send num_ctx <= {served}, or restart the server with "
            f"--ctx {options.num_ctx}", param="options.num_ctx")
    return options.num_ctx or served


def build_request(engine: Any, prompt: str, options: Options, messages: list[dict] | None) -> Request:
    unsupported = options.unsupported()
    if unsupported:
        raise InvalidRequestError(unsupported, param="options")
    limit = _context_limit(engine, options)
    prompt_token_ids = engine.tokenize(prompt)
    if options.num_ctx is not None and len(prompt_token_ids) >= limit:
        raise ContextLengthError(f"the prompt has {len(prompt_token_ids)} tokens, but num_ctx is {limit} "
                                 "(prompt plus output); shorten the prompt or raise num_ctx",
                                 param="options.num_ctx")
    num_left = max(1, limit - len(prompt_token_ids))
    wanted = options.num_predict
    num_max_tokens = num_left if wanted is None or wanted < 0 else min(wanted, num_left)
    return Request(request_id=f"ollama-{uuid.uuid4().hex}", model=engine.model_name, prompt=prompt,
                   prompt_token_ids=prompt_token_ids, params=sampling_params(options, num_max_tokens),
                   messages=messages)


def submit(engine: Any, prompt: str, options: Options, messages: list[dict] | None,
           timings: Timings) -> Generation:
    """Build the request and hand it to the engine; raises at once when it cannot be served."""
    request = build_request(engine, prompt, options, messages)
    timings.submitted = time.perf_counter()
    return Generation(request, TimedStream(engine.submit(request), timings))


@dataclass(frozen=True)
class ReplyShape:
    """What differs between /api/chat and /api/generate replies."""

    is_chat: bool

    def content(self, text: str) -> dict[str, Any]:
        return {"message": {"role": "assistant", "content": text}} if self.is_chat else {"response": text}

    def reply(self, model: str, text: str, **fields: Any) -> dict[str, Any]:
        return {"model": model, "created_at": timestamp(), **self.content(text), **fields}


CHAT = ReplyShape(is_chat=True)
GENERATE = ReplyShape(is_chat=False)


async def reply_stream(generation: Generation, shape: ReplyShape, model: str,
                       timings: Timings) -> AsyncIterator[dict[str, Any]]:
    """The NDJSON objects of one request; a failure after the first byte becomes an {"error"} object."""
    num_tokens = 0
    try:
        async for output in generation.outputs():
            num_tokens += output.num_new_tokens
            if output.text:
                yield shape.reply(model, output.text, done=False)
            if output.finish_reason is not None:
                reason = finish_reason(output)
                metrics = timings.metrics(generation.stream.num_prompt_tokens, num_tokens)
                yield shape.reply(model, "", done=True, done_reason=reason, **metrics)
                return
    except ServeError as exc:
        yield {"error": exc.message}
    except Exception:  # noqa: BLE001
        logger.exception("request %s failed while streaming", generation.request.request_id)
        yield {"error": INTERNAL_ERROR}


async def answer(http_request: HTTPRequest, generation: Generation, shape: ReplyShape, model: str,
                 timings: Timings, can_stream: bool) -> Response:
    if can_stream:
        return NDJSONResponse(reply_stream(generation, shape, model, timings),
                              on_close=generation.abort_unless_finished)
    result = await collect_unless_gone(http_request, generation)
    if result is None:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    text, num_tokens, reason = result
    metrics = timings.metrics(generation.stream.num_prompt_tokens, num_tokens)
    return JSONResponse(shape.reply(model, text, done=True, done_reason=reason, **metrics))


def chat_prompt(engine: Any, body: ChatRequest) -> tuple[str, list[dict]]:
    """The conversation rendered with the model's chat template, and its messages."""
    messages = [message.to_template_dict() for message in body.messages]
    return engine.render_chat(messages), messages


def generate_prompt(engine: Any, body: GenerateRequest) -> tuple[str, list[dict] | None]:
    """The prompt text, and the messages when the model's own chat template made it (vLLM templates those)."""
    prompt = body.prompt or ""
    if body.raw:
        return prompt, None
    if body.template:
        try:
            return render_prompt_template(body.template, prompt=prompt, system=body.system), None
        except TemplateError as exc:
            raise InvalidRequestError(str(exc), param="template") from None
    messages = [{"role": "system", "content": body.system}] if body.system else []
    messages.append({"role": "user", "content": prompt})
    return engine.render_chat(messages), messages
