"""An OpenAI request as ours: its sampling fields as SamplingParams, and a clear 400 for the options we
do not implement (never a silently different answer)."""
from __future__ import annotations

from dataclasses import replace

from serve.api.engine_client import EngineClient
from serve.api.generation import Prompt, default_num_max_tokens
from serve.api.openai.structured import output_constraint
from serve.api.openai.protocol import ChatCompletionRequest, CompletionRequest, SamplingFields
from serve.errors import InvalidRequestError
from serve.sequence import SamplingParams


def check_supported(body: SamplingFields) -> None:
    """Known OpenAI options we do not implement yet: a 400 naming the option."""
    if body.n is not None and body.n != 1:
        raise InvalidRequestError(f"n>1 is not supported yet (got n={body.n}); send n=1 or omit it", param="n")
    if isinstance(body, ChatCompletionRequest) and body.top_logprobs is not None and not body.logprobs:
        raise InvalidRequestError("top_logprobs needs logprobs: true", param="top_logprobs")
    if isinstance(body, CompletionRequest) and body.echo and body.stream:
        raise InvalidRequestError("echo is not supported with stream: true; send stream: false", param="echo")
    if getattr(body, "suffix", None):
        raise InvalidRequestError("suffix (fill-in-the-middle) is not supported yet", param="suffix")


def sampling_params(body: SamplingFields, num_max_tokens: int) -> SamplingParams:
    """OpenAI's fields -> ours; what is not given gets OpenAI's defaults (temperature 1, top_p 1)."""
    return SamplingParams(
        max_tokens=num_max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=max(0, body.top_k or 0),
        min_p=body.min_p or 0.0,
        seed=body.seed,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        repeat_penalty=1.0 if body.repeat_penalty is None else body.repeat_penalty,
        logit_bias={int(token): bias for token, bias in (body.logit_bias or {}).items()},
        stop=body.stop,
        constraint=output_constraint(body),
    )


def logprob_counts(body: SamplingFields) -> tuple[int | None, int | None]:
    """(num_logprobs, num_prompt_logprobs): None where the request did not ask, so nothing is computed.
    Echo of a token-id prompt needs the prompt tokens' text, which comes with their logprobs."""
    if isinstance(body, ChatCompletionRequest):
        return ((body.top_logprobs or 0) if body.logprobs else None), None
    if isinstance(body, CompletionRequest):
        if not body.echo:
            return body.logprobs, None
        if body.logprobs is None and body.prompt_token_ids is not None:
            return None, 0
        return body.logprobs, body.logprobs
    return None, None


def request_params(engine: EngineClient, prompt: Prompt, body: SamplingFields) -> SamplingParams:
    """The request's sampling parameters; without max_tokens it may use the rest of the context (capped)."""
    num_logprobs, num_prompt_logprobs = logprob_counts(body)
    return replace(sampling_params(body, body.num_max_tokens or default_num_max_tokens(engine, prompt)),
                   num_logprobs=num_logprobs, num_prompt_logprobs=num_prompt_logprobs)
