"""The generation core every API dialect shares: from a validated request to its answer.

    resolve_engine -> chat_prompt / text_prompt -> submit -> answer
                                                             |-- stream: framed_events, in the dialect's framing
                                                             '-- collect: collect_unless_gone -> Completion

A dialect translates its wire request into a Prompt and SamplingParams, and supplies a Framing (how its
stream looks: SSE, NDJSON) and the body of a collected answer. Everything else happens here once:
engine lookup, templating and tokenizing, submission, abort when the client goes away, a failure after
the first byte turned into the dialect's error event, and the status for a client that left.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, replace
from typing import Any, AsyncIterator, Callable, Protocol, TypeVar

from fastapi import Request as HTTPRequest
from fastapi.responses import JSONResponse, Response

from serve.api.engine_client import EngineClient, OutputStream, PoolClient
from serve.api.errors import counted, internal_error
from serve.api.metrics import count_request_model
from serve.api.reasoning import Splitter, Thinking, reasoning_splitter
from serve.api.streaming import ClosingStreamingResponse
from serve.api.tasks import CHAT, require_task
from serve.api.tools.calls import ToolCall, ToolEvent
from serve.api.tools.parser import ToolCallParser
from serve.api.tools.spec import ToolRequest
from serve.api.tools.use import ToolUse, tool_use
from serve.errors import InvalidRequestError, ServeError, ServerStoppingError
from serve.sequence import FinishReason, Request, SamplingParams, StepOutput, TokenLogprob

logger = logging.getLogger("serve.api")

# Without a limit a request may run to the end of its context (as llama-server), but not for ever.
DEFAULT_MAX_TOKENS_CAP = 4096
CLIENT_CLOSED_REQUEST = 499  # nginx's status for "the client went away"; nobody reads it

Event = TypeVar("Event")


@dataclass
class Timings:
    """perf_counter() marks of one request (Ollama reports them as durations)."""

    started: float
    load_started: float = 0.0
    loaded: float = 0.0
    submitted: float = 0.0
    first_output: float | None = None
    finished: float | None = None


@dataclass(frozen=True)
class Prompt:
    """What the model reads: the text, its tokens, and the messages it came from (vLLM templates those)."""

    text: str
    token_ids: list[int]
    messages: list[dict[str, Any]] | None = None
    tool_use: ToolUse | None = None  # the tools offered, or a history with tool calls
    # A reasoning model's thinking is split off the answer of a chat (a plain completion is the raw text);
    # a request that turned thinking off which its template could not prevent drops it (shows_reasoning).
    splits_reasoning: bool = False
    shows_reasoning: bool = True


@dataclass
class Generation:
    """A submitted request and what a route needs to answer it."""

    request: Request
    stream: OutputStream
    timings: Timings
    is_finished: bool = False
    # For a reasoning model's output: its thinking apart from its answer (serve/api/reasoning.py).
    splitter: Splitter | None = None
    tool_parser: ToolCallParser | None = None  # when the request offers tools (serve/api/tools/)
    stop_string: str | None = None  # the stop string that ended it, once finished (Anthropic reports it)

    @property
    def request_id(self) -> str:
        return self.request.request_id

    async def outputs(self) -> AsyncIterator[StepOutput]:
        async for output in self.stream:
            if output.num_new_tokens and self.timings.first_output is None:
                self.timings.first_output = time.perf_counter()
            if output.finish_reason is not None:
                self.timings.finished = time.perf_counter()
                self.is_finished = True
                self.stop_string = output.stop_string
            yield output

    def abort_unless_finished(self) -> None:
        if not self.is_finished:
            self.stream.abort()


@dataclass(frozen=True)
class Completion:
    """A collected answer."""

    text: str
    num_output_tokens: int
    finish_reason: str
    reasoning: str = ""  # a reasoning model's thinking, when the dialect split it off
    logprobs: list[TokenLogprob] | None = None  # when asked (SamplingParams.num_logprobs)
    prompt_logprobs: list[TokenLogprob | None] | None = None  # when asked (echo)
    tool_calls: tuple[ToolCall, ...] = ()  # parsed from the output when the request offered tools


class Framing(Protocol):
    """How one dialect streams one answer, as bytes. `finish` gets the finish reason and the number of
    generated tokens; `error` is the event for a failure after the first byte. A dialect that splits
    reasoning off or reports logprobs takes `delta(content, reasoning=..., logprobs=...)`: the core passes
    those keywords only to the requests that asked for them."""

    @property
    def media_type(self) -> str: ...

    def opening(self) -> list[bytes]: ...
    def delta(self, text: str) -> bytes: ...
    def tool_call(self, event: ToolEvent) -> list[bytes]:
        """A tool call's delta (name first, then argument fragments) or its completion; called only for
        requests that offer tools."""
    def finish(self, reason: str, num_output_tokens: int) -> list[bytes]: ...
    def error(self, error: ServeError) -> bytes: ...
    def closing(self) -> list[bytes]: ...


# --- engine, prompt, submission ---------------------------------------------------------------------

async def resolve_engine(pool: PoolClient, model: str | None, timings: Timings, *,
                         keep_alive: float | None = None, task: str = CHAT) -> EngineClient:
    """The engine for `model` (loaded first if needed); no model means the first loaded one. A model that
    cannot do `task` (chat, embeddings, rerank) is a 400 saying where to send the request instead."""
    if model is None:
        infos = pool.model_infos()
        if not infos:
            raise InvalidRequestError("model is required", param="model")
        model = infos[0].name
    timings.load_started = time.perf_counter()
    engine = await pool.get(model, keep_alive=keep_alive)
    timings.loaded = time.perf_counter()
    count_request_model(engine.model_name)  # its errors from here on are this model's
    require_task(engine, task)
    return engine


def chat_prompt(engine: EngineClient, messages: list[dict[str, Any]], tools: ToolRequest | None = None,
                thinking: Thinking = Thinking()) -> Prompt:
    """The conversation rendered with the model's own chat template (and the request's tools, and its
    choice about thinking), tokenized."""
    use = tool_use(engine, messages, tools)
    template = engine.chat_template
    inputs = (messages, None) if use is None else use.template_inputs(messages)
    text = engine.render_chat(*inputs, **thinking.render_kwargs(template))
    text, shows_reasoning = thinking.applied(text, template, engine.reasoning_format)
    return Prompt(text, engine.tokenize(text), messages, use, splits_reasoning=True, shows_reasoning=shows_reasoning)


def text_prompt(engine: EngineClient, text: str, *, splits_reasoning: bool = False) -> Prompt:
    """A prompt used as it is (already templated, or a plain completion); its output is split into
    reasoning and answer only when the dialect says so (Ollama's /api/generate does)."""
    return Prompt(text, engine.tokenize(text), splits_reasoning=splits_reasoning)


def token_prompt(engine: EngineClient, token_ids: list[int]) -> Prompt:
    """A prompt given as token ids (evaluation harnesses send them); it has no text of its own."""
    vocab_size = getattr(engine.capabilities, "vocab_size", 0)  # 0: unknown
    bad = [token for token in token_ids if token < 0 or (vocab_size and token >= vocab_size)]
    if not token_ids or bad:
        raise InvalidRequestError(f"prompt token ids must be between 0 and {max(vocab_size - 1, 0)} (the model's "
                                  f"vocabulary); got {bad[:3] or 'none'}", param="prompt")
    return Prompt("", list(token_ids))


def num_context_left(engine: EngineClient, prompt: Prompt) -> int:
    return engine.capabilities.context_length - len(prompt.token_ids)


def default_num_max_tokens(engine: EngineClient, prompt: Prompt) -> int:
    """The output limit of a request that sets none: the rest of the context, capped."""
    return max(1, min(num_context_left(engine, prompt), DEFAULT_MAX_TOKENS_CAP))


def submit(engine: EngineClient, request_id: str, prompt: Prompt, params: SamplingParams,
           timings: Timings) -> Generation:
    """Hand the request to the engine; raises at once (before any byte is sent) when it cannot be served."""
    use = prompt.tool_use
    if use is not None:
        caps = engine.capabilities
        params = use.constrained(params, can_start_lazily=getattr(caps, "can_start_grammar_on_trigger", False),
                                 can_start_tagged=getattr(caps, "can_start_tagged_grammar", False))
    splitter = None
    if prompt.splits_reasoning:
        splitter = reasoning_splitter(engine.reasoning_format, prompt.text, shows_reasoning=prompt.shows_reasoning)
    if splitter is not None and splitter.kept_special_tokens:  # harmony's markers are special tokens
        kept = tuple(dict.fromkeys(params.kept_special_tokens + splitter.kept_special_tokens))
        params = replace(params, kept_special_tokens=kept)
    request = Request(request_id=request_id, model=engine.model_name, prompt=prompt.text,
                      prompt_token_ids=prompt.token_ids, params=params, messages=prompt.messages)
    timings.submitted = time.perf_counter()
    return Generation(request, engine.submit(request), timings, splitter=splitter,
                      tool_parser=use.new_parser() if use is not None else None)


def finish_reason(output: StepOutput, tool_parser: ToolCallParser | None = None) -> str:
    """OpenAI's finish reason; "tool_calls" when the model stopped after calling tools."""
    reason = output.finish_reason
    if reason == FinishReason.ABORT:  # only the server aborts a request whose client is still there
        if output.is_server_stopping:  # the drain timed out: another instance (or this one, restarted) may serve it
            raise ServerStoppingError("generation was aborted: the server is shutting down; retry against another "
                                      "instance")
        raise ServeError(f"generation was aborted: {output.error or 'the backend failed'}", code="aborted")
    if reason == FinishReason.STOP and tool_parser is not None and tool_parser.calls:
        return "tool_calls"
    return reason.value if isinstance(reason, FinishReason) else str(reason)


# --- answering ----------------------------------------------------------------------------------------

async def answer(http_request: HTTPRequest, generation: Generation, *, can_stream: bool, framing: Framing,
                 collected: Callable[[Completion], dict[str, Any]]) -> Response:
    """A stream in the dialect's `framing`, or the whole output as the JSON body `collected` makes."""
    if can_stream:
        return stream_response(generation, framing)
    completion = await collect_unless_gone(http_request, generation)
    if completion is None:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    return JSONResponse(collected(completion))


def stream_response(generation: Generation, framing: Framing) -> ClosingStreamingResponse:
    """The streamed answer; a client that leaves aborts the generation."""
    events = framed_events(generation.outputs(), framing, generation.request_id, generation.splitter,
                           generation.tool_parser)
    return ClosingStreamingResponse(events, media_type=framing.media_type,
                                    on_close=generation.abort_unless_finished)


async def framed_events(outputs: AsyncIterator[StepOutput], framing: Framing, request_id: str,
                        splitter: Splitter | None = None,
                        tool_parser: ToolCallParser | None = None) -> AsyncIterator[bytes]:
    """The events of one streamed answer; a failure after the first byte becomes the error event.
    (One generator, not a chain of them: this runs once per generated token.)"""
    for event in framing.opening():
        yield event
    try:
        num_output_tokens = 0
        async for output in outputs:
            num_output_tokens += output.num_new_tokens
            if tool_parser is not None:
                for event in _tool_deltas(framing, output, splitter, tool_parser):
                    yield event
            elif splitter is not None or output.logprobs:
                event = _split_delta(framing, output, splitter)
                if event is not None:
                    yield event
            elif output.text:
                yield framing.delta(output.text)
            if output.finish_reason is not None:
                for event in framing.finish(finish_reason(output, tool_parser), num_output_tokens):
                    yield event
                break
        else:
            raise ServeError("the engine ended the request without a finish reason")
    except Exception as exc:  # noqa: BLE001 - the status is sent: the failure can only be one more event
        yield failure_event(exc, framing.error, f"request {request_id}")
    for event in framing.closing():
        yield event


def _split_delta(framing: Framing, output: StepOutput, splitter: Splitter | None) -> bytes | None:
    """The delta of an output whose text is split into reasoning and content, or that carries logprobs."""
    reasoning, content = splitter.feed(output.text) if splitter is not None else ("", output.text)
    if splitter is not None and output.finish_reason is not None:
        more_reasoning, more_content = splitter.flush()
        reasoning, content = reasoning + more_reasoning, content + more_content
    if not (reasoning or content or output.logprobs):
        return None
    return framing.delta(content, reasoning=reasoning, logprobs=output.logprobs)  # type: ignore[call-arg]


def _tool_deltas(framing: Framing, output: StepOutput, splitter: Splitter | None,
                 tool_parser: ToolCallParser) -> list[bytes]:
    """The events of an output whose content may hold tool calls: content deltas and tool-call deltas in
    the order the model wrote them (reasoning, when split off, is never parsed for calls)."""
    reasoning, content = splitter.feed(output.text) if splitter is not None else ("", output.text)
    if splitter is not None and output.finish_reason is not None:
        more_reasoning, more_content = splitter.flush()
        reasoning, content = reasoning + more_reasoning, content + more_content
    pieces = tool_parser.feed(content) + (tool_parser.finish() if output.finish_reason is not None else [])
    events, text, logprobs = [], "", output.logprobs
    for piece in [*pieces, None]:
        if isinstance(piece, str):
            text += piece
            continue
        if text or reasoning or logprobs:
            extras = {k: v for k, v in (("reasoning", reasoning), ("logprobs", logprobs)) if v}
            events.append(framing.delta(text, **extras))
            text, reasoning, logprobs = "", "", None
        if piece is not None:
            events += framing.tool_call(piece)
    return events


async def errors_as_events(events: AsyncIterator[Event], error_event: Callable[[ServeError], Event],
                           what: str) -> AsyncIterator[Event]:
    """`events`, then, if they fail, the dialect's `error_event` for the failure."""
    try:
        async for event in events:
            yield event
    except Exception as exc:  # noqa: BLE001 - the status is sent: the failure can only be one more event
        yield failure_event(exc, error_event, what)


def failure_event(exc: Exception, error_event: Callable[[ServeError], Event], what: str) -> Event:
    """A failure after a stream started, as the dialect's error event (its status is already sent).
    An unexpected failure is logged, and the client learns only that there was one."""
    if isinstance(exc, ServeError):
        return error_event(counted(exc))
    logger.error("%s failed while streaming", what, exc_info=exc)
    return error_event(counted(internal_error()))


async def collect(generation: Generation) -> Completion:
    parts, num_tokens = [], 0
    logprobs: list[TokenLogprob] | None = None
    prompt_logprobs = None
    async for output in generation.outputs():
        parts.append(output.text)
        num_tokens += output.num_new_tokens
        if output.logprobs is not None:
            logprobs = (logprobs or []) + output.logprobs
        prompt_logprobs = prompt_logprobs or output.prompt_logprobs
        if output.finish_reason is not None:
            reasoning, text = "", "".join(parts)
            if generation.splitter is not None:
                reasoning, text = _split_whole(generation.splitter, text)
            tool_parser, calls = generation.tool_parser, ()
            if tool_parser is not None:
                text = "".join(p for p in tool_parser.feed(text) + tool_parser.finish() if isinstance(p, str))
                calls = tuple(tool_parser.calls)
            return Completion(text, num_tokens, finish_reason(output, tool_parser), reasoning=reasoning,
                              logprobs=logprobs, prompt_logprobs=prompt_logprobs, tool_calls=calls)
    raise ServeError("the engine ended the request without a finish reason")


def _split_whole(splitter: Splitter, text: str) -> tuple[str, str]:
    reasoning, content = splitter.feed(text)
    more_reasoning, more_content = splitter.flush()
    return reasoning + more_reasoning, content + more_content


async def _wait_for_disconnect(http_request: HTTPRequest) -> None:
    while (await http_request.receive())["type"] != "http.disconnect":
        pass


async def collect_unless_gone(http_request: HTTPRequest, generation: Generation) -> Completion | None:
    """The whole output, or None when the client went away first (the request is then aborted)."""
    work = asyncio.ensure_future(collect(generation))
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
