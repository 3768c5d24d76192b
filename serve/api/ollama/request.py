"""An Ollama request as ours: the prompt (chat template, raw, or the request's own `template`), the output
budget (`num_predict` within `num_ctx`) and `options` as SamplingParams."""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from serve.api.engine_client import EngineClient
from serve.api.generation import Prompt, chat_prompt, text_prompt
from serve.api.ollama.protocol import (DEFAULT_REPEAT_PENALTY, DEFAULT_TEMPERATURE, DEFAULT_TOP_K, DEFAULT_TOP_P,
                                       ChatRequest, GenerateRequest, Options)
from serve.api.ollama.template import TemplateError, render_prompt_template
from serve.api.reasoning import HARMONY, THINK_TAGS, Thinking
from serve.api.tools.render import wire_tool_call
from serve.api.tools.spec import ToolRequest, make_tool, make_tool_request
from serve.errors import ContextLengthError, InvalidRequestError
from serve.grammar import json_object_constraint, schema_constraint
from serve.sequence import OutputConstraint, SamplingParams


def check_fields(body: ChatRequest | GenerateRequest) -> None:
    """Top-level keys this server does not know: a 400 naming them (Ollama would ignore them)."""
    if body.unknown_fields:
        raise InvalidRequestError(f"unrecognized request field(s): {', '.join(body.unknown_fields)}; not part of "
                                  "Ollama's API or not implemented by this server, so remove them",
                                  param=body.unknown_fields[0])


def can_show_thinking(think: bool | str | None, reasoning_format: str | None, model: str) -> bool:
    """Ollama's `think` for a model whose catalog entry has `reasoning_format` (None: it does not reason):
    True or absent shows a reasoning model's thinking in `thinking`, False turns it off (or hides what the
    template cannot turn off). Asking a model that does not reason to think is a 400, as Ollama answers; a
    level ("low"...) means something only to harmony models (gpt-oss), whose template reads it."""
    if isinstance(think, str):
        if reasoning_format != HARMONY:
            raise InvalidRequestError(f"{model!r} does not support thinking levels; send think true or false",
                                      param="think")
        return True
    if think and reasoning_format not in (THINK_TAGS, HARMONY):
        raise InvalidRequestError(f"{model!r} does not support thinking", param="think")
    return think is not False


def sampling_params(options: Options, num_max_tokens: int) -> SamplingParams:
    """Ollama's options -> ours; what is not given gets Ollama's defaults (temperature 0.8, top_k 40, ...)."""
    def given(value: Any, default: Any) -> Any:
        return default if value is None else value

    return SamplingParams(
        max_tokens=num_max_tokens, temperature=given(options.temperature, DEFAULT_TEMPERATURE),
        top_p=given(options.top_p, DEFAULT_TOP_P), top_k=given(options.top_k, DEFAULT_TOP_K),
        min_p=given(options.min_p, 0.0), seed=options.seed if options.seed is not None and options.seed >= 0 else None,
        presence_penalty=given(options.presence_penalty, 0.0), frequency_penalty=given(options.frequency_penalty, 0.0),
        repeat_penalty=given(options.repeat_penalty, DEFAULT_REPEAT_PENALTY),
        stop=tuple(s for s in options.stop or () if s), speculative=options.speculative is not False)


def _context_limit(engine: EngineClient, options: Options) -> int:
    """The per-request context: the server's, or a smaller num_ctx; a larger num_ctx is a 400."""
    served = engine.capabilities.context_length
    if options.num_ctx is not None and options.num_ctx > served:
        raise InvalidRequestError(
            f"num_ctx {options.num_ctx} is larger than the context this server gives each request of "
            f"{engine.model_name} ({served} tokens); send num_ctx <= {served}, or restart the server with "
            f"--ctx {options.num_ctx}", param="options.num_ctx")
    return options.num_ctx or served


def output_constraint(output_format: Any) -> OutputConstraint | None:
    """Ollama's `format`: "json" (any JSON object) or a JSON schema the output must be valid under."""
    if output_format is None:
        return None
    return json_object_constraint() if output_format == "json" else schema_constraint(output_format, "format")


def request_params(engine: EngineClient, prompt: Prompt, options: Options,
                   output_format: Any = None) -> SamplingParams:
    """The sampling parameters; the output may use what num_ctx (or the server's context) leaves, and
    matches `format` when one is given."""
    unsupported = options.unsupported()
    if unsupported:
        raise InvalidRequestError(unsupported, param="options")
    limit = _context_limit(engine, options)
    num_prompt_tokens = len(prompt.token_ids)
    if options.num_ctx is not None and num_prompt_tokens >= limit:
        raise ContextLengthError(f"the prompt has {num_prompt_tokens} tokens, but num_ctx is {limit} "
                                 "(prompt plus output); shorten the prompt or raise num_ctx",
                                 param="options.num_ctx")
    num_left = max(1, limit - num_prompt_tokens)
    wanted = options.num_predict
    num_max_tokens = num_left if wanted is None or wanted < 0 else min(wanted, num_left)
    return replace(sampling_params(options, num_max_tokens), constraint=output_constraint(output_format))


def chat_request_prompt(engine: EngineClient, body: ChatRequest) -> Prompt:
    """/api/chat: the conversation (and the request's tools) rendered with the model's chat template."""
    return chat_prompt(engine, chat_messages(body), tool_request(body), thinking(engine, body))


def thinking(engine: EngineClient, body: ChatRequest | GenerateRequest) -> Thinking:
    """Ollama's think: false turns thinking off in the template (where it can; otherwise it is hidden), a
    level ("low", "medium", "high") goes to templates that read one (gpt-oss)."""
    think = body.think
    if isinstance(think, str):
        can_show_thinking(think, engine.reasoning_format, body.model)  # levels only for harmony models
        return Thinking(effort=think)
    return Thinking(think)


def tool_request(body: ChatRequest) -> ToolRequest | None:
    """Ollama's tools (OpenAI's shape); the model may call them or answer (Ollama has no tool_choice)."""
    tools = []
    for index, tool in enumerate(body.tools or []):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict):
            raise InvalidRequestError(f"tools[{index}] must be {{\"type\": \"function\", \"function\": {{\"name\": ..., "
                                      "\"parameters\": {...}}}}", param=f"tools[{index}]")
        tools.append(make_tool(index, function.get("name"), function.get("description"), function.get("parameters")))
    return make_tool_request(tools, None, None, None)


def chat_messages(body: ChatRequest) -> list[dict[str, Any]]:
    """The conversation as chat templates read it: earlier calls (arguments are objects in Ollama) in
    Hugging Face's shape, a tool result named after its tool."""
    messages = []
    for index, message in enumerate(body.messages):
        rendered = message.to_template_dict()
        if message.tool_calls:
            rendered["tool_calls"] = [wire_tool_call(call, f"messages[{index}].tool_calls[{number}]")
                                      for number, call in enumerate(message.tool_calls)]
        messages.append(rendered)
    return messages



def generate_request_prompt(engine: EngineClient, body: GenerateRequest) -> Prompt:
    """/api/generate: the prompt as it is (raw), in the request's own template, or in the model's chat
    template (then with its messages: vLLM templates those)."""
    prompt = body.prompt or ""
    if body.raw:  # the caller templated it: its thinking can only be hidden (think false), not turned off
        return text_prompt(engine, prompt, splits_reasoning=True)
    if body.template:
        try:
            return text_prompt(engine, render_prompt_template(body.template, prompt=prompt, system=body.system),
                               splits_reasoning=True)
        except TemplateError as exc:
            raise InvalidRequestError(str(exc), param="template") from None
    messages = [{"role": "system", "content": body.system}] if body.system else []
    messages.append({"role": "user", "content": prompt})
    return chat_prompt(engine, messages, thinking=thinking(engine, body))
