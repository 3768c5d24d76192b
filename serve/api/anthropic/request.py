"""An Anthropic Messages request as ours: the conversation as chat-template messages (the top-level
`system` becomes the first message) and its sampling fields as SamplingParams."""
from __future__ import annotations

from typing import Any

from serve.api.anthropic.protocol import ConversationFields, MessagesRequest, joined_text
from serve.sequence import SamplingParams


def template_messages(body: ConversationFields) -> list[dict[str, Any]]:
    """The conversation as the model's chat template expects it."""
    system = joined_text(body.system)
    messages = [{"role": "system", "content": system}] if system else []
    messages.extend({"role": message.role, "content": message.text} for message in body.messages)
    return messages


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
