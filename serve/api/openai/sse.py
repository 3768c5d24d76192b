"""Server-sent events for streamed completions (the OpenAI dialect's framing), in the order OpenAI sends them:

    role chunk (chat only) -> content deltas -> a chunk with finish_reason
    -> a usage chunk with empty choices (when stream_options.include_usage) -> data: [DONE]

Chunks are plain dicts: one is built per generated token, and pydantic would only slow that path down.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Optional

from serve.api.generation import framed_events
from serve.api.openai.logprobs import chat_logprobs, completion_logprobs
from serve.api.tools.calls import ToolCallDelta, ToolEvent
from serve.errors import ServeError
from serve.sequence import StepOutput, TokenLogprob

DONE = b"data: [DONE]\n\n"
_TEXT_MARKER = "\x00text\x00"  # stands for the text in a delta's template (NUL: in no id or model name)


def sse_event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


@dataclass(frozen=True)
class ChunkShape:
    """What differs between chat and text completion chunks."""

    object_name: str  # "chat.completion.chunk" or "text_completion"
    is_chat: bool

    def choice(self, text: str | None, finish_reason: str | None, *, role: bool = False) -> dict[str, Any]:
        if not self.is_chat:
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        delta: dict[str, Any] = {}
        if role:
            delta["role"] = "assistant"
        if text is not None:
            delta["content"] = text
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

    def split_choice(self, text: str, reasoning: str, logprobs: Optional[list[TokenLogprob]],
                     offset: list[int]) -> dict[str, Any]:
        """A delta with reasoning (as llama-server's `reasoning_content` and vLLM's `reasoning`) and/or the
        logprobs of its tokens; `offset` counts a text stream's characters so far (text_offset)."""
        choice = self.choice(text if text or not reasoning else None, None)
        if self.is_chat:
            if reasoning:
                choice["delta"]["reasoning_content"] = choice["delta"]["reasoning"] = reasoning
            choice["logprobs"] = chat_logprobs(logprobs)
        elif logprobs is not None:
            choice["logprobs"] = completion_logprobs(list(logprobs), offset[0])
            offset[0] += len(text)
        return choice


CHAT_CHUNK = ChunkShape("chat.completion.chunk", is_chat=True)
TEXT_CHUNK = ChunkShape("text_completion", is_chat=False)


@dataclass(frozen=True)
class StreamHeader:
    request_id: str
    model: str
    created: int
    shape: ChunkShape
    include_usage: bool

    def text_chunk(self, text: str) -> bytes:
        """`chunk` of a plain text delta, the event of nearly every token: the same bytes, from a template
        made once per stream, so a token costs the JSON encoding of its text only (this runs on the event
        loop, beside the model's threads)."""
        if self._text_template is None:
            return self.chunk([self.shape.choice(text, None)])
        head, tail = self._text_template
        return head + json.dumps(text, ensure_ascii=False).encode() + tail

    @functools.cached_property
    def _text_template(self) -> tuple[bytes, bytes] | None:
        """The text delta's bytes before and after its JSON-encoded text; None when the marker standing for
        the text is not found exactly once (an id or model name holding it)."""
        marker = json.dumps(_TEXT_MARKER).encode()
        whole = self.chunk([self.shape.choice(_TEXT_MARKER, None)])
        if whole.count(marker) != 1:
            return None
        head, _, tail = whole.partition(marker)
        return head, tail

    def chunk(self, choices: list[dict[str, Any]], usage: dict | None = None) -> bytes:
        payload: dict[str, Any] = {"id": self.request_id, "object": self.shape.object_name,
                                   "created": self.created, "model": self.model,
                                   "system_fingerprint": None, "choices": choices}
        if self.include_usage:  # as OpenAI: null on every chunk but the last one
            payload["usage"] = usage
        return sse_event(payload)


@dataclass(frozen=True)
class SSEFraming:
    """The generation core's Framing for OpenAI streams. `usage_of(num_completion_tokens)` gives the
    usage object of the last chunk."""

    header: StreamHeader
    usage_of: Callable[[int], dict[str, Any]]
    media_type: str = "text/event-stream"
    _text_offset: list[int] = field(default_factory=lambda: [0])  # characters streamed (text_offset)

    def opening(self) -> list[bytes]:
        shape = self.header.shape
        return [self.header.chunk([shape.choice("", None, role=True)])] if shape.is_chat else []

    def delta(self, text: str, *, reasoning: str = "", logprobs: Optional[list[TokenLogprob]] = None) -> bytes:
        if not reasoning and logprobs is None:
            return self.header.text_chunk(text)
        return self.header.chunk([self.header.shape.split_choice(text, reasoning, logprobs, self._text_offset)])

    def tool_call(self, event: ToolEvent) -> list[bytes]:
        """OpenAI's tool-call delta: the first of a call carries its id, type and name (arguments ""), the
        next ones argument fragments only; a completed call needs no chunk of its own."""
        if not isinstance(event, ToolCallDelta):
            return []
        call: dict[str, Any] = {"index": event.index}
        function: dict[str, Any] = {"arguments": event.arguments}
        if event.name is not None:
            call.update(id=event.id, type="function")
            function = {"name": event.name, "arguments": event.arguments}
        call["function"] = function
        choice = {"index": 0, "delta": {"tool_calls": [call]}, "logprobs": None, "finish_reason": None}
        return [self.header.chunk([choice])]

    def finish(self, reason: str, num_output_tokens: int) -> list[bytes]:
        shape = self.header.shape
        events = [self.header.chunk([shape.choice(None if shape.is_chat else "", reason)])]
        if self.header.include_usage:
            events.append(self.header.chunk([], self.usage_of(num_output_tokens)))
        return events

    def error(self, error: ServeError) -> bytes:
        return sse_event(error.to_openai())

    def closing(self) -> list[bytes]:
        return [DONE]


def stream_events(outputs: AsyncIterator[StepOutput], header: StreamHeader,
                  usage_of: Callable[[int], dict[str, Any]]) -> AsyncIterator[bytes]:
    """The SSE byte stream of one request's outputs; errors after the first byte become an error event."""
    return framed_events(outputs, SSEFraming(header, usage_of), header.request_id)
