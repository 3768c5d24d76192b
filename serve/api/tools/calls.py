"""A parsed tool call and the events a streaming parser emits while reading one."""
from __future__ import annotations

import uuid
from dataclasses import dataclass

CALL_ID_PREFIX = "call_"


def new_call_id() -> str:
    """An id in OpenAI's shape: `call_` and 24 hex digits."""
    return CALL_ID_PREFIX + uuid.uuid4().hex[:24]


@dataclass(frozen=True)
class ToolCall:
    """One function call: `arguments` is JSON text, as OpenAI sends it."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ToolCallDelta:
    """Part of call `index`: the first delta of a call carries its id and name (arguments may be empty),
    later ones carry only argument text, in order; joined they make the call's `arguments`."""

    index: int
    arguments: str = ""
    id: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class ToolCallDone:
    """Call `index` is complete (dialects that send whole calls, like Ollama's, send it now)."""

    index: int
    call: ToolCall


ToolEvent = ToolCallDelta | ToolCallDone
