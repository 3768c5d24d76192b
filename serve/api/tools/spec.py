"""The tools a request offers and how it lets the model use them, validated once for every dialect.

    tool_choice  none: the model answers in text (the tools are not shown to it)
                 auto: it may call tools or answer (a lazy grammar holds the call's shape once it starts)
                 required: it must call one or more tools (enforced by grammar)
                 a named function: it must call that one (enforced by grammar)
    parallel_tool_calls false: at most one call (exactly one when required or named)
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from serve.errors import InvalidRequestError

TOOL_CHOICES = ("none", "auto", "required")
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule; names go into markup and grammars verbatim


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]  # a JSON schema of the arguments object

    def as_template_dict(self) -> dict[str, Any]:
        """As chat templates read it (Hugging Face's apply_chat_template passes OpenAI's tool shape)."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}


@dataclass(frozen=True)
class ToolRequest:
    tools: tuple[Tool, ...]
    choice: str = "auto"  # one of TOOL_CHOICES, or "named"
    named: str | None = None  # the function a named choice requires
    allows_parallel: bool = True

    @property
    def is_forced(self) -> bool:
        """A call must come (required or named): the grammar holds from the first token."""
        return self.choice in ("required", "named")

    @property
    def is_active(self) -> bool:
        """The model sees the tools and its output is parsed for calls."""
        return bool(self.tools) and self.choice != "none"

    @property
    def max_calls(self) -> int | None:
        return None if self.allows_parallel else 1

    @property
    def callable_tools(self) -> tuple[Tool, ...]:
        """The tools a call may name: all of them, or the named one."""
        return tuple(t for t in self.tools if t.name == self.named) if self.choice == "named" else self.tools


def make_tool(index: int, name: Any, description: Any, parameters: Any, param: str = "tools") -> Tool:
    """One tool definition, checked: a usable name and an object schema for its arguments."""
    where = f"{param}[{index}].function"
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidRequestError(f"{where}.name must be 1 to 64 letters, digits, '_' or '-', got {name!r}",
                                  param=f"{where}.name")
    if parameters is None:
        parameters = {"type": "object", "properties": {}}
    if not isinstance(parameters, dict):
        raise InvalidRequestError(f"{where}.parameters of {name!r} must be a JSON schema object, "
                                  f"got {type(parameters).__name__}", param=f"{where}.parameters")
    kind = parameters.get("type", "object")
    if kind != "object":
        raise InvalidRequestError(f"{where}.parameters of {name!r} must describe an object (\"type\": \"object\"), "
                                  f"got type {kind!r}: arguments are always a JSON object", param=f"{where}.parameters")
    properties = parameters.get("properties", {})
    if not isinstance(properties, dict) or not all(isinstance(v, (dict, bool)) for v in properties.values()):
        raise InvalidRequestError(f"{where}.parameters.properties of {name!r} must map each argument name to "
                                  "a schema object", param=f"{where}.parameters")
    return Tool(name, description if isinstance(description, str) else "", parameters)


def make_tool_request(tools: list[Tool], choice: str | None, named: str | None,
                      parallel: bool | None) -> ToolRequest | None:
    """The validated request; None when it offers no tools and asks for none (plain chat)."""
    names = [tool.name for tool in tools]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InvalidRequestError(f"tool names must be unique; {', '.join(duplicates)} is defined more than once",
                                  param="tools")
    if named is not None:
        choice = "named"
        if named not in names:
            offered = ", ".join(names) or "none"
            raise InvalidRequestError(f"tool_choice names the function {named!r}, which is not in tools "
                                      f"(offered: {offered}); name one of them or add it to tools",
                                      param="tool_choice")
    choice = choice or "auto"
    if choice == "required" and not tools:
        raise InvalidRequestError("tool_choice 'required' needs at least one tool in tools; send tools, or "
                                  "use tool_choice 'auto' or 'none'", param="tool_choice")
    if not tools:
        return None
    return ToolRequest(tuple(tools), choice, named, parallel is not False)
