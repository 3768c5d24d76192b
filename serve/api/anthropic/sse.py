"""Anthropic's answers (the Anthropic dialect's framing): a streamed message as Anthropic's server-sent
events, in the order Anthropic sends them, or the whole message as one JSON body.

    message_start -> content_block_start -> ping -> content_block_delta ... -> content_block_stop
    -> message_delta (stop_reason, stop_sequence, usage) -> message_stop

The content is a list of blocks, each with its own index: a reasoning model's thinking (thinking_delta),
the text (text_delta), then one tool_use block per tool call (its input streamed as input_json_delta). A
block starts when its first delta comes and stops when the next one starts or the message ends; when the
first block's kind is known up front (plain text), it starts before `ping`, as Anthropic's own streams do.

A failure after the first byte is an `error` event (and the stream ends there). Events are plain dicts
encoded here: one is built per generated token, and pydantic would only slow that path down.
"""
from __future__ import annotations

import json
from typing import Any

from serve.api.anthropic.errors import error_object
from serve.api.generation import Completion, Generation
from serve.api.tools.calls import ToolCall, ToolCallDelta, ToolEvent
from serve.errors import ServeError

MEDIA_TYPE = "text/event-stream"
# Our finish reasons as Anthropic's stop reasons; a matched stop string is "stop_sequence".
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}
EMPTY_BLOCKS = {"text": {"type": "text", "text": ""},
                "thinking": {"type": "thinking", "thinking": "", "signature": ""}}


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


def tool_use_block(call: ToolCall) -> dict[str, Any]:
    """A call as Anthropic's block; a call cut by max_tokens (its stop_reason says so) has no complete
    input, and Anthropic's input is always an object: it is then empty."""
    try:
        arguments = json.loads(call.arguments or "{}")
    except ValueError:
        arguments = {}
    return {"type": "tool_use", "id": call.id, "name": call.name,
            "input": arguments if isinstance(arguments, dict) else {}}


def content_blocks(text: str, thinking: str = "", calls: tuple[ToolCall, ...] = ()) -> list[dict[str, Any]]:
    """A collected answer's blocks: its thinking (when shown), its text (always one text block when there
    is nothing else, as Anthropic answers an empty output), then its tool calls."""
    blocks = [{"type": "thinking", "thinking": thinking, "signature": ""}] if thinking else []
    if text or not (blocks or calls):
        blocks.append({"type": "text", "text": text})
    return [*blocks, *(tool_use_block(call) for call in calls)]


class MessageFraming:
    """The generation core's Framing for Anthropic streams, and the body of a collected message.
    `shows_thinking` false leaves a reasoning model's thinking out of the answer."""

    media_type = MEDIA_TYPE

    def __init__(self, generation: Generation, model: str, *, shows_thinking: bool = True):
        self.generation = generation
        self.model = model
        self.shows_thinking = shows_thinking
        self._index = -1  # the open block's index; -1 before the first
        self._open_kind: str | None = None

    def message(self, content: list[dict[str, Any]], reason: str | None, stop_sequence: str | None,
                num_output_tokens: int) -> dict[str, Any]:
        return {"id": self.generation.request_id, "type": "message", "role": "assistant", "model": self.model,
                "content": content, "stop_reason": reason, "stop_sequence": stop_sequence,
                "usage": usage(self.generation, num_output_tokens)}

    def _start(self, block: dict[str, Any]) -> list[bytes]:
        """Stop the open block, start `block` at the next index."""
        events = self._stop()
        self._index += 1
        self._open_kind = block["type"]
        events.append(sse_event("content_block_start", {"type": "content_block_start", "index": self._index,
                                                        "content_block": block}))
        return events

    def _stop(self) -> list[bytes]:
        if self._open_kind is None:
            return []
        self._open_kind = None
        return [sse_event("content_block_stop", {"type": "content_block_stop", "index": self._index})]

    def _delta(self, kind: str, delta: dict[str, Any]) -> list[bytes]:
        events = self._start(dict(EMPTY_BLOCKS[kind])) if self._open_kind != kind else []
        events.append(sse_event("content_block_delta", {"type": "content_block_delta", "index": self._index,
                                                        "delta": delta}))
        return events

    def opening(self) -> list[bytes]:
        start = {"type": "message_start", "message": self.message([], None, None, 0)}
        events = [sse_event("message_start", start)]
        generation = self.generation
        if generation.splitter is None and generation.tool_parser is None:  # text from the first token
            events.extend(self._start(dict(EMPTY_BLOCKS["text"])))
        return [*events, sse_event("ping", {"type": "ping"})]

    def delta(self, text: str, reasoning: str = "", logprobs: Any = None) -> bytes:
        events = []
        if reasoning and self.shows_thinking:
            events.extend(self._delta("thinking", {"type": "thinking_delta", "thinking": reasoning}))
        if text:
            events.extend(self._delta("text", {"type": "text_delta", "text": text}))
        return b"".join(events)

    def tool_call(self, event: ToolEvent) -> list[bytes]:
        """A call's first delta starts its tool_use block; its argument text streams as input_json_delta."""
        if not isinstance(event, ToolCallDelta):
            return []  # the call is complete: its block stops when the next starts or the message ends
        events = []
        if event.name is not None:
            events = self._start({"type": "tool_use", "id": event.id, "name": event.name, "input": {}})
        if event.arguments:
            events.append(sse_event("content_block_delta", {
                "type": "content_block_delta", "index": self._index,
                "delta": {"type": "input_json_delta", "partial_json": event.arguments}}))
        return events

    def finish(self, reason: str, num_output_tokens: int) -> list[bytes]:
        events = self._start(dict(EMPTY_BLOCKS["text"])) if self._index < 0 else []  # never a message of no block
        anthropic_reason, stop_sequence = stop_reason(reason, self.generation.stop_string)
        delta = {"type": "message_delta", "delta": {"stop_reason": anthropic_reason, "stop_sequence": stop_sequence},
                 "usage": usage(self.generation, num_output_tokens)}
        return [*events, *self._stop(), sse_event("message_delta", delta),
                sse_event("message_stop", {"type": "message_stop"})]

    def error(self, error: ServeError) -> bytes:
        return sse_event("error", error_object(error))

    def closing(self) -> list[bytes]:
        return []

    def collected(self, completion: Completion) -> dict[str, Any]:
        anthropic_reason, stop_sequence = stop_reason(completion.finish_reason, self.generation.stop_string)
        thinking = completion.reasoning if self.shows_thinking else ""
        return self.message(content_blocks(completion.text, thinking, completion.tool_calls), anthropic_reason,
                            stop_sequence, completion.num_output_tokens)
