"""Pydantic models of the OpenAI-compatible HTTP API: request validation and response shapes.

Only the HTTP edge uses pydantic; routes convert these models into serve.sequence types. Every field we
read is validated, so a bad value becomes a 400 naming the field instead of a surprise deep inside the
engine. A request's top-level fields are all declared here: OpenAI's fields we do not implement are
declared too and refused by serve/api/openai/request.py unless left at their default, and an unknown key is
a 400 naming it (as OpenAI answers), never silently ignored. Nested objects (messages, stream_options) stay
lenient: clients send back earlier assistant messages with fields such as `refusal` and `annotations`.
"""
from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from serve.api.openapi import only_unused_values

MAX_STOP_STRINGS = 4
MAX_TOP_LOGPROBS = 20  # OpenAI's limit for chat's top_logprobs (and vLLM's default max_logprobs)
CHAT_ROLES = ("system", "user", "assistant", "tool", "developer", "function")
# OpenAI's fields this server does not implement: accepted at a value that changes nothing (clients send
# some of them so), a 400 naming the field otherwise (serve/api/openai/request.py). name -> (the values that
# change nothing, what to do). The OpenAPI document offers only those values.
UNIMPLEMENTED_FIELDS: dict[str, tuple[tuple[Any, ...], str]] = {
    "n": ((None, 1), "several choices per request (n > 1) are not supported; send n=1 or omit it"),
    "best_of": ((None, 1), "best_of > 1 is not supported; send best_of=1 or omit it"),
    "suffix": ((None, ""), "suffix (fill-in-the-middle) is not supported; omit it"),
    "audio": ((None,), "audio output is not supported: this server serves text-only models; omit audio"),
    "modalities": ((None, ["text"]), 'only text output is supported; send modalities ["text"] or omit it'),
    "prediction": ((None,), "predicted outputs are not supported; omit prediction"),
    "web_search_options": ((None,), "web search is not supported; omit web_search_options"),
    "functions": ((None,), "functions (deprecated by OpenAI) is not supported; send tools instead"),
    "function_call": ((None,), "function_call (deprecated by OpenAI) is not supported; send tool_choice instead"),
    "store": ((None, False), "stored completions are not supported; omit store or send false"),
    "metadata": ((None, {}), "metadata is kept only with stored completions, which are not supported; omit it"),
    "verbosity": ((None,), "verbosity is not supported; omit it"),
    "service_tier": ((None, "auto", "default"), 'service tiers are not supported; send "auto" or omit service_tier'),
}


def _fail(kind: str, message: str) -> PydanticCustomError:
    # A custom error keeps our message verbatim (a plain ValueError would be prefixed "Value error, ").
    return PydanticCustomError(kind, message)


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Lenient):
    include_usage: bool = False


class JSONSchemaFormat(_Lenient):
    name: str = Field(min_length=1, max_length=64)
    description: Optional[str] = None
    schema_: Optional[dict[str, Any]] = Field(default=None, alias="schema")
    strict: Optional[bool] = None  # accepted either way: the schema is always enforced whole


class ResponseFormat(_Lenient):
    """OpenAI's response_format: free text, any JSON object, or JSON valid under a schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: Optional[JSONSchemaFormat] = None


class SamplingFields(BaseModel):
    """The generation parameters shared by /v1/chat/completions and /v1/completions."""

    # Unknown keys are kept (model_extra) so that check_supported can refuse them by name.
    model_config = ConfigDict(extra="allow", json_schema_extra=only_unused_values(UNIMPLEMENTED_FIELDS))

    model: Optional[str] = None  # absent: the first loaded model (as llama-server does)
    max_tokens: Optional[int] = Field(default=None, gt=0)
    temperature: Optional[float] = Field(default=None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(default=None, gt=0.0, le=1.0)
    top_k: Optional[int] = Field(default=None, ge=-1)  # 0 or -1 disable it
    min_p: Optional[float] = Field(default=None, ge=0.0, le=1.0)
    stop: tuple[str, ...] = ()  # a string or up to 4 strings; empty strings are dropped
    seed: Optional[int] = None
    presence_penalty: Optional[float] = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: Optional[float] = Field(default=None, ge=-2.0, le=2.0)
    repeat_penalty: Optional[float] = Field(default=None, gt=0.0)  # llama.cpp extra; 1.0 disables it
    logit_bias: Optional[dict[str, float]] = None
    n: Optional[int] = Field(default=None, ge=1)
    stream: Optional[bool] = False
    stream_options: Optional[StreamOptions] = None
    user: Optional[str] = None  # accepted: it changes no answer
    # Structured output (serve/api/openai/structured.py): at most one of these.
    response_format: Optional[ResponseFormat] = None
    json_schema: Optional[dict[str, Any]] = None  # llama-server's extension: JSON valid under this schema
    grammar: Optional[str] = None  # llama-server's extension: text matching this GBNF grammar
    # quantserve's extension: false opts out of speculative decoding (the output is the same either way)
    speculative: Optional[bool] = None

    @field_validator("stop", mode="before")
    @classmethod
    def _check_stop(cls, value: Any) -> tuple[str, ...]:
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise _fail("stop_type", "Input should be a string or a list of strings")
        if len(value) > MAX_STOP_STRINGS:
            raise _fail("stop_count", f"at most {MAX_STOP_STRINGS} stop strings are allowed, got {len(value)}")
        return tuple(item for item in value if item)

    @field_validator("logit_bias")
    @classmethod
    def _check_logit_bias(cls, value: Optional[dict[str, float]]) -> Optional[dict[str, float]]:
        for token, bias in (value or {}).items():
            if not token.strip().lstrip("-").isdigit() or int(token) < 0:
                raise _fail("logit_bias_key", f"keys must be token ids (non-negative integers), got {token!r}")
            if not -100.0 <= bias <= 100.0:
                raise _fail("logit_bias_value", f"bias for token {token} must be between -100 and 100, got {bias}")
        return value

    @property
    def num_max_tokens(self) -> Optional[int]:
        return self.max_tokens

    @property
    def can_include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatMessage(_Lenient):
    role: Literal["system", "user", "assistant", "tool", "developer", "function"]
    content: Optional[str] = None  # a string, or text parts joined by the validator below
    name: Optional[str] = None
    tool_call_id: Optional[str] = None
    tool_calls: Optional[list[dict[str, Any]]] = None

    @field_validator("content", mode="before")
    @classmethod
    def _flatten_content(cls, value: Any) -> Optional[str]:
        """A string, or a list of text parts joined into one string; images are refused."""
        if value is None or isinstance(value, str):
            return value
        if not isinstance(value, list):
            raise _fail("content_type", "Input should be a string or a list of content parts")
        texts = []
        for index, part in enumerate(value):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif kind in ("image_url", "input_image", "image", "input_audio", "file"):
                raise _fail("content_part", f"part {index}: {kind} content is not supported "
                                            "(this server serves text-only models)")
            else:
                raise _fail("content_part", f"part {index}: expected {{'type': 'text', 'text': str}}")
        return "\n".join(texts)

    def to_template_dict(self) -> dict[str, Any]:
        """The message as a chat template expects it (developer is the newer name of system)."""
        role = "system" if self.role == "developer" else self.role
        message: dict[str, Any] = {"role": role, "content": self.content or ""}
        for key in ("name", "tool_call_id", "tool_calls"):
            if getattr(self, key) is not None:
                message[key] = getattr(self, key)
        return message


class FunctionDefinition(_Lenient):
    name: Any = None  # checked by serve/api/tools/spec.py, with the index of the tool in the message
    description: Optional[str] = None
    parameters: Any = None
    strict: Optional[bool] = None  # arguments always follow the schema when a grammar holds the call


class ToolDefinition(_Lenient):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(_Lenient):
    name: str


class NamedToolChoice(_Lenient):
    type: Literal["function"]
    function: FunctionName


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(default=None, gt=0)
    logprobs: Optional[bool] = None
    tools: Optional[list[ToolDefinition]] = None
    tool_choice: Optional[Union[Literal["none", "auto", "required"], NamedToolChoice]] = None
    parallel_tool_calls: Optional[bool] = None
    top_logprobs: Optional[int] = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)  # needs logprobs: true
    # Variables for the model's chat template, as vLLM and llama-server take them: enable_thinking false
    # turns a reasoning model's thinking off (serve/api/reasoning.py).
    chat_template_kwargs: Optional[dict[str, Any]] = None
    # none turns thinking off; a level goes to templates that read reasoning_effort (gpt-oss)
    reasoning_effort: Optional[Literal["none", "low", "medium", "high"]] = None
    # Accepted, changing no answer: end-user and cache-routing identifiers.
    safety_identifier: Optional[str] = None
    prompt_cache_key: Optional[str] = None
    prompt_cache_retention: Optional[str] = None
    # OpenAI fields not implemented here: refused by name unless at their default (request.py).
    store: Any = None
    metadata: Any = None
    service_tier: Any = None
    audio: Any = None
    modalities: Any = None
    prediction: Any = None
    web_search_options: Any = None
    functions: Any = None
    function_call: Any = None
    verbosity: Any = None

    @property
    def num_max_tokens(self) -> Optional[int]:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(SamplingFields):
    # Text, or token ids (lm-evaluation-harness sends [[ids]]); a batch of several prompts is refused.
    prompt: Union[str, list[str], list[int], list[list[int]]]
    echo: Optional[bool] = None  # the prompt in front of the text (and its tokens' logprobs with logprobs)
    logprobs: Optional[int] = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)  # the N most likely per token
    suffix: Optional[str] = None  # refused when not empty (request.py)
    best_of: Optional[int] = Field(default=None, ge=1)  # refused above 1 (request.py)

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: Any) -> Union[str, list[int]]:
        if isinstance(value, str):
            return value
        if value and all(isinstance(item, int) for item in value):
            return value  # one prompt as token ids
        if len(value) != 1:
            raise _fail("prompt_batch", f"exactly one prompt is supported per request, got {len(value)}")
        return value[0]

    @property
    def prompt_token_ids(self) -> Optional[list[int]]:
        return self.prompt if isinstance(self.prompt, list) else None


# Responses. Stream chunks are built as plain dicts in serve/api/openai/sse.py (they are hot); these models
# document the non-streaming shapes and serialize them.


class PromptTokensDetails(BaseModel):
    cached_tokens: int  # prompt tokens whose KV came from the prefix cache instead of being computed


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class FunctionCall(BaseModel):
    name: str
    arguments: str  # JSON text


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: Optional[str]  # null when the answer is only tool calls (as OpenAI sends it)
    tool_calls: Optional[list[ToolCall]] = None
    # A reasoning model's thinking: llama-server's name and vLLM's (clients read either); None otherwise.
    reasoning_content: Optional[str] = None
    reasoning: Optional[str] = None


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: Optional[dict[str, Any]] = None  # {"content": [...], "refusal": null} when asked
    finish_reason: Optional[str]


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: Optional[str] = None


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: Optional[dict[str, Any]] = None  # tokens, token_logprobs, top_logprobs, text_offset when asked
    finish_reason: Optional[str]


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    system_fingerprint: Optional[str] = None


class ModelCard(BaseModel):
    """One served model; `context_length` is per sequence, `num_parallel` the sequences decoded together."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "quantserve"
    backend: str
    context_length: int
    num_parallel: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
