"""An OpenAI request as ours: its sampling fields as SamplingParams, and a clear 400 for the options we
do not implement (never a silently different answer)."""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from serve.api.engine_client import EngineClient
from serve.api.generation import Prompt, default_num_max_tokens
from serve.api.openai.structured import output_constraint
from serve.api.openai.protocol import UNIMPLEMENTED_FIELDS, ChatCompletionRequest, CompletionRequest, SamplingFields
from serve.api.reasoning import ENABLE_THINKING, Thinking, template_kwargs_of
from serve.api.tools.render import wire_tool_call
from serve.api.tools.spec import ToolRequest, make_tool, make_tool_request
from serve.errors import InvalidRequestError
from serve.sequence import SamplingParams


def check_supported(body: SamplingFields) -> None:
    """Unknown keys and OpenAI options we do not implement: a 400 naming the field."""
    unknown = sorted(body.model_extra or {})
    if unknown:
        raise InvalidRequestError(f"unrecognized request field(s): {', '.join(unknown)}; not part of this API "
                                  "or not implemented by this server, so remove them", param=unknown[0])
    for name, (harmless, advice) in UNIMPLEMENTED_FIELDS.items():
        value = getattr(body, name, None)
        if not any(value == allowed and type(value) is type(allowed) for allowed in harmless):
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
            raise InvalidRequestError(f"{name}={shown}: {advice}", param=name)
    if isinstance(body, ChatCompletionRequest) and body.top_logprobs is not None and not body.logprobs:
        raise InvalidRequestError("top_logprobs needs logprobs: true", param="top_logprobs")
    if isinstance(body, CompletionRequest) and body.echo and body.stream:
        raise InvalidRequestError("echo is not supported with stream: true; send stream: false", param="echo")


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
        speculative=body.speculative is not False,
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


def tool_request(body: ChatCompletionRequest) -> ToolRequest | None:
    """tools, tool_choice and parallel_tool_calls, validated; None when the request offers no tools."""
    tools = [make_tool(index, tool.function.name, tool.function.description, tool.function.parameters)
             for index, tool in enumerate(body.tools or [])]
    choice = body.tool_choice
    if isinstance(choice, str) or choice is None:
        return make_tool_request(tools, choice, None, body.parallel_tool_calls)
    return make_tool_request(tools, None, choice.function.name, body.parallel_tool_calls)


def chat_messages(body: ChatCompletionRequest) -> list[dict[str, Any]]:
    """The conversation as chat templates read it: earlier tool calls with their arguments as objects,
    tool results with the id of the call they answer."""
    messages = []
    for index, message in enumerate(body.messages):
        rendered = message.to_template_dict()
        if message.role == "tool" and not message.tool_call_id:
            raise InvalidRequestError(f"messages[{index}] is a tool result without tool_call_id; set it to the "
                                      "id of the assistant's tool call it answers", param=f"messages[{index}].tool_call_id")
        if message.tool_calls:
            rendered["tool_calls"] = [wire_tool_call(call, f"messages[{index}].tool_calls[{number}]")
                                      for number, call in enumerate(message.tool_calls)]
        messages.append(rendered)
    return messages



def thinking(body: ChatCompletionRequest) -> Thinking:
    """chat_template_kwargs (enable_thinking among them) and reasoning_effort ("none" turns thinking off, as
    llama-server reads it; a level goes to templates that read one)."""
    kwargs = dict(body.chat_template_kwargs or {})
    enabled = kwargs.pop(ENABLE_THINKING, None)
    if enabled is not None and not isinstance(enabled, bool):
        raise InvalidRequestError(f"chat_template_kwargs.enable_thinking must be true or false, got {enabled!r}",
                                  param="chat_template_kwargs.enable_thinking")
    effort = body.reasoning_effort
    if effort == "none":
        if enabled:
            raise InvalidRequestError("reasoning_effort \"none\" turns thinking off, but chat_template_kwargs."
                                      "enable_thinking is true; send one of them", param="reasoning_effort")
        enabled, effort = False, None
    return Thinking(enabled, effort, template_kwargs_of(kwargs, "chat_template_kwargs"))
