"""Anthropic's answers (the Anthropic dialect's framing): a streamed message as Anthropic's server-sent
events, in the order Anthropic sends them, or the whole message as one JSON body.

    message_start -> content_block_start -> ping -> content_block_delta ... -> content_block_stop
    -> message_delta (stop_reason, stop_sequence, usage) -> message_stop

A failure after the first byte is an `error` event (and the stream ends there). Events are plain dicts
encoded here: one is built per generated token, and pydantic would only slow that path down.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from serve.api.anthropic.errors import error_object
from serve.api.generation import Completion, Generation
from serve.errors import ServeError

MEDIA_TYPE = "text/event-stream"
# Our finish reasons as Anthropic's stop reasons; a matched stop string is "stop_sequence".
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens"}
TEXT_BLOCK_INDEX = 0  # the answer is one text block


def sse_event(name: str, payload: dict[str, Any]) -> bytes:
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"event: {name}\ndata: {data}\n\n".encode()


def stop_reason(finish_reason: str, stop_string: str | None) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) as Anthropic reports them."""
    if stop_string is not None:
        return "stop_sequence", stop_string
    return STOP_REASONS.get(finish_reason, "end_turn"), None


def usage(generation: Generation, num_output_tokens: int) -> dict[str, int]:
    """Anthropic's counts: input_tokens excludes the prompt tokens read from the (prefix) cache."""
    stream = generation.stream
    num_cached = stream.num_cached_tokens
    return {"input_tokens": stream.num_prompt_tokens - num_cached, "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": num_cached, "output_tokens": num_output_tokens}


@dataclass(frozen=True)
class MessageFraming:
    """The generation core's Framing for Anthropic streams, and the body of a collected message."""

    generation: Generation
    model: str
    media_type: str = MEDIA_TYPE

    def message(self, content: list[dict[str, Any]], reason: str | None, stop_sequence: str | None,
                num_output_tokens: int) -> dict[str, Any]:
        return {"id": self.generation.request_id, "type": "message", "role": "assistant", "model": self.model,
                "content": content, "stop_reason": reason, "stop_sequence": stop_sequence,
                "usage": usage(self.generation, num_output_tokens)}

    def opening(self) -> list[bytes]:
        start = {"type": "message_start", "message": self.message([], None, None, 0)}
        block = {"type": "content_block_start", "index": TEXT_BLOCK_INDEX,
                 "content_block": {"type": "text", "text": ""}}
        return [sse_event("message_start", start), sse_event("content_block_start", block),
                sse_event("ping", {"type": "ping"})]

    def delta(self, text: str) -> bytes:
        return sse_event("content_block_delta", {"type": "content_block_delta", "index": TEXT_BLOCK_INDEX,
                                                 "delta": {"type": "text_delta", "text": text}})

    def finish(self, reason: str, num_output_tokens: int) -> list[bytes]:
        anthropic_reason, stop_sequence = stop_reason(reason, self.generation.stop_string)
        delta = {"type": "message_delta", "delta": {"stop_reason": anthropic_reason, "stop_sequence": stop_sequence},
                 "usage": usage(self.generation, num_output_tokens)}
        return [sse_event("content_block_stop", {"type": "content_block_stop", "index": TEXT_BLOCK_INDEX}),
                sse_event("message_delta", delta), sse_event("message_stop", {"type": "message_stop"})]

    def error(self, error: ServeError) -> bytes:
        return sse_event("error", error_object(error))

    def closing(self) -> list[bytes]:
        return []

    def collected(self, completion: Completion) -> dict[str, Any]:
        anthropic_reason, stop_sequence = stop_reason(completion.finish_reason, self.generation.stop_string)
        return self.message([{"type": "text", "text": completion.text}], anthropic_reason, stop_sequence,
                            completion.num_output_tokens)
