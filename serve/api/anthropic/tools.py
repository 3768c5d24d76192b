"""Anthropic's tool use as the shared tool machinery's (serve/api/tools/): the request's tools and
tool_choice as a ToolRequest, and tool_use / tool_result blocks of the history as the chat-template
messages every dialect renders (an assistant's `tool_calls`, `tool` messages with their `tool_call_id`).

    tool_choice auto -> auto, any -> required, tool -> the named function, none -> none;
    disable_parallel_tool_use -> at most one call
"""
from __future__ import annotations

from typing import Any

from serve.api.anthropic.protocol import (ConversationFields, InputMessage, TextBlock, ToolResultBlock,
                                          ToolUseBlock, joined_text)
from serve.api.tools.render import history_tool_call
from serve.api.tools.spec import ToolRequest, make_tool, make_tool_request

CHOICES = {"auto": "auto", "any": "required", "none": "none"}  # "tool" names its function


def tool_request(body: ConversationFields) -> ToolRequest | None:
    """The request's tools and tool_choice, validated (400s naming the field); None without tools."""
    tools = [make_tool(index, tool.name, tool.description, tool.input_schema)
             for index, tool in enumerate(body.tools or [])]
    choice = body.tool_choice
    if choice is None:
        return make_tool_request(tools, None, None, None)
    parallel = None if choice.disable_parallel_tool_use is None else not choice.disable_parallel_tool_use
    if choice.type == "tool":
        return make_tool_request(tools, None, choice.name, parallel)
    return make_tool_request(tools, CHOICES[choice.type], None, parallel)


def _result_text(block: ToolResultBlock) -> str:
    text = joined_text(block.content)
    return f"Error: {text}" if block.is_error else text  # the template has no field for a failed call


def template_messages_of(message: InputMessage) -> list[dict[str, Any]]:
    """One Anthropic message as chat-template messages: an assistant's tool_use blocks become its
    `tool_calls`; a user's tool_result blocks become `tool` messages (first: they answer the calls just
    made), then its text, if any, a user message."""
    if message.role == "assistant":
        rendered: dict[str, Any] = {"role": "assistant", "content": message.text}
        calls = [history_tool_call(block.id, block.name, block.input) for block in message.blocks_of(ToolUseBlock)]
        if calls:
            rendered["tool_calls"] = calls
        return [rendered]
    results = [{"role": "tool", "tool_call_id": block.tool_use_id, "content": _result_text(block)}
               for block in message.blocks_of(ToolResultBlock)]
    has_text = not isinstance(message.content, list) or any(isinstance(b, TextBlock) for b in message.content)
    return [*results, {"role": "user", "content": message.text}] if has_text or not results else results
