"""Pydantic models of Anthropic's Messages API: POST /v1/messages and /v1/messages/count_tokens.

Like Anthropic's own API, a request field this server does not know is a 400 naming it; a field Anthropic
defines that is not implemented here yet is a 400 that says so (never silently ignored). Content is text:
other block types are refused by name. Responses are built as plain dicts in serve/api/anthropic/sse.py.
"""
from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

# Anthropic fields that are not implemented yet, and what to do instead.
NOT_IMPLEMENTED_FIELDS = {
    "tools": "tool use is not supported by this server yet; send the request without tools",
    "tool_choice": "tool_choice is not supported by this server yet (there are no tools); omit it",
    "thinking": "extended thinking is not supported by this server yet; omit thinking",
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
    "tool_use": "tool_use blocks are not supported by this server yet (tool use is not implemented)",
    "tool_result": "tool_result blocks are not supported by this server yet (tool use is not implemented)",
    "thinking": "thinking blocks are not supported by this server yet (extended thinking is not implemented)",
    "redacted_thinking": "redacted_thinking blocks are not supported by this server (no extended thinking)",
}


def _fail(kind: str, message: str) -> PydanticCustomError:
    return PydanticCustomError(kind, message)  # keeps the message verbatim


def check_field_names(data: Any, model_cls: type[BaseModel]) -> Any:
    """A 400 naming the first field that is not implemented, or not one of Anthropic's at all."""
    if not isinstance(data, dict):
        return data
    for name in data:
        if name in NOT_IMPLEMENTED_FIELDS and data[name] is not None:
            if name == "tools" and data[name] == []:
                continue  # no tools is what this server does
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
    # A prompt-caching hint: quantserve reuses the KV cache of a repeated prompt prefix without being asked.
    cache_control: Optional[dict[str, Any]] = None


def _text_blocks(value: Any) -> Any:
    """A string, or a list of text blocks; any other block type is refused by name."""
    if isinstance(value, list):
        for index, block in enumerate(value):
            kind = block.get("type") if isinstance(block, dict) else None
            if kind in NOT_TEXT_BLOCKS:
                raise _fail("content_block", f"block {index}: {NOT_TEXT_BLOCKS[kind]}")
            if kind != "text":
                raise _fail("content_block", f"block {index}: expected {{'type': 'text', 'text': str}}")
    return value


def joined_text(content: Union[str, list[TextBlock], None]) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "\n".join(block.text for block in content)


class InputMessage(_Strict):
    role: Literal["user", "assistant"]
    content: Union[str, list[TextBlock]]

    @field_validator("role", mode="before")
    @classmethod
    def _check_role(cls, value: Any) -> Any:
        if value == "system":
            raise _fail("role", "the system prompt goes in the top-level `system` field, not in messages")
        if value not in ("user", "assistant"):
            raise _fail("role", f"role must be 'user' or 'assistant', got {value!r}")
        return value

    @field_validator("content", mode="before")
    @classmethod
    def _check_content(cls, value: Any) -> Any:
        return _text_blocks(value)

    @property
    def text(self) -> str:
        return joined_text(self.content)


class Metadata(_Strict):
    user_id: Optional[str] = None  # an opaque id of the end user; it changes nothing in the answer


class ConversationFields(_Strict):
    """What /v1/messages and /v1/messages/count_tokens share: the conversation."""

    model: str = Field(min_length=1)
    messages: list[InputMessage] = Field(min_length=1)
    system: Union[str, list[TextBlock], None] = None
    # A prompt-caching hint: quantserve reuses the KV cache of a repeated prompt prefix without being asked.
    cache_control: Optional[dict[str, Any]] = None

    @field_validator("system", mode="before")
    @classmethod
    def _check_system(cls, value: Any) -> Any:
        return _text_blocks(value)

    @field_validator("messages")
    @classmethod
    def _ends_with_user(cls, value: list[InputMessage]) -> list[InputMessage]:
        if value and value[-1].role != "user":
            raise _fail("prefill", "the last message must have role 'user' (continuing a final assistant "
                                   "message, prefill, is not supported yet)")
        return value


class MessagesRequest(ConversationFields):
    max_tokens: int = Field(gt=0)
    temperature: Optional[float] = Field(default=None, ge=0.0, le=1.0)
    top_p: Optional[float] = Field(default=None, gt=0.0, le=1.0)
    top_k: Optional[int] = Field(default=None, ge=0)
    stop_sequences: list[str] = Field(default_factory=list)
    stream: bool = False
    metadata: Optional[Metadata] = None
    service_tier: Optional[Literal["auto", "standard_only"]] = None  # one tier here: both mean it

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
