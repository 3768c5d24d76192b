"""Pydantic models of OpenAI's embeddings API (POST /v1/embeddings): the request and the answer.

`input` is a string, a list of strings, one token array or a list of token arrays (OpenAI's four shapes);
an unknown key is a 400 naming it, as on every other route.
"""
from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

_INPUT_SHAPES = "a string, a list of strings, a token array or a list of token arrays"


def _is_token_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(item, int) and not isinstance(item, bool) for item in value)


class EmbeddingRequest(BaseModel):
    # Unknown keys are kept (model_extra) so that the route can refuse them by name.
    model_config = ConfigDict(extra="allow")

    model: Optional[str] = None  # absent: the first loaded model
    input: Union[str, list[str], list[list[int]]]  # one token array arrives as a list of one
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Optional[int] = Field(default=None, gt=0)  # Matryoshka models only (serve/api/pooling.py)
    user: Optional[str] = None  # accepted: it changes no answer

    @field_validator("input", mode="before")
    @classmethod
    def _one_of_four_shapes(cls, value: Any) -> Any:
        if isinstance(value, str):
            return value
        if not isinstance(value, list) or not value:
            raise PydanticCustomError("input", f"input must be {_INPUT_SHAPES}, not empty")
        if _is_token_array(value):
            return [value]
        if all(isinstance(item, str) for item in value) or all(_is_token_array(item) for item in value):
            return value
        raise PydanticCustomError("input", f"input must be {_INPUT_SHAPES} (one kind, no empty arrays)")

    @property
    def inputs(self) -> list[str] | list[list[int]]:
        return [self.input] if isinstance(self.input, str) else self.input


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: Union[list[float], str]  # floats, or base64 of little-endian float32 with encoding_format base64


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
