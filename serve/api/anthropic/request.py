"""An Anthropic Messages request as ours: the conversation as chat-template messages (the top-level
`system` becomes the first message), the prompt (a final assistant message is continued: prefill) and its
sampling fields as SamplingParams."""
from __future__ import annotations

from dataclasses import replace
from dataclasses import replace
from typing import Any

from serve.api.anthropic.protocol import ConversationFields, MessagesRequest, joined_text
from serve.api.anthropic.tools import template_messages_of, tool_request
from serve.api.engine_client import EngineClient
from serve.api.generation import Prompt, chat_prompt
from serve.api.reasoning import Thinking
from serve.api.reasoning import Thinking
from serve.sequence import SamplingParams


def template_messages(body: ConversationFields) -> list[dict[str, Any]]:
    """The conversation before the prefill as the model's chat template expects it."""
    system = joined_text(body.system)
    messages = [{"role": "system", "content": system}] if system else []
    for message in body.history:
        messages.extend(template_messages_of(message))
    return messages


def messages_prompt(engine: EngineClient, body: ConversationFields) -> Prompt:
    """The templated conversation with the request's tools; a prefill is written after the assistant's turn
    has opened, so the model continues it (as llama-server does: the template would close a final assistant
    turn). Thinking disabled is turned off in the template where it can be (serve/api/reasoning.py)."""
    disabled = body.thinking is not None and body.thinking.type == "disabled"
    thinking = Thinking(False) if disabled else Thinking()
    prompt = chat_prompt(engine, template_messages(body), tool_request(body), thinking)
    if not body.prefill:
        return prompt
    text = prompt.text + body.prefill
    # The prefill is the model's own text: a call begun in it is not parsed (the parser never saw its start).
    return replace(prompt, text=text, token_ids=engine.tokenize(text), tool_use=None)


def sampling_params(body: MessagesRequest) -> SamplingParams:
    """Anthropic's fields -> ours; what is not given gets Anthropic's defaults (temperature 1, no top-p or
    top-k cut). max_tokens is required by the protocol: the output stops there or at the end of the context."""
    return SamplingParams(
        max_tokens=body.max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=body.top_k or 0,
        stop=tuple(body.stop_sequences),
    )
