"""Pydantic models of Anthropic's Messages API: POST /v1/messages and /v1/messages/count_tokens.

Like Anthropic's own API, a request field this server does not know is a 400 naming it; a field Anthropic
defines that is not implemented here yet is a 400 that says so (never silently ignored). Content is text,
tool_use (assistant) and tool_result (user) blocks, and earlier thinking: other block types are refused by
name. Responses are built as plain dicts in serve/api/anthropic/sse.py.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

# Anthropic fields that are not implemented yet, and what to do instead.
NOT_IMPLEMENTED_FIELDS = {
    "output_config": "output_config (structured output, effort) is not supported by this server yet; omit it",
    "output_format": "output_format (structured output) is not supported by this server yet; omit it",
    "mcp_servers": "MCP servers are not supported by this server; omit mcp_servers",
    "container": "containers (code execution) are not supported by this server; omit container",
    "context_management": "context_management is not supported by this server; omit it",
}
# Block types that are not text, and why they are refused.
NOT_TEXT_BLOCKS = {
    "image": "image content is not supported (this server serves text-only models)",
    "document": "document content is not supported (this server serves text-only models); send the text",
}
# Earlier thinking goes back with the assistant turn it belongs to; like Anthropic's API, the model does not
# read it again (reasoning models' templates drop earlier thinking too).
THINKING_BLOCKS = ("thinking", "redacted_thinking")
MIN_THINKING_BUDGET = 1024  # Anthropic's minimum budget_tokens


def _fail(kind: str, message: str) -> PydanticCustomError:
    return PydanticCustomError(kind, message)  # keeps the message verbatim


def check_field_names(data: Any, model_cls: type[BaseModel]) -> Any:
    """A 400 naming the first field that is not implemented, or not one of Anthropic's at all."""
    if not isinstance(data, dict):
        return data
    for name in data:
        if name in NOT_IMPLEMENTED_FIELDS and data[name] is not None:
            raise _fail("not_implemented", f"{name}: {NOT_IMPLEMENTED_FIELDS[name]}")
        if name not in model_cls.model_fields and name not in NOT_IMPLEMENTED_FIELDS:
            known = ", ".join(model_cls.model_fields)
            raise _fail("unknown_field", f"{name}: unknown field; this endpoint accepts {known}")
    return data


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextBlock(_Strict):
    type: Literal["text"]
    text: str
    citations: Optional[list[Any]] = None  # on an earlier answer's text, sent back as it came
    # A prompt-caching hint: quantserve reuses the KV cache of a repeated prompt prefix without being asked.
    cache_control: Optional[dict[str, Any]] = None


class ThinkingBlock(_Strict):
    """An earlier answer's thinking, sent back as it was (its signature is not checked here)."""

    type: Literal["thinking"]
    thinking: str
    signature: Optional[str] = None


class RedactedThinkingBlock(_Strict):
    type: Literal["redacted_thinking"]
    data: str


def _blocks(value: Any, allowed: tuple[str, ...] = ("text",)) -> Any:
    """A string, or a list of blocks of the `allowed` types; any other block type is refused by name."""
    if isinstance(value, list):
        for index, block in enumerate(value):
            kind = block.get("type") if isinstance(block, dict) else None
            if kind in allowed:
                continue
            if kind in NOT_TEXT_BLOCKS:
                raise _fail("content_block", f"block {index}: {NOT_TEXT_BLOCKS[kind]}")
            if kind in (*THINKING_BLOCKS, "tool_use"):
                raise _fail("content_block", f"block {index}: {kind} blocks belong to assistant messages only")
            if kind == "tool_result":
                raise _fail("content_block", f"block {index}: tool_result blocks belong to user messages only")
            raise _fail("content_block", f"block {index}: expected {{'type': 'text', 'text': str}}")
    return value


class ToolUseBlock(_Strict):
    """An earlier call of a tool by the assistant."""

    type: Literal["tool_use"]
    id: str = Field(min_length=1)
    name: str
    input: dict[str, Any]
    cache_control: Optional[dict[str, Any]] = None
    caller: Optional[dict[str, Any]] = None  # who made the call, as Anthropic's answers say; sent back as it came
    toolset_name: Optional[str] = None


class ToolResultBlock(_Strict):
    """What a tool answered to the call `tool_use_id`."""

    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: Union[str, list[TextBlock], None] = None
    is_error: Optional[bool] = None
    cache_control: Optional[dict[str, Any]] = None

    @field_validator("content", mode="before")
    @classmethod
    def _check_content(cls, value: Any) -> Any:
        return _blocks(value)


# By `type` (checked first by _blocks), so that a bad block's error names only the fields of its own type.
Block = Annotated[Union[TextBlock, ThinkingBlock, RedactedThinkingBlock, ToolUseBlock, ToolResultBlock],
                  Field(discriminator="type")]
ASSISTANT_BLOCKS = ("text", *THINKING_BLOCKS, "tool_use")
USER_BLOCKS = ("text", "tool_result")


def joined_text(content: Union[str, list[Block], None]) -> str:
    """The text blocks' text; thinking blocks are not read again."""
    if content is None or isinstance(content, str):
        return content or ""
    return "\n".join(block.text for block in content if isinstance(block, TextBlock))


class InputMessage(_Strict):
    role: Literal["user", "assistant"]
    content: Union[str, list[Block]]

    @field_validator("role", mode="before")
    @classmethod
    def _check_role(cls, value: Any) -> Any:
        if value == "system":
            raise _fail("role", "the system prompt goes in the top-level `system` field, not in messages")
        if value not in ("user", "assistant"):
            raise _fail("role", f"role must be 'user' or 'assistant', got {value!r}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _check_content(cls, data: Any) -> Any:
        if isinstance(data, dict):
            allowed = ASSISTANT_BLOCKS if data.get("role") == "assistant" else USER_BLOCKS
            _blocks(data.get("content"), allowed)
        return data

    @property
    def text(self) -> str:
        return joined_text(self.content)

    def blocks_of(self, kind: type) -> list[Any]:
        return [block for block in self.content if isinstance(block, kind)] if isinstance(self.content, list) else []


class Metadata(_Strict):
    user_id: Optional[str] = None  # an opaque id of the end user; it changes nothing in the answer


class ThinkingConfig(_Strict):
    """Extended thinking. A reasoning model thinks in its own <think> block and its thinking is answered as
    thinking blocks, unless this is `disabled`: the template is then asked not to think (enable_thinking
    false, or the block it opens closed), and what thinking it cannot prevent is left out. The budget is
    bounded by max_tokens, which thinking and answer share, as in Anthropic's API."""

    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: Optional[int] = Field(default=None, ge=MIN_THINKING_BUDGET)
    display: Optional[Literal["summarized", "omitted"]] = None  # omitted: left out (never summarized here)

    @model_validator(mode="after")
    def _check_budget(self) -> "ThinkingConfig":
        if self.type == "enabled" and self.budget_tokens is None:
            raise _fail("thinking", f"thinking.budget_tokens: required with type 'enabled', at least "
                                    f"{MIN_THINKING_BUDGET} and less than max_tokens")
        return self

    @property
    def shows_thinking(self) -> bool:
        return self.type != "disabled" and self.display != "omitted"


class ToolDefinition(_Strict):
    """A tool the model may call (a custom tool: Anthropic's server tools run on Anthropic's side)."""

    name: str
    input_schema: dict[str, Any]
    description: Optional[str] = None
    type: Optional[Literal["custom"]] = None
    cache_control: Optional[dict[str, Any]] = None


def _check_tools(value: Any) -> Any:
    for index, tool in enumerate(value if isinstance(value, list) else []):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind not in (None, "custom"):
            raise _fail("tool", f"tools[{index}]: {kind!r} is one of Anthropic's server tools, which run on "
                                "Anthropic's side; define a custom tool with name, description and input_schema")
    return value


class ToolChoice(_Strict):
    """auto: call tools or answer; any: call at least one; tool: call `name`; none: answer in text."""

    type: Literal["auto", "any", "tool", "none"]
    name: Optional[str] = None
    disable_parallel_tool_use: Optional[bool] = None

    @model_validator(mode="after")
    def _check_name(self) -> "ToolChoice":
        if (self.type == "tool") != (self.name is not None):
            raise _fail("tool_choice", "tool_choice.name: required with type 'tool' (the tool to call), "
                                       "and only then")
        return self


class ConversationFields(_Strict):
    """What /v1/messages and /v1/messages/count_tokens share: the conversation."""

    model: str = Field(min_length=1)
    messages: list[InputMessage] = Field(min_length=1)
    system: Union[str, list[TextBlock], None] = None
    # A prompt-caching hint: quantserve reuses the KV cache of a repeated prompt prefix without being asked.
    cache_control: Optional[dict[str, Any]] = None
    thinking: Optional[ThinkingConfig] = None
    tools: Optional[list[ToolDefinition]] = None
    tool_choice: Optional[ToolChoice] = None

    @field_validator("tools", mode="before")
    @classmethod
    def _check_tools(cls, value: Any) -> Any:
        return _check_tools(value)

    @field_validator("system", mode="before")
    @classmethod
    def _check_system(cls, value: Any) -> Any:
        return _blocks(value)

    @field_validator("messages")
    @classmethod
    def _check_prefill(cls, value: list[InputMessage]) -> list[InputMessage]:
        """A final assistant message is a prefill: the answer continues it. As Anthropic's API, it must not
        end with whitespace (the model would continue after a space it did not choose)."""
        last = value[-1] if value else None
        if last is not None and last.role == "assistant" and last.text != last.text.rstrip():
            raise _fail("prefill", "the final assistant message (a prefill) must not end with whitespace; "
                                   "strip it")
        return value

    @property
    def prefill(self) -> str:
        """The text the answer continues: the final assistant message's, or none."""
        last = self.messages[-1]
        return last.text if last.role == "assistant" else ""

    @property
    def history(self) -> list[InputMessage]:
        """The messages before the prefill."""
        return self.messages[:-1] if self.messages[-1].role == "assistant" else self.messages


class MessagesRequest(ConversationFields):
    max_tokens: int = Field(gt=0)
    temperature: Optional[float] = Field(default=None, ge=0.0, le=1.0)
    top_p: Optional[float] = Field(default=None, gt=0.0, le=1.0)
    top_k: Optional[int] = Field(default=None, ge=0)
    stop_sequences: list[str] = Field(default_factory=list)
    stream: bool = False
    metadata: Optional[Metadata] = None
    service_tier: Optional[Literal["auto", "standard_only"]] = None  # one tier here: both mean it

    @model_validator(mode="after")
    def _check_thinking_budget(self) -> "MessagesRequest":
        budget = self.thinking.budget_tokens if self.thinking is not None else None
        if budget is not None and budget >= self.max_tokens:
            raise _fail("thinking", f"thinking.budget_tokens ({budget}) must be less than max_tokens "
                                    f"({self.max_tokens}): thinking and answer share max_tokens")
        return self

    @model_validator(mode="before")
    @classmethod
    def _check_fields(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("max_tokens") is None:
            raise _fail("max_tokens", "max_tokens: required; the most tokens to generate, e.g. 1024")
        return check_field_names(data, cls)

    @field_validator("stop_sequences")
    @classmethod
    def _check_stop(cls, value: list[str]) -> list[str]:
        for index, stop in enumerate(value):
            if not stop.strip():
                raise _fail("stop_sequence", f"stop_sequences[{index}] must contain non-whitespace text")
        return value


class CountTokensRequest(ConversationFields):
    @model_validator(mode="before")
    @classmethod
    def _check_fields(cls, data: Any) -> Any:
        return check_field_names(data, cls)
