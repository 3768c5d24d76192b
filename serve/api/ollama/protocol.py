"""Pydantic models of Ollama's HTTP API (/api/chat, /api/generate, /api/show, /api/pull) and the pure
parsing rules its fields need: keep_alive durations, model names with tags, `options`.

Ollama's server (Go) type-checks every field and every option (`option "temperature" must be of type
float32`), so these models are strict: a string where a number belongs is a 400 naming the field, never
silently coerced. Unknown top-level fields and unknown options are a 400 naming them (Ollama ignores them;
here nothing a request asks for is silently ignored). Options that would change the answer but that we do
not implement (mirostat, typical_p, repeat_last_n, tfs_z) are a clear 400; options that only tune Ollama's
runner (num_gpu, num_thread, use_mmap, ...) are type-checked and ignored.
"""
from __future__ import annotations

import math
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from serve.models.catalog import LATEST_TAG
from serve.duration import parse_duration

FOREVER = -1.0  # keep_alive for "never unload" (the pool's convention: negative means forever)

# Ollama's DefaultOptions (api/types.go): what a request without `options` gets.
DEFAULT_TEMPERATURE = 0.8
DEFAULT_TOP_K = 40
DEFAULT_TOP_P = 0.9
DEFAULT_REPEAT_PENALTY = 1.1
DEFAULT_REPEAT_LAST_N = 64  # also what our llama.cpp sampler looks back on


def _fail(kind: str, message: str) -> PydanticCustomError:
    # A custom error keeps the message verbatim (a ValueError would be prefixed with "Value error, ").
    return PydanticCustomError(kind, message)


# --- keep_alive -----------------------------------------------------------------------------------------

def parse_keep_alive(value: Any) -> float | None:
    """Ollama's keep_alive as seconds for the pool: None (absent: the server default), 0 (unload after the
    request), a positive number of seconds, or FOREVER for any negative value.

    Accepts what Ollama accepts: a number of seconds (300, 0, -1) or a Go duration string ("5m", "1h30m",
    "10s", "-1m"); a bare number in a string ("300") is taken as seconds too. Raises ValueError otherwise.
    """
    if value is None:
        return None
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ValueError(f"invalid keep_alive {value!r}: expected a duration string or a number of seconds")
    try:
        seconds = parse_duration(value)
    except ValueError:
        raise ValueError(f"invalid keep_alive {value!r}: use a duration such as \"5m\", \"1h30m\" or \"10s\", "
                         "a number of seconds, 0 to unload, or -1 to keep the model loaded") from None
    if math.isnan(seconds) or (math.isinf(seconds) and seconds > 0):
        raise ValueError(f"invalid keep_alive {value!r}")
    return FOREVER if seconds < 0 else seconds


# --- model names ----------------------------------------------------------------------------------------

def normalize_model_name(name: str) -> str:
    """An Ollama model name as the pool knows it: `smollm2-135m:latest` -> `smollm2-135m`, and Ollama's
    Hugging Face syntax `hf.co/org/repo:Q4_K_M` -> our `hf://org/repo:Q4_K_M`."""
    name = name.strip().removesuffix(LATEST_TAG)
    for prefix in ("hf.co/", "huggingface.co/"):
        if name.startswith(prefix):
            return "hf://" + name[len(prefix):]
    return name


def ollama_model_name(name: str) -> str:
    """How Ollama shows a model: always with a tag (`smollm2-135m` -> `smollm2-135m:latest`)."""
    if name.startswith("hf://"):
        name = "hf.co/" + name[len("hf://"):]
    return name if ":" in name.rsplit("/", 1)[-1] else name + LATEST_TAG


# --- requests -------------------------------------------------------------------------------------------

class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


_INT_OPTIONS = ("num_predict", "top_k", "seed", "num_ctx", "num_keep", "repeat_last_n", "mirostat",
                "num_batch", "num_gpu", "main_gpu", "num_thread")


class Options(_Strict):
    """Ollama's `options` (the Modelfile parameters). None means "not given": the defaults above apply."""

    # unknown options are kept to be named in a 400 (the document says none is accepted)
    model_config = ConfigDict(extra="allow", strict=True, json_schema_extra={"additionalProperties": False})

    # sampling: mapped to SamplingParams
    # -1 (or any negative): until the context is full; 0 is refused
    num_predict: Optional[int] = Field(default=None, json_schema_extra={"not": {"const": 0}})
    temperature: Optional[float] = Field(default=None, ge=0.0)
    top_k: Optional[int] = Field(default=None, ge=0)  # 0 disables it
    top_p: Optional[float] = Field(default=None, gt=0.0, le=1.0)
    min_p: Optional[float] = Field(default=None, ge=0.0, le=1.0)
    seed: Optional[int] = None  # negative: random, as Ollama's default -1
    stop: Optional[list[str]] = None
    repeat_penalty: Optional[float] = Field(default=None, gt=0.0)
    presence_penalty: Optional[float] = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: Optional[float] = Field(default=None, ge=-2.0, le=2.0)
    num_ctx: Optional[int] = Field(default=None, gt=0)  # must fit the served per-request context
    speculative: Optional[bool] = None  # quantserve's own: false opts out of speculative decoding
    # sampling we do not implement: a 400 unless left at Ollama's default
    repeat_last_n: Optional[int] = Field(default=None, json_schema_extra={"enum": [DEFAULT_REPEAT_LAST_N, None]})
    mirostat: Optional[int] = Field(default=None, json_schema_extra={"enum": [0, None]})
    mirostat_tau: Optional[float] = None
    mirostat_eta: Optional[float] = None
    typical_p: Optional[float] = Field(default=None, json_schema_extra={"enum": [1.0, None]})
    # tail-free sampling (older Ollama releases): a 400 unless 1.0
    tfs_z: Optional[float] = Field(default=None, json_schema_extra={"enum": [1.0, None]})
    # Ollama runner knobs: type-checked and ignored (the server's plan decides these)
    num_keep: Optional[int] = None
    penalize_newline: Optional[bool] = None
    numa: Optional[bool] = None
    num_batch: Optional[int] = None
    num_gpu: Optional[int] = None
    main_gpu: Optional[int] = None
    low_vram: Optional[bool] = None
    f16_kv: Optional[bool] = None
    logits_all: Optional[bool] = None
    vocab_only: Optional[bool] = None
    use_mmap: Optional[bool] = None
    use_mlock: Optional[bool] = None
    embedding_only: Optional[bool] = None
    num_thread: Optional[int] = None

    @field_validator(*_INT_OPTIONS, mode="before")
    @classmethod
    def _whole_numbers(cls, value: Any) -> Any:
        # Go decodes JSON numbers as float64 and truncates into int options; we accept whole floats only.
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [value]
        if value is not None and not (isinstance(value, list) and all(isinstance(s, str) for s in value)):
            raise _fail("stop_type", "Input should be a string or a list of strings")
        return value

    def unsupported(self) -> str | None:
        """The first option set to something we cannot honour, described, or None."""
        if self.model_extra:
            return (f"unknown option(s): {', '.join(sorted(self.model_extra))}; not an Ollama option this "
                    "server implements, so remove them")
        if self.mirostat:
            return f"mirostat sampling is not supported (got mirostat={self.mirostat}); omit it or send 0"
        if self.tfs_z is not None and self.tfs_z != 1.0:
            return f"tail-free sampling is not supported (got tfs_z={self.tfs_z}); omit it or send 1.0"
        if self.typical_p is not None and self.typical_p != 1.0:
            return f"typical_p sampling is not supported (got {self.typical_p}); omit it or send 1.0"
        if self.repeat_last_n is not None and self.repeat_last_n != DEFAULT_REPEAT_LAST_N:
            return (f"repeat_last_n is fixed at {DEFAULT_REPEAT_LAST_N} tokens here (got {self.repeat_last_n}); "
                    "omit it")
        if self.num_predict == 0:
            return "num_predict must be positive, or -1 to generate until the context is full"
        return None


def _keep_alive_field(value: Any) -> float | None:
    try:
        return parse_keep_alive(value)
    except ValueError as exc:
        raise _fail("keep_alive", str(exc)) from None


def _check_format(value: Any) -> Any:
    """"json", a JSON schema (an object), or nothing; the schema itself is checked when the request is
    turned into ours (serve/api/ollama/request.py)."""
    if value is None or value == "":
        return None
    if value == "json" or isinstance(value, dict):
        return value
    raise _fail("format", f"format must be \"json\" or a JSON schema, got {value!r}")


def _check_images(value: Any) -> None:
    if value:
        raise _fail("images", "images are not supported: this server serves text-only models")
    return None


THINK_LEVELS = ("low", "medium", "high")  # gpt-oss's thinking levels (harmony)
# What the OpenAPI document says `format` and `keep_alive` accept (their validators above decide).
FORMAT_SCHEMA = {"anyOf": [{"enum": ["json", ""]}, {"type": "object"}, {"type": "null"}],
                 "description": '"json", or a JSON schema the answer must follow'}
KEEP_ALIVE_SCHEMA = {"anyOf": [{"type": "number"}, {"type": "null"},
                               {"type": "string",
                                "pattern": r"^-?([0-9]+(\.[0-9]+)?|([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+)$"}],
                     "description": 'how long the model stays loaded after the request: seconds, or a duration '
                                    '("5m", "1h30m"); 0 unloads it, negative keeps it'}
NO_IMAGES_SCHEMA = {"anyOf": [{"type": "array", "maxItems": 0}, {"type": "null"}],
                    "description": "images are not supported (text-only models)"}


class _GenerationFields(_Strict):
    """What /api/chat and /api/generate share. Unknown keys are kept (model_extra) to be named in a 400."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: str = Field(min_length=1)
    stream: Optional[bool] = True  # Ollama streams unless told otherwise
    format: Any = Field(default=None, json_schema_extra=FORMAT_SCHEMA)
    keep_alive: Any = Field(default=None, json_schema_extra=KEEP_ALIVE_SCHEMA)  # seconds after validation
    options: Optional[Options] = None
    think: Optional[Union[bool, str]] = None  # None: a reasoning model thinks, as Ollama's default
    logprobs: Optional[bool] = Field(default=None, json_schema_extra={"enum": [False, None]})  # not implemented
    top_logprobs: Optional[int] = Field(default=None, json_schema_extra={"type": "null"})

    @field_validator("format", mode="before")
    @classmethod
    def _validate_format(cls, value: Any) -> Any:
        return _check_format(value)

    @field_validator("keep_alive", mode="before")
    @classmethod
    def _parse_keep_alive(cls, value: Any) -> float | None:
        return _keep_alive_field(value)

    @field_validator("think", mode="before")
    @classmethod
    def _check_think(cls, value: Any) -> Any:
        # Whether the model can think (or take a level) is decided once it is known (request.py).
        if value is None or isinstance(value, bool) or value in THINK_LEVELS:
            return value
        raise _fail("think", f"think must be true, false, \"low\", \"medium\" or \"high\", got {value!r}")

    @field_validator("logprobs", mode="before")
    @classmethod
    def _no_logprobs(cls, value: Any) -> Any:
        if value:
            raise _fail("logprobs", "logprobs are not supported on Ollama's API here; omit logprobs (the "
                                    "OpenAI routes /v1/chat/completions and /v1/completions have them)")
        return value

    @field_validator("top_logprobs", mode="before")
    @classmethod
    def _no_top_logprobs(cls, value: Any) -> Any:
        if value is not None:
            raise _fail("top_logprobs", "logprobs are not supported on Ollama's API here; omit top_logprobs")
        return value

    @property
    def unknown_fields(self) -> list[str]:
        return sorted(self.model_extra or {})

    @property
    def can_stream(self) -> bool:
        return self.stream is not False

    @property
    def sampling_options(self) -> Options:
        return self.options or Options()


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant", "tool"]
    content: Optional[str] = ""
    images: Any = Field(default=None, json_schema_extra=NO_IMAGES_SCHEMA)
    thinking: Optional[str] = None  # a previous answer's reasoning; not sent to the template
    tool_calls: Optional[list[dict[str, Any]]] = None
    tool_name: Optional[str] = None

    @field_validator("images", mode="before")
    @classmethod
    def _validate_images(cls, value: Any) -> None:
        return _check_images(value)

    def to_template_dict(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": self.role, "content": self.content or ""}
        if self.tool_calls is not None:
            message["tool_calls"] = self.tool_calls
        if self.tool_name is not None:
            message["name"] = self.tool_name
        return message


class ChatRequest(_GenerationFields):
    messages: list[ChatMessage] = Field(default_factory=list)  # empty: load (or unload) the model only
    # OpenAI's tool shape; checked in serve/api/ollama/request.py. Ollama has no tool_choice: always auto.
    tools: Optional[list[dict[str, Any]]] = None

    @property
    def is_load_only(self) -> bool:
        return not self.messages


class GenerateRequest(_GenerationFields):
    prompt: Optional[str] = ""  # empty: load (or unload) the model only
    system: Optional[str] = None  # replaces the model's default system prompt
    template: Optional[str] = None  # a Go template using .System / .Prompt (see serve/api/ollama/template.py)
    raw: Optional[bool] = False  # the prompt is sent as is, without any template
    suffix: Optional[str] = None
    context: Optional[list[int]] = None
    images: Any = Field(default=None, json_schema_extra=NO_IMAGES_SCHEMA)

    @property
    def is_load_only(self) -> bool:
        return not self.prompt

    @field_validator("images", mode="before")
    @classmethod
    def _validate_images(cls, value: Any) -> None:
        return _check_images(value)

    @field_validator("suffix", mode="before")
    @classmethod
    def _no_suffix(cls, value: Any) -> Any:
        if value:
            raise _fail("suffix", "suffix (fill-in-the-middle) is not supported yet")
        return value

    @field_validator("context", mode="before")
    @classmethod
    def _no_context(cls, value: Any) -> Any:
        if value:
            raise _fail("context", "context (deprecated in Ollama) is not supported; send the conversation "
                                   "to /api/chat instead")
        return value


class ModelRequest(_Strict):
    """/api/show and /api/pull: `model` (or its deprecated name `name`)."""

    model: Optional[str] = None
    name: Optional[str] = None
    verbose: Optional[bool] = None
    stream: Optional[bool] = True
    insecure: Optional[bool] = None

    @property
    def model_name(self) -> str | None:
        return self.model or self.name
