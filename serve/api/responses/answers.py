"""The shapes of the Responses API's answers, for the OpenAPI document (serve/api/openapi.py).

The answers are plain dicts built in serve/api/responses/events.py; these models only describe them.
tests/integration/test_schemathesis.py checks the real answers against the document.
"""
from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel


class OutputText(BaseModel):
    type: Literal["output_text", "reasoning_text"]
    text: str
    annotations: Optional[list[Any]] = None
    logprobs: Optional[list[Any]] = None


class MessageOutput(BaseModel):
    id: str
    type: Literal["message"]
    status: str
    role: Literal["assistant"]
    content: list[OutputText]


class ReasoningOutput(BaseModel):
    id: str
    type: Literal["reasoning"]
    status: str
    summary: list[Any]
    content: list[OutputText]
    encrypted_content: Optional[str]


class FunctionCallOutput(BaseModel):
    id: str
    type: Literal["function_call"]
    status: str
    call_id: str
    name: str
    arguments: str  # JSON text


class InputTokensDetails(BaseModel):
    cached_tokens: int


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class Response(BaseModel):
    """A response object: the collected answer, what GET /v1/responses/{id} returns, and the last event
    of a stream."""

    id: str
    object: Literal["response"]
    created_at: int
    status: Literal["completed", "incomplete", "in_progress", "failed"]
    completed_at: Optional[int]
    error: Optional[dict[str, Any]]
    incomplete_details: Optional[dict[str, Any]]
    instructions: Optional[str]
    max_output_tokens: Optional[int]
    model: str
    output: list[Union[MessageOutput, ReasoningOutput, FunctionCallOutput]]
    parallel_tool_calls: bool
    previous_response_id: Optional[str]
    reasoning: dict[str, Any]
    store: bool
    temperature: float
    text: dict[str, Any]
    tool_choice: Union[str, dict[str, Any]]
    tools: list[dict[str, Any]]
    top_p: float
    truncation: str
    usage: Optional[ResponseUsage]
    user: Optional[str]
    metadata: dict[str, str]


class Deleted(BaseModel):
    id: str
    object: Literal["response"]
    deleted: bool
