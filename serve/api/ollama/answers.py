"""The shapes of Ollama's answers, for the OpenAPI document (serve/api/openapi.py).

The answers themselves are plain dicts built in serve/api/ollama/ndjson.py (per token: pydantic would slow
them), models.py and pull.py; these models only describe them. tests/integration/test_schemathesis.py
checks the real answers against the document, so a drift between the two fails there.
"""
from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel


class OllamaError(BaseModel):
    """Ollama's error body (and a stream's last line after a failure)."""

    error: str


class OllamaToolCallFunction(BaseModel):
    name: str
    arguments: Union[dict[str, Any], str]  # an object; text only for a call cut by num_predict


class OllamaToolCall(BaseModel):
    function: OllamaToolCallFunction


class OllamaMessage(BaseModel):
    role: Literal["assistant"]
    content: str
    thinking: Optional[str] = None  # a reasoning model's thinking, when shown
    tool_calls: Optional[list[OllamaToolCall]] = None


class _Reply(BaseModel):
    """The last (`done`) line of a stream, or the whole answer with "stream": false; durations in ns."""

    model: str
    created_at: str
    done: bool
    done_reason: Optional[str] = None  # stop, length; load or unload for a request without input
    total_duration: Optional[int] = None
    load_duration: Optional[int] = None
    prompt_eval_count: Optional[int] = None
    prompt_eval_duration: Optional[int] = None
    eval_count: Optional[int] = None
    eval_duration: Optional[int] = None


class ChatReply(_Reply):
    message: OllamaMessage


class GenerateReply(_Reply):
    response: str
    thinking: Optional[str] = None


class ModelDetails(BaseModel):
    parent_model: str
    format: str
    family: str
    families: Optional[list[str]]
    parameter_size: str
    quantization_level: str


class _ModelEntry(BaseModel):
    name: str
    model: str
    size: int
    digest: str
    details: ModelDetails


class TagEntry(_ModelEntry):
    modified_at: str


class Tags(BaseModel):
    models: list[TagEntry]


class LoadedDetails(BaseModel):
    """What `serve ps` shows beyond Ollama's fields."""

    backend: str
    num_parallel: int
    context_length: int
    idle_seconds: Optional[float]
    pinned: bool


class PsEntry(_ModelEntry):
    expires_at: str
    size_vram: int
    context_length: int
    quantserve: LoadedDetails


class Ps(BaseModel):
    models: list[PsEntry]


class ShowReply(BaseModel):
    license: str
    modelfile: str
    parameters: str
    template: str
    details: ModelDetails
    model_info: dict[str, Any]
    capabilities: list[str]
    modified_at: str


class PullStatus(BaseModel):
    """One progress line of a pull (the last one, "success", with "stream": false)."""

    status: str
    digest: Optional[str] = None
    total: Optional[int] = None
    completed: Optional[int] = None


class Version(BaseModel):
    version: str
