"""The shapes of Anthropic's answers, for the OpenAPI document (serve/api/openapi.py).

The answers are plain dicts built in serve/api/anthropic/sse.py and errors.py; these models only describe
them. tests/integration/test_schemathesis.py checks the real answers against the document.
"""
from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel


class AnthropicErrorDetail(BaseModel):
    type: str  # Anthropic's error type: invalid_request_error, not_found_error, overloaded_error, ...
    message: str


class AnthropicError(BaseModel):
    type: Literal["error"]
    error: AnthropicErrorDetail


class TextBlock(BaseModel):
    type: Literal["text"]
    text: str


class ThinkingBlock(BaseModel):
    type: Literal["thinking"]
    thinking: str
    signature: str


class ToolUseBlock(BaseModel):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


class AnthropicUsage(BaseModel):
    input_tokens: int  # the prompt tokens not read from the prefix cache
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    output_tokens: int


class Message(BaseModel):
    id: str
    type: Literal["message"]
    role: Literal["assistant"]
    model: str
    content: list[Union[TextBlock, ThinkingBlock, ToolUseBlock]]
    stop_reason: Optional[Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]]
    stop_sequence: Optional[str]
    usage: AnthropicUsage


class TokenCount(BaseModel):
    input_tokens: int
