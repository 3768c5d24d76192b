"""OpenAI's Responses answers (the Responses dialect's framing): the response object, and a streamed
response as its server-sent events, in the order OpenAI sends them:

    response.created -> response.in_progress -> response.output_item.added -> response.content_part.added
    -> response.output_text.delta ... -> response.output_text.done -> response.content_part.done
    -> response.output_item.done -> response.completed (response.incomplete when max_output_tokens cut it)

The output is a list of items, each with its own output_index: a reasoning model's thinking as a
`reasoning` item (its reasoning_text streamed as response.reasoning_text.delta), the assistant message,
then one `function_call` item per tool call (response.function_call_arguments.delta / .done). An item
is added when its first delta comes and done when the next one starts or the response ends; when the
first item's kind is known up front (plain text), it is added at once.

Every event carries a `sequence_number`. A failure after the first byte is an `error` event. Events are
plain dicts encoded here: one is built per generated token, and pydantic would only slow that path down.
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from serve.api.generation import Completion, Generation
from serve.api.responses.protocol import ResponsesRequest
from serve.api.tools.calls import ToolCall, ToolCallDelta, ToolEvent
from serve.errors import ServeError

MEDIA_TYPE = "text/event-stream"
# How each kind of output item streams: its content part's type and the prefix of its text events.
PARTS = {"message": ("output_text", "response.output_text"), "reasoning": ("reasoning_text", "response.reasoning_text")}
ID_PREFIXES = {"message": "msg", "reasoning": "rs", "function_call": "fc"}


def sse_event(payload: dict[str, Any]) -> bytes:
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"event: {payload['type']}\ndata: {data}\n\n".encode()


def output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def content_part(kind: str, text: str) -> dict[str, Any]:
    return output_text(text) if kind == "message" else {"type": "reasoning_text", "text": text}


def new_item_id(kind: str) -> str:
    return f"{ID_PREFIXES[kind]}_{uuid.uuid4().hex}"


def output_item(kind: str, item_id: str, status: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    if kind == "reasoning":
        return {"id": item_id, "type": "reasoning", "status": status, "summary": [], "content": content,
                "encrypted_content": None}
    return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": content}


def function_call_item(item_id: str, status: str, call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": item_id, "type": "function_call", "status": status, "call_id": call_id, "name": name,
            "arguments": arguments}


@dataclass(frozen=True)
class ResponseDraft:
    """What one response object is made of; `response()` renders it at any point of its life."""

    response_id: str
    model: str
    body: ResponsesRequest
    generation: Generation
    created_at: int = field(default_factory=lambda: int(time.time()))

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
                "output": output, "parallel_tool_calls": body.parallel_tool_calls is not False,
                "previous_response_id": body.previous_response_id,
                "reasoning": {"effort": None, "summary": None}, "store": body.store,
                "temperature": 1.0 if body.temperature is None else body.temperature,
                "text": {"format": self.text_format()}, "tool_choice": self.tool_choice(),
                "tools": [tool.model_dump(exclude_none=True) for tool in body.tools or []],
                "top_p": 1.0 if body.top_p is None else body.top_p, "truncation": "disabled",
                "usage": usage, "user": body.user, "metadata": body.metadata or {}}

    def text_format(self) -> dict[str, Any]:
        text_format = self.body.text.format if self.body.text is not None else None
        return text_format.model_dump(by_alias=True, exclude_none=True) if text_format else {"type": "text"}

    def tool_choice(self) -> Any:
        choice = self.body.tool_choice
        return choice.model_dump() if hasattr(choice, "model_dump") else choice or "auto"

    def finished(self, reason: str, output: list[dict[str, Any]], num_output_tokens: int) -> dict[str, Any]:
        """The final response: `length` (max_output_tokens or the context) makes it incomplete."""
        is_cut = reason == "length"
        return self.response("incomplete" if is_cut else "completed", output, self.usage(num_output_tokens),
                             "max_output_tokens" if is_cut else None)


def item_status(reason: str) -> str:
    return "incomplete" if reason == "length" else "completed"


def collected_items(reason: str, text: str, reasoning: str,
                    calls: tuple[ToolCall, ...] = ()) -> list[dict[str, Any]]:
    """A collected answer's output, as its stream would have given it: its reasoning (when there was some),
    its message (unless the output was cut before the reasoning ended, or is only calls), then its calls."""
    status = item_status(reason)
    items = []
    if reasoning:
        items.append(output_item("reasoning", new_item_id("reasoning"), "completed" if text else status,
                                 [content_part("reasoning", reasoning)]))
    if text or not (reasoning or calls):
        items.append(output_item("message", new_item_id("message"), status, [output_text(text)]))
    return [*items, *(function_call_item(new_item_id("function_call"), "completed", call.id, call.name,
                                         call.arguments) for call in calls)]


@dataclass
class _OpenItem:
    kind: str
    item_id: str
    output_index: int
    parts: list[str] = field(default_factory=list)
    call: ToolCallDelta | None = None  # a function_call's first delta: its call id and name

    @property
    def text(self) -> str:
        return "".join(self.parts)


class ResponseFraming:
    """The generation core's Framing for Responses streams; `on_finished(response, text)` gets the final
    response and its message's text (to store it)."""

    media_type = MEDIA_TYPE

    def __init__(self, draft: ResponseDraft, on_finished: Callable[[dict[str, Any], str], None]):
        self.draft = draft
        self.on_finished = on_finished
        self._sequence_number = 0
        self._open: _OpenItem | None = None
        self._done: list[dict[str, Any]] = []  # the output items finished so far
        self._message_text = ""

    def _event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, **fields, "sequence_number": self._sequence_number}
        self._sequence_number += 1
        return sse_event(payload)

    def _where(self, item: _OpenItem) -> dict[str, Any]:
        return {"item_id": item.item_id, "output_index": item.output_index, "content_index": 0}

    def _add(self, kind: str) -> list[bytes]:
        """Finish the open item, add one of `kind`."""
        events = self._close("completed")
        item = self._open = _OpenItem(kind, new_item_id(kind), len(self._done))
        return [*events, self._event("response.output_item.added", output_index=item.output_index,
                                     item=output_item(kind, item.item_id, "in_progress", [])),
                self._event("response.content_part.added", **self._where(item), part=content_part(kind, ""))]

    def _close(self, status: str) -> list[bytes]:
        item = self._open
        if item is None:
            return []
        self._open = None
        if item.call is not None:
            return self._close_call(item, status)
        text, (_, prefix) = item.text, PARTS[item.kind]
        if item.kind == "message":
            self._message_text = text
        done = output_item(item.kind, item.item_id, status, [content_part(item.kind, text)])
        self._done.append(done)
        extra = {"logprobs": []} if item.kind == "message" else {}
        return [self._event(f"{prefix}.done", **self._where(item), text=text, **extra),
                self._event("response.content_part.done", **self._where(item), part=content_part(item.kind, text)),
                self._event("response.output_item.done", output_index=item.output_index, item=done)]

    def _close_call(self, item: _OpenItem, status: str) -> list[bytes]:
        call = item.call
        done = function_call_item(item.item_id, status, call.id or "", call.name or "", item.text)
        self._done.append(done)
        return [self._event("response.function_call_arguments.done", item_id=item.item_id,
                            output_index=item.output_index, name=call.name, arguments=item.text),
                self._event("response.output_item.done", output_index=item.output_index, item=done)]

    def tool_call(self, event: ToolEvent) -> list[bytes]:
        """A call's first delta adds its function_call item; its argument text streams as deltas."""
        if not isinstance(event, ToolCallDelta):
            return []  # complete: its item is done when the next starts or the response ends
        events = []
        if event.name is not None:
            events = self._close("completed")
            item = self._open = _OpenItem("function_call", new_item_id("function_call"), len(self._done), call=event)
            events.append(self._event("response.output_item.added", output_index=item.output_index,
                                      item=function_call_item(item.item_id, "in_progress", event.id or "",
                                                              event.name, "")))
        if event.arguments and self._open is not None:
            self._open.parts.append(event.arguments)
            events.append(self._event("response.function_call_arguments.delta", item_id=self._open.item_id,
                                      output_index=self._open.output_index, delta=event.arguments))
        return events

    def _text(self, kind: str, text: str) -> list[bytes]:
        events = self._add(kind) if self._open is None or self._open.kind != kind else []
        self._open.parts.append(text)
        extra = {"logprobs": []} if kind == "message" else {}
        return [*events, self._event(f"{PARTS[kind][1]}.delta", **self._where(self._open), delta=text, **extra)]

    def opening(self) -> list[bytes]:
        draft = self.draft
        events = [self._event("response.created", response=draft.response("in_progress", [])),
                  self._event("response.in_progress", response=draft.response("in_progress", []))]
        generation = draft.generation
        if generation.splitter is None and generation.tool_parser is None:  # a message from the first token
            events.extend(self._add("message"))
        return events

    def delta(self, text: str, reasoning: str = "", logprobs: Any = None) -> bytes:
        events = self._text("reasoning", reasoning) if reasoning else []
        if text:
            events.extend(self._text("message", text))
        return b"".join(events)

    def finish(self, reason: str, num_output_tokens: int) -> list[bytes]:
        events = self._add("message") if not self._done and self._open is None else []  # always a message
        events.extend(self._close(item_status(reason)))
        response = self.draft.finished(reason, self._done, num_output_tokens)
        self.on_finished(response, self._message_text)
        final = "response.completed" if response["status"] == "completed" else "response.incomplete"
        return [*events, self._event(final, response=response)]

    def error(self, error: ServeError) -> bytes:
        return self._event("error", code=error.code or error.error_type, message=error.message, param=error.param)

    def closing(self) -> list[bytes]:
        return []

    def collected(self, completion: Completion) -> dict[str, Any]:
        items = collected_items(completion.finish_reason, completion.text, completion.reasoning,
                                completion.tool_calls)
        response = self.draft.finished(completion.finish_reason, items, completion.num_output_tokens)
        self.on_finished(response, completion.text)
        return response
