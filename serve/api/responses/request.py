"""A Responses request as ours: the conversation (a stored previous response's, then this input) as
chat-template messages, the instructions as the system message, and the sampling fields as SamplingParams."""
from __future__ import annotations

from typing import Any

from serve.api.engine_client import EngineClient
from serve.api.generation import Prompt, default_num_max_tokens
from serve.api.responses.protocol import ResponsesRequest
from serve.api.responses.store import ResponseStore
from serve.sequence import SamplingParams


def conversation(body: ResponsesRequest, store: ResponseStore) -> list[dict[str, Any]]:
    """The previous response's conversation (a 404 when it is not stored), then this request's input.
    The previous instructions are not carried over (as OpenAI: a request's instructions are its own)."""
    previous = []
    if body.previous_response_id is not None:
        previous = store.get(body.previous_response_id, param="previous_response_id").conversation
    return [*previous, *body.input_messages]


def template_messages(body: ResponsesRequest, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    system = [{"role": "system", "content": body.instructions}] if body.instructions else []
    return [*system, *messages]


def sampling_params(engine: EngineClient, prompt: Prompt, body: ResponsesRequest) -> SamplingParams:
    """OpenAI's defaults (temperature 1, top_p 1); without max_output_tokens the rest of the context (capped)."""
    return SamplingParams(
        max_tokens=body.max_output_tokens or default_num_max_tokens(engine, prompt),
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
    )
