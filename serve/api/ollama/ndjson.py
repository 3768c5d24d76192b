"""Ollama's replies (the Ollama dialect's framing): newline-delimited JSON, one object per line, the last
one `done` with Ollama's metrics in nanoseconds:

    total_duration        request start -> finish
    load_duration         waiting for the pool to hand over the engine (a model load, when it was not loaded)
    prompt_eval_duration  submit -> first token (queueing and prefill)
    eval_duration         first token -> finish

A collected (`"stream": false`) reply is that last object with the whole text. Objects are plain dicts
encoded here (one per generated token on the hot path; pydantic would slow it).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

from serve.api.generation import Completion, Generation, Timings
from serve.api.ollama.models import timestamp
from serve.api.streaming import ClosingStreamingResponse
from serve.api.tools.calls import ToolCall, ToolCallDone, ToolEvent
from serve.errors import ServeError

MEDIA_TYPE = "application/x-ndjson"


def ndjson_line(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def error_object(error: ServeError) -> dict[str, str]:
    """Ollama's error shape, in a body or as the last line of a stream."""
    return {"error": error.message}


async def _encode(objects: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    async for payload in objects:
        yield ndjson_line(payload)


class NDJSONResponse(ClosingStreamingResponse):
    """An application/x-ndjson response of `objects`, one JSON object per line."""

    def __init__(self, objects: AsyncIterator[dict[str, Any]], on_close: Callable[[], None] | None = None):
        super().__init__(_encode(objects), media_type=MEDIA_TYPE, on_close=on_close)


def _nanoseconds(seconds: float) -> int:
    return max(0, int(seconds * 1e9))


def metrics(timings: Timings, num_prompt_tokens: int, num_eval_tokens: int) -> dict[str, int]:
    """Ollama's counts and durations of one finished request."""
    end = timings.finished or time.perf_counter()
    first = timings.first_output or end
    return {"total_duration": _nanoseconds(end - timings.started),
            "load_duration": _nanoseconds(timings.loaded - timings.load_started),
            "prompt_eval_count": num_prompt_tokens, "prompt_eval_duration": _nanoseconds(first - timings.submitted),
            "eval_count": num_eval_tokens, "eval_duration": _nanoseconds(end - first)}


@dataclass(frozen=True)
class ReplyShape:
    """What differs between /api/chat and /api/generate replies."""

    is_chat: bool

    def content(self, text: str, thinking: str = "") -> dict[str, Any]:
        """The answer's text, and a reasoning model's thinking when there is some to show (Ollama omits an
        empty `thinking`): `message.thinking` in chat replies, `thinking` in generate replies."""
        extra = {"thinking": thinking} if thinking else {}
        if self.is_chat:
            return {"message": {"role": "assistant", "content": text, **extra}}
        return {"response": text, **extra}

    def reply(self, model: str, text: str, thinking: str = "", **fields: Any) -> dict[str, Any]:
        return {"model": model, "created_at": timestamp(), **self.content(text, thinking), **fields}


CHAT = ReplyShape(is_chat=True)
GENERATE = ReplyShape(is_chat=False)


@dataclass(frozen=True)
class NDJSONFraming:
    """The generation core's Framing for Ollama: a line per text delta, then the `done` line."""

    generation: Generation
    shape: ReplyShape
    model: str  # as the client named it (Ollama echoes the name with its tag)
    can_show_thinking: bool = True  # False: think=false, a reasoning model's thinking is dropped
    media_type: str = MEDIA_TYPE

    def opening(self) -> list[bytes]:
        return []

    def delta(self, text: str, reasoning: str = "", logprobs: Any = None) -> bytes:
        thinking = reasoning if self.can_show_thinking else ""
        if not (text or thinking):
            return b""  # only hidden thinking in this step: nothing to send
        return ndjson_line(self.shape.reply(self.model, text, thinking, done=False))

    def tool_call(self, event: ToolEvent) -> list[bytes]:
        """Ollama sends a call whole, in a message of its own, once its arguments are complete."""
        if not isinstance(event, ToolCallDone):
            return []
        reply = self.shape.reply(self.model, "", done=False)
        reply["message"]["tool_calls"] = [ollama_tool_call(event.call)]
        return [ndjson_line(reply)]

    def finish(self, reason: str, num_output_tokens: int) -> list[bytes]:
        return [ndjson_line(self.done(reason, "", num_output_tokens))]

    def error(self, error: ServeError) -> bytes:
        return ndjson_line(error_object(error))

    def closing(self) -> list[bytes]:
        return []

    def done(self, reason: str, text: str, num_output_tokens: int, thinking: str = "") -> dict[str, Any]:
        counts = metrics(self.generation.timings, self.generation.stream.num_prompt_tokens, num_output_tokens)
        reason = "stop" if reason == "tool_calls" else reason  # Ollama says stop after tool calls too
        return self.shape.reply(self.model, text, thinking, done=True, done_reason=reason, **counts)

    def collected(self, completion: Completion) -> dict[str, Any]:
        reply = self.done(completion.finish_reason, completion.text, completion.num_output_tokens,
                      completion.reasoning if self.can_show_thinking else "")
        if completion.tool_calls:
            reply["message"]["tool_calls"] = [ollama_tool_call(call) for call in completion.tool_calls]
        return reply


def ollama_tool_call(call: ToolCall) -> dict[str, Any]:
    """Ollama's shape: arguments as an object (text that is not a JSON object, from a cut call, stays text)."""
    try:
        arguments: Any = json.loads(call.arguments)
    except ValueError:
        arguments = call.arguments
    return {"function": {"name": call.name, "arguments": arguments}}
