"""What one chat request does with tools: which format the model writes calls in, what its chat template
is given, the parser its output goes through, and the grammar that holds forced calls."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from serve.api.engine_client import EngineClient
from serve.api.tools.formats import GENERIC, HERMES, ToolFormat, template_knows_tools, tool_format
from serve.api.tools.grammar import tool_call_constraint
from serve.api.tools.parser import ToolCallParser
from serve.api.tools.render import has_tool_history, template_inputs
from serve.api.tools.spec import ToolRequest
from serve.errors import InvalidRequestError
from serve.sequence import SamplingParams


@dataclass(frozen=True)
class ToolUse:
    format: ToolFormat
    request: ToolRequest | None  # None: no tools offered, only earlier calls in the history to render

    @property
    def is_active(self) -> bool:
        return self.request is not None and self.request.is_active

    def template_inputs(self, messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict] | None]:
        return template_inputs(messages, self.format, self.request)

    def new_parser(self) -> ToolCallParser | None:
        """A parser for one generation's output; None when the output is plain text."""
        if not self.is_active:
            return None
        assert self.request is not None
        return ToolCallParser(self.format, max_calls=self.request.max_calls)

    def constrained(self, params: SamplingParams, *, can_start_lazily: bool,
                    can_start_tagged: bool = False) -> SamplingParams:
        """`params` with the grammar of this request's calls: from the first token when a call is forced,
        from the call's marker on (lazy) for auto, when the backend can start a grammar there: llama.cpp from
        trigger patterns, vLLM from a structural tag, which only some formats have (hermes, generic); vLLM
        runs the auto calls of the others without a grammar (parsed, not held to their schemas), as vLLM's
        own server does."""
        if self.request is None:
            return params
        constraint = tool_call_constraint(self.format, self.request)  # checks every tool's schema: 400s
        if not self.is_active:
            return params
        # The parser must see the call's marker, even where the model's vocabulary makes it a special token.
        params = replace(params, kept_special_tokens=self.format.start_markers)
        can_start_here = can_start_lazily or (can_start_tagged and constraint.structural_tag is not None)
        if not (self.request.is_forced or can_start_here):
            return params
        if params.constraint is not None:
            raise InvalidRequestError("response_format (or format) cannot be combined with tools yet: the "
                                      "output would have to follow two grammars; send one of them",
                                      param="tools")
        return replace(params, constraint=constraint)


def tool_use(engine: EngineClient, messages: list[dict[str, Any]], tools: ToolRequest | None) -> ToolUse | None:
    """None for a plain chat (no tools offered or used): it renders and generates as before."""
    if tools is not None and tools.is_active:
        return ToolUse(tool_format(engine.tool_format, engine.chat_template, engine.model_name), tools)
    if tools is None and not has_tool_history(messages):
        return None
    # Tools not shown (tool_choice none), or only a history with calls: render it as the template can.
    return ToolUse(HERMES if template_knows_tools(engine.chat_template) else GENERIC, tools)
