"""Messages and tools as the model's chat template reads them.

A template that knows tools gets them as `tools=` (Hugging Face's apply_chat_template convention: OpenAI's
tool shape) and the history as Hugging Face shapes it: an assistant's `tool_calls` with arguments as
objects, `tool` messages with their `tool_call_id`. A template that knows none (the generic format) gets
what it can render: the tools described in the system message, calls written into the assistant's text
in the markup the description asks for, and tool results as user messages:

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

    <tool_response>
    {"temperature": 21}
    </tool_response>
"""
from __future__ import annotations

import json
from typing import Any

from serve.api.tools.formats import ToolFormat
from serve.api.tools.spec import ToolRequest
from serve.errors import InvalidRequestError

GENERIC_INSTRUCTIONS = (
    "You can call these tools; each one's arguments follow its JSON schema:\n{tools}\n\n"
    "To call a tool, answer with one block per call, and nothing else:\n"
    "<tool_call>\n{{\"name\": \"<tool name>\", \"arguments\": {{<the arguments as JSON>}}}}\n</tool_call>\n"
    "The results come back in <tool_response> blocks; then answer the user.")
REQUIRED_INSTRUCTION = "\nYou must call at least one tool now."
NAMED_INSTRUCTION = "\nYou must call the tool {name} now."


def tool_call_arguments(arguments: Any, where: str) -> dict[str, Any]:
    """An earlier call's arguments as an object: OpenAI sends JSON text, Ollama an object."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            raise InvalidRequestError(f"{where} is not valid JSON: {arguments[:80]!r}; send the arguments "
                                      "the tool was called with, as a JSON object", param=where) from None
    if not isinstance(arguments, dict):
        raise InvalidRequestError(f"{where} must be a JSON object, got {type(arguments).__name__}", param=where)
    return arguments


def history_tool_call(call_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """One earlier call in the history, as templates read it."""
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def wire_tool_call(call: Any, where: str) -> dict[str, Any]:
    """An earlier call as OpenAI and Ollama send it in a message's `tool_calls` (`{"id", "function": {"name",
    "arguments"}}`, arguments as JSON text or an object), checked, as templates read it."""
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise InvalidRequestError(f"{where} needs function.name and function.arguments (a JSON object, or JSON "
                                  "text of one)", param=f"{where}.function")
    arguments = tool_call_arguments(function.get("arguments", {}), f"{where}.function.arguments")
    return history_tool_call(str(call.get("id") or ""), function["name"], arguments)


def has_tool_history(messages: list[dict[str, Any]]) -> bool:
    return any(m.get("tool_calls") or m["role"] == "tool" for m in messages)


def template_inputs(messages: list[dict[str, Any]], fmt: ToolFormat,
                    tools: ToolRequest | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """(messages, tools) for the chat template; tools is None when the template is not to see any."""
    shown = tools if tools is not None and tools.is_active else None
    if fmt.tools_in_system_message:
        return _with_system_tools(messages, shown), [t.as_template_dict() for t in shown.tools] if shown else None
    if fmt.uses_template_tools:
        return messages, [t.as_template_dict() for t in shown.tools] if shown else None
    rendered = _calls_as_text(messages)
    if shown:
        rendered = _with_description(rendered, shown)
    return rendered, None


def _calls_as_text(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The history without tool fields: calls in the assistant's text, consecutive results as one user
    message (templates that know no tools may refuse a `tool` role or two user turns in a row)."""
    rendered: list[dict[str, Any]] = []
    previous_was_result = False
    for message in messages:
        if message["role"] == "tool":
            block = f"<tool_response>\n{message.get('content') or ''}\n</tool_response>"
            if previous_was_result:
                rendered[-1]["content"] += "\n" + block
            else:
                rendered.append({"role": "user", "content": block})
            previous_was_result = True
            continue
        previous_was_result = False
        plain = {k: v for k, v in message.items() if k not in ("tool_calls", "tool_call_id")}
        blocks = [_call_block(c["function"]["name"], c["function"]["arguments"])
                  for c in message.get("tool_calls") or ()]
        if blocks:
            plain["content"] = "\n".join(filter(None, [plain.get("content") or "", *blocks]))
        rendered.append(plain)
    return rendered


def _call_block(name: str, arguments: dict[str, Any]) -> str:
    call = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"<tool_call>\n{call}\n</tool_call>"


def _with_description(messages: list[dict[str, Any]], tools: ToolRequest) -> list[dict[str, Any]]:
    """The tools described at the end of the system message (one is added when there is none)."""
    described = [{"name": t.name, "description": t.description, "parameters": t.parameters} for t in tools.tools]
    text = GENERIC_INSTRUCTIONS.format(tools="\n".join(json.dumps(d, ensure_ascii=False) for d in described))
    if tools.choice == "required":
        text += REQUIRED_INSTRUCTION
    elif tools.choice == "named":
        text += NAMED_INSTRUCTION.format(name=tools.named)
    if messages and messages[0]["role"] == "system":
        system = dict(messages[0], content=f"{messages[0].get('content') or ''}\n\n{text}".lstrip())
        return [system, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


PHI4_SYSTEM = "You are a helpful assistant with some tools."  # Microsoft's example for Phi-4-mini


def _with_system_tools(messages: list[dict[str, Any]], tools: ToolRequest | None) -> list[dict[str, Any]]:
    """Phi-4-mini's template: the tools as JSON text in the system message's `tools`, earlier calls written
    into the assistant's text as the model writes them (its template renders only content)."""
    rendered = []
    for message in messages:
        calls = [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]}
                 for c in message.get("tool_calls") or ()]
        plain = {k: v for k, v in message.items() if k != "tool_calls"}
        if calls:
            written = f"<|tool_call|>{json.dumps(calls, ensure_ascii=False)}<|/tool_call|>"
            plain["content"] = "".join(filter(None, [plain.get("content") or "", written]))
        rendered.append(plain)
    if tools is None:
        return rendered
    described = json.dumps([{"name": t.name, "description": t.description, "parameters": t.parameters}
                            for t in tools.tools], ensure_ascii=False)
    if rendered and rendered[0]["role"] == "system":
        return [{**rendered[0], "tools": described}, *rendered[1:]]
    return [{"role": "system", "content": PHI4_SYSTEM, "tools": described}, *rendered]
