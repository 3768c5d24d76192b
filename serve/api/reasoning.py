"""A reasoning model's thinking, split from its answer: `<think>...</think>` (DeepSeek-R1 distills, Qwen3,
SmolLM3), as the text streams.

    "<think>\\nLet me see.\\n</think>\\n\\nParis."  ->  reasoning "Let me see.", content "Paris."

Which requests are split: the catalog's `reasoning_format = "think_tags"`, or a prompt whose chat template
already opened the block (the R1 distills end the prompt with `<think>\\n`: the output starts inside it).
Only a `<think>` at the very start of the output opens a block (as llama-server parses it); a tag later in
the answer is answer text. A block cut short (max_tokens) is all reasoning. Tags split across chunks are
held back until they are known, so no partial tag ever reaches the client. Whitespace around the tags is
the template's, not the model's text: it is dropped at both ends of the reasoning and before the answer.
"""
from __future__ import annotations

from typing import Optional

from serve.models.catalog import Catalog

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
THINK_TAGS = "think_tags"  # the catalog's reasoning_format for these tags

_START, _REASONING, _ANSWER_START, _ANSWER = "start", "reasoning", "answer_start", "answer"


def opens_reasoning(prompt_text: str) -> bool:
    """Whether the rendered prompt ends inside an open `<think>` block (R1-style templates)."""
    return prompt_text.rstrip().endswith(THINK_OPEN)


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest tail of `text` that is a proper prefix of `tag`."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0


class ReasoningSplitter:
    """Splits one request's streamed text into (reasoning, content) deltas."""

    def __init__(self, starts_in_reasoning: bool = False):
        self._state = _REASONING if starts_in_reasoning else _START
        self._held = ""  # text not yet released: a possible tag, or whitespace that may end the reasoning
        self._reasoning_started = False  # leading whitespace of the reasoning is dropped

    def feed(self, text: str) -> tuple[str, str]:
        """The next text delta; returns the (reasoning, content) that can be released now."""
        self._held += text
        reasoning, content = "", ""
        while True:
            before = (self._state, self._held)
            if self._state == _START:
                self._after_start()
            elif self._state == _REASONING:
                reasoning += self._in_reasoning()
            elif self._state == _ANSWER_START:
                self._held = self._held.lstrip()
                if self._held:
                    self._state = _ANSWER
            else:
                content, self._held = content + self._held, ""
            if (self._state, self._held) == before:
                return reasoning, content

    def flush(self) -> tuple[str, str]:
        """What is left when the output ends: an unterminated block is reasoning, a partial tag is text."""
        held, self._held = self._held, ""
        if self._state == _REASONING:
            return (held.rstrip() if self._reasoning_started else held.strip()), ""
        if self._state == _START:
            return "", held
        return "", held.lstrip() if self._state == _ANSWER_START else held

    def _after_start(self) -> None:
        stripped = self._held.lstrip()
        if stripped.startswith(THINK_OPEN):
            self._state, self._held = _REASONING, stripped[len(THINK_OPEN):]
        elif stripped and not THINK_OPEN.startswith(stripped):
            self._state = _ANSWER  # no block: everything is answer, leading whitespace included

    def _in_reasoning(self) -> str:
        """Releases reasoning text up to a possible tag or trailing whitespace; moves on at `</think>`."""
        if not self._reasoning_started:
            self._held = self._held.lstrip()
            self._reasoning_started = bool(self._held)
        end = self._held.find(THINK_CLOSE)
        if end >= 0:
            released = self._held[:end].rstrip()
            self._state, self._held = _ANSWER_START, self._held[end + len(THINK_CLOSE):]
            return released
        keep = _partial_suffix(self._held, THINK_CLOSE)
        body = self._held[:len(self._held) - keep]
        trailing = len(body) - len(body.rstrip())  # may be the whitespace before </think>: hold it
        cut = len(body) - trailing
        released, self._held = self._held[:cut], self._held[cut:]
        return released


def catalog_reasoning_format(catalog: Optional[Catalog], model_name: str) -> Optional[str]:
    """The catalog's reasoning_format of a served model; None for models it does not list."""
    spec = catalog.models.get(model_name) if catalog is not None else None
    return spec.reasoning_format if spec is not None else None


def reasoning_splitter(reasoning_format: Optional[str], prompt_text: str) -> ReasoningSplitter | None:
    """The splitter for a request, or None when its output has no reasoning to split."""
    if opens_reasoning(prompt_text):
        return ReasoningSplitter(starts_in_reasoning=True)
    if reasoning_format == THINK_TAGS:
        return ReasoningSplitter()
    return None
