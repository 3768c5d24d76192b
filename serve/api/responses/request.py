"""A Responses request as ours: the conversation (a stored previous response's, then this input) as
chat-template messages (function calls as the assistant's `tool_calls`, their outputs as `tool` messages),
the instructions as the system message, the function tools as a ToolRequest, and the sampling fields and
text.format as SamplingParams."""
from __future__ import annotations

from typing import Any

from serve.api.engine_client import EngineClient
from serve.api.generation import Prompt, default_num_max_tokens
from serve.api.responses.protocol import (FunctionCallItem, FunctionCallOutputItem, MessageItem, NamedFunction,
                                          ResponsesRequest)
from serve.api.responses.store import ResponseStore
from serve.api.tools.render import history_tool_call, tool_call_arguments
from serve.api.tools.spec import ToolRequest, make_tool, make_tool_request
from serve.grammar import json_object_constraint, schema_constraint
from serve.sequence import OutputConstraint, SamplingParams


def template_messages_of(items: list[Any]) -> list[dict[str, Any]]:
    """Input items as chat-template messages; a function call joins the assistant message just before it
    (a response's output is its message, then its calls), else opens one."""
    messages: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        if isinstance(item, MessageItem):
            messages.append(item.to_template_dict())
        elif isinstance(item, FunctionCallItem):
            arguments = tool_call_arguments(item.arguments, f"input[{index}].arguments")
            call = history_tool_call(item.call_id, item.name, arguments)
            if not (messages and messages[-1]["role"] == "assistant"):
                messages.append({"role": "assistant", "content": ""})
            messages[-1].setdefault("tool_calls", []).append(call)
        elif isinstance(item, FunctionCallOutputItem):
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": item.text})
    return messages


def conversation(body: ResponsesRequest, store: ResponseStore) -> list[dict[str, Any]]:
    """The previous response's conversation (a 404 when it is not stored), then this request's input.
    The previous instructions are not carried over (as OpenAI: a request's instructions are its own)."""
    previous = []
    if body.previous_response_id is not None:
        previous = store.get(body.previous_response_id, param="previous_response_id").conversation
    return [*previous, *template_messages_of(body.input_items)]


def template_messages(body: ResponsesRequest, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    system = [{"role": "system", "content": body.instructions}] if body.instructions else []
    return [*system, *messages]


def tool_request(body: ResponsesRequest) -> ToolRequest | None:
    """The function tools and tool_choice, validated (400s naming the field); None without tools."""
    tools = [make_tool(index, tool.name, tool.description, tool.parameters)
             for index, tool in enumerate(body.tools or [])]
    choice = body.tool_choice
    if isinstance(choice, NamedFunction):
        return make_tool_request(tools, None, choice.name, body.parallel_tool_calls)
    return make_tool_request(tools, choice, None, body.parallel_tool_calls)


def output_constraint(body: ResponsesRequest) -> OutputConstraint | None:
    """text.format: free text, a JSON object, or JSON valid under a schema."""
    text_format = body.text.format if body.text is not None else None
    if text_format is None or text_format.type == "text":
        return None
    if text_format.type == "json_object":
        return json_object_constraint()
    return schema_constraint(text_format.schema_, "text.format.schema")


def sampling_params(engine: EngineClient, prompt: Prompt, body: ResponsesRequest) -> SamplingParams:
    """OpenAI's defaults (temperature 1, top_p 1); without max_output_tokens the rest of the context (capped)."""
    return SamplingParams(
        max_tokens=body.max_output_tokens or default_num_max_tokens(engine, prompt),
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        constraint=output_constraint(body),
    )
