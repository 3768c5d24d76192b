"""Generated text -> content and tool calls, chunk by chunk, in any of the formats (formats.py).

`feed` takes each piece of text as it is generated and returns events in order: plain strings (content
to show) and ToolCallDelta / ToolCallDone. A marker split across chunks (`<tool_` + `call>`) is held back
until it is known to be one or not, so no marker ever leaks into the content. Whitespace around calls is
dropped. Calls past `max_calls` (parallel_tool_calls false) are read but not reported.
"""
from __future__ import annotations

from typing import Callable

from serve.api.tools.call_object import CallObject, NamedCall
from serve.api.tools.calls import ToolCall, ToolCallDone, ToolEvent, new_call_id
from serve.api.tools.formats import ToolFormat

Event = str | ToolEvent


def _held_suffix(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that could be the start of a marker."""
    longest = 0
    for marker in markers:
        for size in range(min(len(marker) - 1, len(text)), longest, -1):
            if text.endswith(marker[:size]):
                longest = size
                break
    return longest


class ToolCallParser:
    def __init__(self, fmt: ToolFormat, *, max_calls: int | None = None,
                 new_id: Callable[[], str] = new_call_id):
        self.format = fmt
        self.calls: list[ToolCall] = []
        self._max_calls = max_calls
        self._new_id = new_id
        self._pending = ""  # text not yet turned into events
        self._held_space = ""  # whitespace-only content, dropped if a call follows
        self._has_text = False  # anything but whitespace seen (Llama 3 calls start bare only at the start)
        self._call: CallObject | NamedCall | None = None
        self._marker = ""  # the marker that opened the current call, given back if it is not one
        self._state = self._content
        self._in_list = False  # inside a list of calls: [{...}, ...] (Mistral, Phi-4-mini)

    # -- public ------------------------------------------------------------------------------------

    def feed(self, text: str) -> list[Event]:
        self._pending += text
        events: list[Event] = []
        while self._pending and self._state(events):
            pass
        return events

    def finish(self) -> list[Event]:
        """The output ended: what was held back, and a call cut short as far as it got."""
        events: list[Event] = []
        if self._call is not None:
            cut = self._call.truncated()
            if cut is None:
                self._give_back(events)
            else:
                self._report(cut, events)
            self._call = None
        elif self._state == self._content and not self.calls:
            self._emit_content(self._pending, events)  # after calls, a held partial marker is a cut call
        elif self._state == self._head:
            self._emit_content(self._marker + self._pending, events)
        if self._held_space and not self.calls:
            events.append(self._held_space)
        self._pending = self._held_space = ""
        return events

    # -- states: each consumes from self._pending; False when it needs more text -----------------------

    def _content(self, events: list[Event]) -> bool:
        text = self._pending
        list_end = self.format.list_end_marker
        if list_end and self.calls and not self._has_text:  # what may close a list of calls is not content
            stripped = text.lstrip()
            if stripped.startswith(list_end):
                self._pending = stripped[len(list_end):]
                return True
            if list_end.startswith(stripped):
                return False
        if self.format.can_start_bare and not self._has_text:
            stripped = text.lstrip()
            if not stripped:
                return False
            if stripped[0] == "{":
                self._pending, self._marker = stripped, ""
                self._start_object()
                return True
        found = [(text.find(m), m) for m in self.format.start_markers if m in text]
        if found:
            position, marker = min(found)
            self._emit_content(text[:position], events)
            # The whitespace before the marker goes with it: dropped before a call, given back if it is none.
            self._pending, self._marker = text[position + len(marker):], self._held_space + marker
            self._held_space = ""
            if self.format.opens_list or self.format.args_marker:
                self._state = self._head
            else:
                self._start_object()
            return True
        keep = _held_suffix(text, self.format.start_markers)
        self._emit_content(text[:len(text) - keep], events)
        self._pending = text[len(text) - keep:]
        return False

    def _reading_call(self, events: list[Event]) -> bool:
        assert self._call is not None
        call_events, end = self._call.feed(self._pending)
        self._report(call_events, events)
        if end is None:
            self._pending = ""
            return False
        self._pending = self._pending[end:]
        if self._call.is_invalid:
            self._give_back(events)
            self._state = self._content
        else:
            self._state = self._after_call
        self._call = None
        return True

    def _after_call(self, events: list[Event]) -> bool:
        rest = self._pending.lstrip()
        if not rest:
            self._pending = ""
            return False
        separator = self._separator(rest)
        if separator.startswith(rest) and rest != separator:
            self._pending = rest
            return False  # maybe the start of the separator
        self._pending, self._state = rest, self._content
        if separator and rest.startswith(separator):
            self._pending = rest[len(separator):]
            if separator in (";", ","):
                self._state = self._next_object
        self._in_list = self._in_list and separator == ","
        return True

    def _separator(self, rest: str) -> str:
        """What may follow a call: hermes' end marker, Llama 3's ';', or in a list ',' or ']'."""
        if self.format.end_marker:
            return self.format.end_marker
        if self.format.can_start_bare:
            return ";"
        if self._in_list:
            return "]" if rest.startswith("]") else ","
        return ""

    def _next_object(self, events: list[Event]) -> bool:
        rest = self._pending.lstrip()
        if not rest:
            self._pending = ""
            return False
        self._pending, self._marker = rest, ""
        if rest[0] == "{":
            self._start_object()
        else:
            self._state = self._content
        return True

    def _head(self, events: list[Event]) -> bool:
        """After a marker: a list of calls, or NAME + the format's args marker + the arguments."""
        rest = self._pending.lstrip()
        if not rest:
            self._pending = ""
            return False
        if rest[0] == "[" and self.format.opens_list:
            self._pending, self._in_list = rest[1:], True
            self._state = self._next_object
            return True
        args_marker = self.format.args_marker
        position = rest.find(args_marker) if args_marker else -1
        if position < 0:
            if not args_marker:  # not a list: the marker was text
                self._emit_content(self._marker + self._pending, events)
                self._pending, self._state = "", self._content
                return True
            self._pending = rest
            return False
        name = rest[:position].strip()
        self._pending = rest[position + len(args_marker):]
        self._call = NamedCall(len(self.calls), self._new_id(), name)
        self._report(self._call.opening(), events)
        self._state = self._reading_call
        return True

    # -- helpers -----------------------------------------------------------------------------------------

    def _start_object(self) -> None:
        self._call = CallObject(len(self.calls), self._new_id())
        self._state = self._reading_call

    def _emit_content(self, text: str, events: list[Event]) -> None:
        """Content, except its trailing whitespace, held until more content follows (a call drops it)."""
        text = self._held_space + text
        body = text.rstrip()
        self._held_space = text[len(body):]
        if body:
            self._has_text = True
            events.append(body)

    def _give_back(self, events: list[Event]) -> None:
        """A marker that did not open a call: its text is content after all."""
        assert self._call is not None
        self._emit_content(self._marker + self._call.raw_text, events)

    def _report(self, call_events: list[ToolEvent], events: list[Event]) -> None:
        for event in call_events:
            if isinstance(event, ToolCallDone):
                if self._max_calls is None or len(self.calls) < self._max_calls:
                    events.append(event)
                    self.calls.append(event.call)
            elif self._max_calls is None or event.index < self._max_calls:
                events.append(event)


def parse_all(fmt: ToolFormat, text: str) -> tuple[str, list[ToolCall]]:
    """A whole output at once: its content and its calls."""
    parser = ToolCallParser(fmt)
    events = parser.feed(text) + parser.finish()
    return "".join(e for e in events if isinstance(e, str)), parser.calls
