"""OpenAI's Responses answers (the Responses dialect's framing): the response object, and a streamed
response as its server-sent events, in the order OpenAI sends them:

    response.created -> response.in_progress -> response.output_item.added -> response.content_part.added
    -> response.output_text.delta ... -> response.output_text.done -> response.content_part.done
    -> response.output_item.done -> response.completed (response.incomplete when max_output_tokens cut it)

Every event carries a `sequence_number`. A failure after the first byte is an `error` event. Events are
plain dicts encoded here: one is built per generated token, and pydantic would only slow that path down.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from serve.api.generation import Completion, Generation
from serve.api.responses.protocol import ResponsesRequest
from serve.errors import ServeError

MEDIA_TYPE = "text/event-stream"
OUTPUT_INDEX = 0  # the output is one assistant message ...
CONTENT_INDEX = 0  # ... with one output_text part


def sse_event(payload: dict[str, Any]) -> bytes:
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"event: {payload['type']}\ndata: {data}\n\n".encode()


def output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


@dataclass(frozen=True)
class ResponseDraft:
    """What one response object is made of; `response()` renders it at any point of its life."""

    response_id: str
    message_id: str
    model: str
    body: ResponsesRequest
    generation: Generation
    created_at: int = field(default_factory=lambda: int(time.time()))

    def message(self, status: str, content: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.message_id, "type": "message", "status": status, "role": "assistant", "content": content}

    def usage(self, num_output_tokens: int) -> dict[str, Any]:
        stream = self.generation.stream
        return {"input_tokens": stream.num_prompt_tokens,
                "input_tokens_details": {"cached_tokens": stream.num_cached_tokens},
                "output_tokens": num_output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": stream.num_prompt_tokens + num_output_tokens}

    def response(self, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None = None,
                 incomplete_reason: str | None = None) -> dict[str, Any]:
        body = self.body
        return {"id": self.response_id, "object": "response", "created_at": self.created_at, "status": status,
                "completed_at": int(time.time()) if status == "completed" else None,
                "error": None, "incomplete_details": {"reason": incomplete_reason} if incomplete_reason else None,
                "instructions": body.instructions, "max_output_tokens": body.max_output_tokens, "model": self.model,
                "output": output, "parallel_tool_calls": True, "previous_response_id": body.previous_response_id,
                "reasoning": {"effort": None, "summary": None}, "store": body.store,
                "temperature": 1.0 if body.temperature is None else body.temperature,
                "text": {"format": {"type": "text"}}, "tool_choice": "auto", "tools": [],
                "top_p": 1.0 if body.top_p is None else body.top_p, "truncation": "disabled",
                "usage": usage, "user": body.user, "metadata": body.metadata or {}}

    def finished(self, reason: str, text: str, num_output_tokens: int) -> dict[str, Any]:
        """The final response: `length` (max_output_tokens or the context) makes it incomplete."""
        is_cut = reason == "length"
        status = "incomplete" if is_cut else "completed"
        message = self.message(status, [output_text(text)])
        return self.response(status, [message], self.usage(num_output_tokens),
                             "max_output_tokens" if is_cut else None)


class ResponseFraming:
    """The generation core's Framing for Responses streams; `on_finished(response, text)` gets the final
    response (to store it)."""

    media_type = MEDIA_TYPE

    def __init__(self, draft: ResponseDraft, on_finished: Callable[[dict[str, Any], str], None]):
        self.draft = draft
        self.on_finished = on_finished
        self._sequence_number = 0
        self._parts: list[str] = []

    def _event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, **fields, "sequence_number": self._sequence_number}
        self._sequence_number += 1
        return sse_event(payload)

    def _where(self) -> dict[str, Any]:
        return {"item_id": self.draft.message_id, "output_index": OUTPUT_INDEX, "content_index": CONTENT_INDEX}

    def opening(self) -> list[bytes]:
        draft = self.draft
        return [self._event("response.created", response=draft.response("in_progress", [])),
                self._event("response.in_progress", response=draft.response("in_progress", [])),
                self._event("response.output_item.added", output_index=OUTPUT_INDEX,
                            item=draft.message("in_progress", [])),
                self._event("response.content_part.added", **self._where(), part=output_text(""))]

    def delta(self, text: str) -> bytes:
        self._parts.append(text)
        return self._event("response.output_text.delta", **self._where(), delta=text, logprobs=[])

    def finish(self, reason: str, num_output_tokens: int) -> list[bytes]:
        text = "".join(self._parts)
        response = self.draft.finished(reason, text, num_output_tokens)
        self.on_finished(response, text)
        final = "response.completed" if response["status"] == "completed" else "response.incomplete"
        return [self._event("response.output_text.done", **self._where(), text=text, logprobs=[]),
                self._event("response.content_part.done", **self._where(), part=output_text(text)),
                self._event("response.output_item.done", output_index=OUTPUT_INDEX, item=response["output"][0]),
                self._event(final, response=response)]

    def error(self, error: ServeError) -> bytes:
        return self._event("error", code=error.code or error.error_type, message=error.message, param=error.param)

    def closing(self) -> list[bytes]:
        return []

    def collected(self, completion: Completion) -> dict[str, Any]:
        response = self.draft.finished(completion.finish_reason, completion.text, completion.num_output_tokens)
        self.on_finished(response, completion.text)
        return response
