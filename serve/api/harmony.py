"""gpt-oss's harmony output taken apart as it streams: messages on channels, each with a header.

    <|channel|>analysis<|message|>The user wants the weather.<|end|>
    <|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city":"Paris"}
    (then <|call|>, or for an answer <|start|>assistant<|channel|>final<|message|>Sunny.<|return|>)

The prompt ends with `<|start|>assistant`, so the output opens with the first header. The analysis channel
is reasoning; the final channel and commentary without a recipient (a preamble) are content; a commentary
message addressed to `functions.NAME` (the recipient may also sit in the role header, before the channel) is a
tool call, handed on as `to=functions.NAME<|message|>{...}`, which the gpt_oss tool format parses
(serve/api/tools/formats.py). Messages to other recipients (gpt-oss's built-in browser or python tools) are
not served here and are dropped, as llama-server drops them. The markers are special tokens, which backends
leave out of the text unless asked: a request on a harmony model keeps `kept_special_tokens`.

Output that is not harmony at all (no header where one must be) is content as it is.
"""
from __future__ import annotations

import re

START, CHANNEL, MESSAGE, END, CONSTRAIN = "<|start|>", "<|channel|>", "<|message|>", "<|end|>", "<|constrain|>"
# End of generation: not text (the backends stop on them), but stripped should one come through.
TURN_ENDS = ("<|return|>", "<|call|>")
TOOL_RECIPIENT = "functions."
MAX_HEADER_CHARS = 200  # a longer "header" is not one: the output is plain text

_HEADER = re.compile(r"^\s*(?:<\|start\|>)?\s*(?:assistant)?\s*(?:to=(?P<role_to>[^\s<]+))?\s*"
                     r"(?:<\|channel\|>(?P<channel>[^\s<]+))?\s*(?:to=(?P<channel_to>[^\s<]+))?\s*"
                     r"(?:<\|constrain\|>)?\s*(?:[A-Za-z0-9_-]+)?\s*$")
_BODY_ENDS = (END, *TURN_ENDS)
_HEADER_OPENINGS = (START, CHANNEL, "assistant", "to=")


def _partial_end(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest tail of `text` that may be the start of one of `markers`."""
    for size in range(min(max(map(len, markers)) - 1, len(text)), 0, -1):
        if any(marker.startswith(text[-size:]) for marker in markers):
            return size
    return 0


class HarmonySplitter:
    """Splits one request's streamed harmony text into (reasoning, content) deltas, like ReasoningSplitter."""

    kept_special_tokens = (START, CHANNEL, MESSAGE, END, CONSTRAIN)

    def __init__(self, shows_reasoning: bool = True):
        self._shows_reasoning = shows_reasoning
        self._held = ""
        self._in_header = True
        self._route = "content"  # where the current message's body goes: reasoning, content, or drop
        self._is_plain = False  # the output is not harmony: everything is content

    def feed(self, text: str) -> tuple[str, str]:
        self._held += text
        reasoning, content = [], []
        while self._held:
            if self._is_plain:
                content.append(self._held)
                self._held = ""
            elif self._in_header:
                if not self._read_header(content):
                    break
            elif not self._read_body(reasoning, content):
                break
        return "".join(reasoning) if self._shows_reasoning else "", "".join(content)

    def flush(self) -> tuple[str, str]:
        """The output ended: a body cut short is what it is; a partial header is dropped (plain text kept)."""
        held, self._held = self._held, ""
        if self._in_header and not self._is_plain:
            return "", "" if CHANNEL in held or START in held else held
        if self._is_plain:
            return "", held
        if self._route == "reasoning":
            return (held if self._shows_reasoning else ""), ""
        return "", held if self._route == "content" else ""

    # -- states ------------------------------------------------------------------------------------------

    def _read_header(self, content: list[str]) -> bool:
        """Consumes a whole header (up to <|message|>); False while it is incomplete."""
        position = self._held.find(MESSAGE)
        if position < 0:
            if not self._could_be_header(self._held) or len(self._held) > MAX_HEADER_CHARS:
                self._is_plain = True
                return True
            return False
        header, self._held = self._held[:position], self._held[position + len(MESSAGE):]
        match = _HEADER.match(header)
        if match is None:  # not a harmony header: the text is plain
            self._is_plain, self._held = True, header + MESSAGE + self._held
            return True
        recipient = match.group("channel_to") or match.group("role_to")
        channel = match.group("channel") or ""
        if recipient:
            is_tool = recipient.startswith(TOOL_RECIPIENT)
            self._route = "content" if is_tool else "drop"
            if is_tool:
                content.append(f"to={recipient}{MESSAGE}")
        else:
            self._route = "reasoning" if channel == "analysis" else "content"
        self._in_header = False
        return True

    def _read_body(self, reasoning: list[str], content: list[str]) -> bool:
        """Releases body text up to a possible end marker; moves to the next header at <|end|>."""
        found = [(self._held.find(marker), marker) for marker in _BODY_ENDS if marker in self._held]
        if found:
            position, marker = min(found)
            body, self._held = self._held[:position], self._held[position + len(marker):]
            self._release(body, reasoning, content)
            self._in_header = True
            return True
        keep = _partial_end(self._held, _BODY_ENDS)
        body, self._held = self._held[:len(self._held) - keep], self._held[len(self._held) - keep:]
        self._release(body, reasoning, content)
        return False

    def _release(self, body: str, reasoning: list[str], content: list[str]) -> None:
        if self._route == "reasoning":
            reasoning.append(body)
        elif self._route == "content":
            content.append(body)

    @staticmethod
    def _could_be_header(text: str) -> bool:
        stripped = text.lstrip()
        return not stripped or any(stripped.startswith(o) or o.startswith(stripped) for o in _HEADER_OPENINGS)
