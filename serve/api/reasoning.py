"""A reasoning model's thinking, split from its answer: `<think>...</think>` (DeepSeek-R1 distills, Qwen3,
SmolLM3), as the text streams.

    "<think>\\nLet me see.\\n</think>\\n\\nParis."  ->  reasoning "Let me see.", content "Paris."

Which requests are split: a model whose catalog entry says `reasoning_format = "think_tags"` (the engine
carries it), or a prompt whose chat template already opened the block (the R1 distills end the prompt with
`<think>\\n`: the output starts inside it). The generation core makes the splitter for every request, so no
dialect can forget it.
Only a `<think>` at the very start of the output opens a block (as llama-server parses it); a tag later in
the answer is answer text. A block cut short (max_tokens) is all reasoning. Tags split across chunks are
held back until they are known, so no partial tag ever reaches the client. Whitespace around the tags is
the template's, not the model's text: it is dropped at both ends of the reasoning and before the answer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from serve.api.harmony import HarmonySplitter
from serve.errors import InvalidRequestError

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
THINK_TAGS = "think_tags"  # the catalog's reasoning_format for these tags
HARMONY = "harmony"  # gpt-oss's channels, split by serve/api/harmony.py

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

    kept_special_tokens: tuple[str, ...] = ()  # <think> tags are text where they are tokens (Qwen3)

    def __init__(self, starts_in_reasoning: bool = False, shows_reasoning: bool = True):
        self._state = _REASONING if starts_in_reasoning else _START
        self._shows_reasoning = shows_reasoning
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
                return (reasoning if self._shows_reasoning else ""), content

    def flush(self) -> tuple[str, str]:
        """What is left when the output ends: an unterminated block is reasoning, a partial tag is text."""
        held, self._held = self._held, ""
        if self._state == _REASONING:
            reasoning = held.rstrip() if self._reasoning_started else held.strip()
            return (reasoning if self._shows_reasoning else ""), ""
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


Splitter = ReasoningSplitter | HarmonySplitter  # feed(text) / flush() -> (reasoning, content)


def reasoning_splitter(reasoning_format: Optional[str], prompt_text: str, *,
                       shows_reasoning: bool = True) -> Splitter | None:
    """The splitter for a request, or None when its output has no reasoning to split; one that does not
    show the reasoning drops it (thinking the request turned off, but the template could not prevent)."""
    if reasoning_format == HARMONY:
        return HarmonySplitter(shows_reasoning=shows_reasoning)
    if opens_reasoning(prompt_text):
        return ReasoningSplitter(starts_in_reasoning=True, shows_reasoning=shows_reasoning)
    if reasoning_format == THINK_TAGS:
        return ReasoningSplitter(shows_reasoning=shows_reasoning)
    return None


# --- turning thinking off (or choosing its level) -----------------------------------------------------------

ENABLE_THINKING = "enable_thinking"  # the template variable Qwen3's (and SmolLM3's) templates read
REASONING_EFFORT = "reasoning_effort"  # gpt-oss's template variable: low, medium, high
EFFORT_LEVELS = ("low", "medium", "high")
# What the chat-template render itself sets: a request's template kwargs may not replace it.
RESERVED_TEMPLATE_NAMES = frozenset({"messages", "tools", "add_generation_prompt", "bos_token", "eos_token",
                                     "raise_exception", "strftime_now", "documents"})


@dataclass(frozen=True)
class Thinking:
    """What a request asks of a reasoning model's thinking (OpenAI's chat_template_kwargs.enable_thinking and
    reasoning_effort, Ollama's think, Anthropic's thinking.type): `is_enabled` None leaves it to the template;
    False prevents it where the template can (enable_thinking=False to templates that read it, like Qwen3's;
    a `<think>` block the template opened is closed in the prompt, as llama-server did), and otherwise
    thinking still happens but is dropped from the answer. `effort` is a level for templates that read
    reasoning_effort (gpt-oss). `template_kwargs`: a request's other variables for the template."""

    is_enabled: bool | None = None
    effort: str | None = None
    template_kwargs: tuple[tuple[str, Any], ...] = ()

    def render_kwargs(self, template: str) -> dict[str, Any]:
        """The variables the chat template is rendered with for this request."""
        kwargs = dict(self.template_kwargs)
        if self.is_enabled is not None:
            kwargs[ENABLE_THINKING] = self.is_enabled
        if self.effort is not None:
            if REASONING_EFFORT not in template:
                raise InvalidRequestError(f"reasoning_effort {self.effort!r}: this model's chat template has no "
                                          "reasoning levels (only gpt-oss-style templates read reasoning_effort); "
                                          "omit it, or turn thinking off", param=REASONING_EFFORT)
            kwargs[REASONING_EFFORT] = self.effort
        return kwargs

    def applied(self, prompt_text: str, template: str, reasoning_format: str | None) -> tuple[str, bool]:
        """(the prompt, whether the answer shows reasoning) once this request's choice is applied to the
        rendered prompt: thinking turned off is closed when the prompt opened it, hidden when the template
        could not turn it off."""
        if self.is_enabled is not False:
            return prompt_text, True
        if opens_reasoning(prompt_text):
            return prompt_text.rstrip() + "\n" + THINK_CLOSE + "\n\n", True  # an empty block: the model answers
        if ENABLE_THINKING in template:
            return prompt_text, True  # the template wrote the empty block itself (Qwen3)
        return prompt_text, reasoning_format is None


def template_kwargs_of(kwargs: dict[str, Any] | None, param: str) -> tuple[tuple[str, Any], ...]:
    """A request's chat_template_kwargs, checked: the names the render sets itself are refused."""
    reserved = sorted(RESERVED_TEMPLATE_NAMES & set(kwargs or {}))
    if reserved:
        raise InvalidRequestError(f"{param} may not set {', '.join(reserved)}: the server renders those from "
                                  "the request itself", param=param)
    return tuple((kwargs or {}).items())
