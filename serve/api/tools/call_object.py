"""One tool call read as the model writes it: the name as soon as it is complete, then the arguments
object in fragments as they arrive.

Two shapes: a call object `{"name": "f", "arguments": {...}}` ("parameters" for Llama 3), and a call whose
name came first in the format's own markup (Mistral's `f[ARGS]{...}`), where only the arguments follow.
An object with its keys in another order, or with arguments that are not an object, is read whole and
parsed at its end; one without a name is not a call (the parser gives its text back as content).
"""
from __future__ import annotations

import json
import re

from serve.api.tools.calls import ToolCall, ToolCallDelta, ToolCallDone, ToolEvent
from serve.api.tools.json_scan import JsonEnd

_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"(?:arguments|parameters)"\s*:\s*')


class ArgumentsStream:
    """The arguments value of a call: streamed as it arrives when it is a JSON object."""

    def __init__(self) -> None:
        self.text = ""  # what was streamed
        self.is_object: bool | None = None  # unknown until its first character
        self.is_complete = False
        self._end = JsonEnd()

    def feed(self, text: str) -> tuple[str, int | None]:
        """The fragment to stream, and the index in `text` just past the arguments when they ended."""
        if self.is_complete:
            return "", 0
        start = 0
        if self.is_object is None:
            start = len(text) - len(text.lstrip())
            if start == len(text):
                return "", None
            self.is_object = text[start] == "{"
        if not self.is_object:
            return "", None
        end = self._end.feed(text[start:])
        fragment = text[start:] if end is None else text[start:start + end]
        self.text += fragment
        if end is None:
            return fragment, None
        self.is_complete = True
        return fragment, start + end


class CallObject:
    """`{"name": ..., "arguments": ...}`, fed chunk by chunk until its closing brace."""

    def __init__(self, index: int, call_id: str):
        self.index = index
        self.call_id = call_id
        self.name: str | None = None
        self.raw_text = ""  # everything read, for giving an invalid object back as content
        self.is_invalid = False
        self._outer = JsonEnd()
        self._arguments: ArgumentsStream | None = None

    def feed(self, text: str) -> tuple[list[ToolEvent], int | None]:
        """Events for `text`, and the index just past the object once it closed (None: still open)."""
        end = self._outer.feed(text)
        used = text if end is None else text[:end]
        self.raw_text += used
        events: list[ToolEvent] = []
        if self._arguments is None:
            head = _HEAD.match(self.raw_text)
            if head is not None:
                self.name = json.loads(f'"{head.group(1)}"')
                events.append(ToolCallDelta(self.index, id=self.call_id, name=self.name))
                self._arguments = ArgumentsStream()
                used = self.raw_text[head.end():]
        if self._arguments is not None and used:
            fragment, _ = self._arguments.feed(used)
            if fragment:
                events.append(ToolCallDelta(self.index, arguments=fragment))
        if end is not None:
            events += self._completed()
        return events, end

    def _completed(self) -> list[ToolEvent]:
        if self._arguments is not None and self._arguments.is_complete:
            return [ToolCallDone(self.index, ToolCall(self.call_id, self.name or "", self._arguments.text))]
        parsed = _parse_call(self.raw_text)
        if parsed is None:
            self.is_invalid = self.name is None
            if self.is_invalid:
                return []
            parsed = (self.name, "{}")
        name, arguments = parsed
        events: list[ToolEvent] = []
        if self.name is None:
            self.name = name
            events.append(ToolCallDelta(self.index, id=self.call_id, name=name))
        events.append(ToolCallDelta(self.index, arguments=arguments))
        return events + [ToolCallDone(self.index, ToolCall(self.call_id, name, arguments))]

    def truncated(self) -> list[ToolEvent] | None:
        """The output ended inside the object: the call as far as it got, or None when not even its name
        was complete (then it is content)."""
        if self.name is None:
            return None
        arguments = self._arguments.text if self._arguments is not None else ""
        return [ToolCallDone(self.index, ToolCall(self.call_id, self.name, arguments))]


class NamedCall:
    """A call whose name the format's markup already gave: only the arguments object follows."""

    def __init__(self, index: int, call_id: str, name: str):
        self.index = index
        self.call_id = call_id
        self.name = name
        self.raw_text = ""
        self.is_invalid = False
        self._arguments = ArgumentsStream()

    def opening(self) -> list[ToolEvent]:
        return [ToolCallDelta(self.index, id=self.call_id, name=self.name)]

    def feed(self, text: str) -> tuple[list[ToolEvent], int | None]:
        fragment, end = self._arguments.feed(text)
        self.raw_text += text if end is None else text[:end]
        if self._arguments.is_object is False:  # not an object: the arguments are empty, the rest content
            self._arguments.is_complete = True
            return [ToolCallDone(self.index, ToolCall(self.call_id, self.name, "{}"))], 0
        events: list[ToolEvent] = [ToolCallDelta(self.index, arguments=fragment)] if fragment else []
        if end is not None:
            events.append(ToolCallDone(self.index, ToolCall(self.call_id, self.name, self._arguments.text)))
        return events, end

    def truncated(self) -> list[ToolEvent] | None:
        return [ToolCallDone(self.index, ToolCall(self.call_id, self.name, self._arguments.text))]


def _parse_call(text: str) -> tuple[str, str] | None:
    """(name, arguments as JSON text) of a whole call object; None when it is not one."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        return value["name"], arguments
    return value["name"], json.dumps(arguments, ensure_ascii=False)
