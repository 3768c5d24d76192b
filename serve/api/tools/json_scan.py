"""Where a JSON object or array ends, found incrementally as text arrives (strings and escapes
understood), without parsing it."""
from __future__ import annotations


class JsonEnd:
    """Feed the text of one JSON object or array, chunk by chunk; `feed` returns the index in the chunk
    just past the value's closing bracket, or None while it is still open. Leading whitespace is skipped."""

    def __init__(self) -> None:
        self.depth = 0
        self.is_started = False
        self._in_string = False
        self._escaped = False

    def feed(self, text: str) -> int | None:
        for index, char in enumerate(text):
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif char == "\\":
                    self._escaped = True
                elif char == '"':
                    self._in_string = False
            elif char == '"':
                self._in_string = True
            elif char in "{[":
                self.depth += 1
                self.is_started = True
            elif char in "}]":
                self.depth -= 1
                if self.depth <= 0 and self.is_started:
                    return index + 1
        return None
