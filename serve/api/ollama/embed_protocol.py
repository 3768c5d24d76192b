"""Pydantic models of Ollama's embedding API: POST /api/embed (input: a string or a list of strings; truncate,
dimensions, keep_alive, options) and the older POST /api/embeddings (prompt; answers {"embedding": [...]}).

Strict like the rest of Ollama's models here: a wrong type is a 400 naming the field, an unknown key a 400
naming it. `options` are Ollama's (unknown ones are refused); of them only num_ctx matters to an embedding
(it lowers the tokens an input may have), the sampling ones change nothing and are accepted.
"""
from __future__ import annotations

from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from serve.api.ollama.protocol import Options, parse_keep_alive


class EmbeddingFields(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)  # unknown keys are kept to be named in a 400

    model: str = Field(min_length=1)
    keep_alive: Any = None  # seconds after validation; see parse_keep_alive
    options: Optional[Options] = None

    @field_validator("keep_alive", mode="before")
    @classmethod
    def _parse_keep_alive(cls, value: Any) -> float | None:
        try:
            return parse_keep_alive(value)
        except ValueError as exc:
            raise PydanticCustomError("keep_alive", str(exc)) from None

    @property
    def unknown_fields(self) -> list[str]:
        return sorted(self.model_extra or {})


class EmbedRequest(EmbeddingFields):
    input: Union[str, list[str]] = ""  # empty: load the model only (Ollama answers "embeddings": [])
    truncate: Optional[bool] = True  # cut an input longer than the context instead of refusing it
    dimensions: Optional[int] = Field(default=None, ge=0)  # 0: the model's own size

    @property
    def inputs(self) -> list[str]:
        if isinstance(self.input, str):
            return [self.input] if self.input else []
        return self.input


class EmbeddingsRequest(EmbeddingFields):
    prompt: str = ""  # empty: load the model only (Ollama answers "embedding": [])


class EmbedResponse(BaseModel):
    model: str
    embeddings: list[list[float]]  # L2-normalised
    total_duration: int = 0  # nanoseconds
    load_duration: int = 0
    prompt_eval_count: int = 0


class EmbeddingsResponse(BaseModel):
    embedding: list[float]  # the model's own pooled vector, not normalised (as Ollama's /api/embeddings)
