"""Server-sent events for streamed completions, in the order OpenAI sends them:

    role chunk (chat only) -> content deltas -> a chunk with finish_reason
    -> a usage chunk with empty choices (when stream_options.include_usage) -> data: [DONE]

Chunks are plain dicts: one is built per generated token, and pydantic would only slow that path down.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

from serve.api.streaming import ClosingStreamingResponse
from serve.errors import ServeError
from serve.sequence import FinishReason, StepOutput

logger = logging.getLogger("serve.api")

DONE = b"data: [DONE]\n\n"


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


CHAT_CHUNK = ChunkShape("chat.completion.chunk", is_chat=True)
TEXT_CHUNK = ChunkShape("text_completion", is_chat=False)


@dataclass(frozen=True)
class StreamHeader:
    request_id: str
    model: str
    created: int
    shape: ChunkShape
    include_usage: bool

    def chunk(self, choices: list[dict[str, Any]], usage: dict | None = None) -> bytes:
        payload: dict[str, Any] = {"id": self.request_id, "object": self.shape.object_name,
                                   "created": self.created, "model": self.model,
                                   "system_fingerprint": None, "choices": choices}
        if self.include_usage:  # as OpenAI: null on every chunk but the last one
            payload["usage"] = usage
        return sse_event(payload)


async def stream_events(outputs: AsyncIterator[StepOutput], header: StreamHeader,
                        usage_of: Callable[[int], dict[str, Any]]) -> AsyncIterator[bytes]:
    """The SSE byte stream of one request; errors after the first byte become an error event.
    `usage_of(num_completion_tokens)` gives the usage object of the last chunk."""
    shape = header.shape
    num_completion_tokens = 0
    try:
        if shape.is_chat:
            yield header.chunk([shape.choice("", None, role=True)])
        async for output in outputs:
            num_completion_tokens += output.num_new_tokens
            if output.text:
                yield header.chunk([shape.choice(output.text, None)])
            if output.finish_reason is not None:
                yield header.chunk([shape.choice(None if shape.is_chat else "", finish_reason(output))])
                break
        if header.include_usage:
            yield header.chunk([], usage_of(num_completion_tokens))
    except ServeError as exc:
        yield sse_event(exc.to_openai())
    except Exception:  # noqa: BLE001 - the client gets a generic error, the log the details
        logger.exception("request %s failed while streaming", header.request_id)
        yield sse_event({"error": {"message": "internal server error; see the server log",
                                   "type": "server_error", "param": None, "code": "internal_error"}})
    yield DONE


def finish_reason(output: StepOutput) -> str:
    reason = output.finish_reason
    if reason == FinishReason.ABORT:  # only the server aborts a request whose client is still there
        raise ServeError(f"generation was aborted: {output.error or 'the server is shutting down'}", code="aborted")
    return reason.value if isinstance(reason, FinishReason) else str(reason)


class EventStreamResponse(ClosingStreamingResponse):
    """A text/event-stream response of SSE byte events (stream_events)."""

    media_type = "text/event-stream"
