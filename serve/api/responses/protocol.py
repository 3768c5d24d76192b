"""Pydantic models of OpenAI's Responses API request (POST /v1/responses).

As OpenAI's own API does, a parameter this server does not know is a 400 naming it; one OpenAI defines
that is not implemented here yet is a 400 that says so, unless it is sent with the value that means "not
used". Input is text messages, function calls and their outputs (and earlier reasoning, not read again):
other item and content types are refused by name. Responses and stream events are built as plain dicts in
serve/api/responses/events.py.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from serve.api.openapi import only_unused_values

MAX_METADATA_KEYS = 16
# Responses parameters that are not implemented yet: the value that means "not used" is accepted.
NOT_IMPLEMENTED = {
    "reasoning": ({}, "reasoning options (effort, summary) are not supported by this server: a reasoning model "
                      "thinks as its chat template lets it, and its thinking is answered as a reasoning item; "
                      "omit reasoning"),
    "include": ([], "include is not supported by this server yet; omit it"),
    "background": (False, "background responses are not supported by this server; omit background"),
    "conversation": (None, "conversations are not supported by this server; use previous_response_id"),
    "prompt": (None, "prompt templates are not supported by this server; send input and instructions"),
    "top_logprobs": (0, "logprobs are not supported by the Responses API of this server yet; omit top_logprobs"),
    "max_tool_calls": (None, "max_tool_calls is not supported by this server; omit it (parallel_tool_calls: false "
                             "allows one call)"),
    "stream_options": (None, "stream_options is not supported by this server yet; omit it"),
}
NOT_TEXT_CONTENT = ("input_image", "input_file", "input_audio", "refusal")
ITEM_TYPES = ("message", "reasoning", "function_call", "function_call_output")


def _fail(kind: str, message: str) -> PydanticCustomError:
    return PydanticCustomError(kind, message)  # keeps the message verbatim


def _is_unused(value: Any, unused: Any) -> bool:
    return value is None or value == unused or (isinstance(unused, tuple) and value in unused)


def check_parameter_names(data: Any, model_cls: type[BaseModel]) -> Any:
    """A 400 naming the first parameter that is not implemented, or not one of OpenAI's at all."""
    if not isinstance(data, dict):
        return data
    for name, value in data.items():
        if name in NOT_IMPLEMENTED:
            unused, message = NOT_IMPLEMENTED[name]
            if not _is_unused(value, unused):
                raise _fail("not_implemented", f"{name}: {message}")
        elif name not in model_cls.model_fields:
            raise _fail("unknown_parameter", f"{name}: unknown parameter; see the Responses API of this server "
                                             "in its README")
    return data


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextContent(_Strict):
    type: Literal["input_text", "output_text"]
    text: str
    annotations: Optional[list[Any]] = None  # what an earlier response's output_text carries back
    logprobs: Optional[list[Any]] = None


class MessageItem(_Strict):
    """A message of the input; an earlier response's output message may be sent back as it was."""

    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: Union[str, list[TextContent]]
    id: Optional[str] = None
    status: Optional[str] = None
    phase: Optional[str] = None  # commentary or final_answer, on an earlier output message

    @field_validator("content", mode="before")
    @classmethod
    def _check_content(cls, value: Any) -> Any:
        if isinstance(value, list):
            for index, part in enumerate(value):
                kind = part.get("type") if isinstance(part, dict) else None
                if kind in NOT_TEXT_CONTENT:
                    raise _fail("content_part", f"part {index}: {kind} content is not supported "
                                                "(this server serves text-only models)")
        return value

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)

    def to_template_dict(self) -> dict[str, str]:
        role = "system" if self.role == "developer" else self.role  # developer is the newer name of system
        return {"role": role, "content": self.text}


class ReasoningText(_Strict):
    type: Literal["reasoning_text", "summary_text"]
    text: str


class ReasoningItem(_Strict):
    """An earlier response's reasoning, sent back as it was: accepted, and not read again (as OpenAI's API
    and reasoning models' templates drop earlier thinking)."""

    type: Literal["reasoning"]
    id: Optional[str] = None
    summary: list[ReasoningText] = Field(default_factory=list)
    content: Optional[list[ReasoningText]] = None
    encrypted_content: Optional[str] = None
    status: Optional[str] = None


class FunctionCallItem(_Strict):
    """An earlier call of a function by the model (an earlier response's output item)."""

    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str
    arguments: str  # JSON text, as the response gave it
    id: Optional[str] = None
    status: Optional[str] = None
    # what OpenAI's answers say of a call (its caller, the tool's namespace); sent back as they came
    caller: Optional[dict[str, Any]] = None
    namespace: Optional[str] = None


class FunctionCallOutputItem(_Strict):
    """What the function answered to the call `call_id`."""

    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: Union[str, list[TextContent]]
    id: Optional[str] = None
    status: Optional[str] = None

    @property
    def text(self) -> str:
        return self.output if isinstance(self.output, str) else "\n".join(part.text for part in self.output)


InputItem = Annotated[Union[MessageItem, ReasoningItem, FunctionCallItem, FunctionCallOutputItem],
                      Field(discriminator="type")]


def _with_message_type(value: Any) -> Any:
    """A message item may leave out its type; the discriminated union needs it."""
    if isinstance(value, list):
        return [dict(item, type="message") if isinstance(item, dict) and "type" not in item else item
                for item in value]
    return value


class FunctionTool(_Strict):
    type: Literal["function"]
    name: str
    description: Optional[str] = None
    parameters: Optional[dict[str, Any]] = None
    strict: Optional[bool] = None  # calls always follow the schema here (a grammar holds them)


def _check_tools(value: Any) -> Any:
    for index, tool in enumerate(value if isinstance(value, list) else []):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            raise _fail("tool", f"tools[{index}]: {kind!r} tools are not supported by this server (they run on "
                                "OpenAI's side); define function tools")
    return value


class NamedFunction(_Strict):
    type: Literal["function"]
    name: str


def _check_items(value: Any) -> Any:
    if isinstance(value, list):
        for index, item in enumerate(value):
            kind = item.get("type", "message") if isinstance(item, dict) else None
            if kind not in ITEM_TYPES:
                raise _fail("input_item", f"item {index}: expected a message item {{'role': 'user', 'content': ...}}"
                                          f", function_call, function_call_output or reasoning, got type {kind!r}")
    return value


class TextFormat(_Strict):
    """Plain text, a JSON object, or JSON valid under `schema` (structured output, held by a grammar)."""

    type: Literal["text", "json_object", "json_schema"]
    name: Optional[str] = None
    schema_: Optional[dict[str, Any]] = Field(default=None, alias="schema")
    description: Optional[str] = None
    strict: Optional[bool] = None

    @model_validator(mode="after")
    def _check_schema(self) -> "TextFormat":
        if self.type == "json_schema" and (self.schema_ is None or not self.name):
            raise _fail("text_format", "text.format of type json_schema needs name and schema (the JSON schema "
                                       "of the output)")
        return self


class TextConfig(_Strict):
    format: Optional[TextFormat] = None
    verbosity: Optional[Literal["medium"]] = None  # the one verbosity this server has


class ResponsesRequest(_Strict):
    model_config = ConfigDict(extra="forbid", json_schema_extra=only_unused_values(NOT_IMPLEMENTED))

    model: Optional[str] = None  # absent: the first loaded model (as /v1/chat/completions)
    input: Union[str, list[InputItem]]
    instructions: Optional[str] = None
    max_output_tokens: Optional[int] = Field(default=None, gt=0)
    temperature: Optional[float] = Field(default=None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(default=None, gt=0.0, le=1.0)
    stream: bool = False
    store: bool = True
    previous_response_id: Optional[str] = None
    metadata: Optional[dict[str, str]] = None
    text: Optional[TextConfig] = None
    truncation: Optional[Literal["disabled"]] = None  # "auto" would drop input silently: not implemented
    parallel_tool_calls: Optional[bool] = None
    service_tier: Optional[Literal["auto", "default"]] = None  # one tier here
    user: Optional[str] = None  # identifiers of the end user or cache key: they change nothing
    safety_identifier: Optional[str] = None
    prompt_cache_key: Optional[str] = None
    # accepted only with the value that means "not used" (see NOT_IMPLEMENTED)
    tools: Optional[list[FunctionTool]] = None
    tool_choice: Union[Literal["auto", "none", "required"], NamedFunction, None] = None
    reasoning: Optional[Any] = None
    include: Optional[list[Any]] = None
    background: Optional[bool] = None
    conversation: Optional[Any] = None
    prompt: Optional[Any] = None
    top_logprobs: Optional[int] = None
    max_tool_calls: Optional[int] = None
    stream_options: Optional[Any] = None

    @model_validator(mode="before")
    @classmethod
    def _check_parameters(cls, data: Any) -> Any:
        return check_parameter_names(data, cls)

    @field_validator("input", mode="before")
    @classmethod
    def _check_input(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise _fail("input_empty", "input must not be empty")
        return _with_message_type(_check_items(value))

    @field_validator("tools", mode="before")
    @classmethod
    def _check_tools(cls, value: Any) -> Any:
        return _check_tools(value)

    @field_validator("tool_choice", mode="before")
    @classmethod
    def _check_tool_choice(cls, value: Any) -> Any:
        if isinstance(value, dict) and value.get("type") != "function":
            raise _fail("tool_choice", f"tool_choice of type {value.get('type')!r} is not supported by this "
                                       "server; send auto, none, required or {'type': 'function', 'name': ...}")
        return value

    @field_validator("metadata")
    @classmethod
    def _check_metadata(cls, value: Optional[dict[str, str]]) -> Optional[dict[str, str]]:
        if value and len(value) > MAX_METADATA_KEYS:
            raise _fail("metadata", f"at most {MAX_METADATA_KEYS} metadata keys are allowed, got {len(value)}")
        return value

    @property
    def input_items(self) -> list[Any]:
        return [MessageItem(role="user", content=self.input)] if isinstance(self.input, str) else self.input
