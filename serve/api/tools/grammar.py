"""The grammar of a request's tool calls, in llama.cpp's GBNF, for each format.

`required` and a named tool_choice hold from the first token: the output is one or more calls (exactly
one without parallel_tool_calls), each naming an offered tool (or the named one) with arguments that
match that tool's parameter schema. `auto` leaves the output free until the model writes the call's
marker (a lazy grammar, as llama-server does it); from there the same calls must follow. vLLM runs `auto`
as an xgrammar structural tag (triggered tags) instead, for the formats that can be written as one. Each tool's
schema is converted by the structured-output converter (serve/grammar), its rules renamed apart so the
tools' grammars live side by side in one; a schema feature it cannot enforce is a 400 naming it.

The call text is fixed to one spelling per format, e.g. for hermes

    <tool_call>\\n{"name": "get_weather", "arguments": {...}}\\n</tool_call>

so a small model has nothing to choose but the tool and the argument values.
"""
from __future__ import annotations

import json
import re

from serve.api.tools.formats import ToolFormat
from serve.api.tools.spec import Tool, ToolRequest
from serve.grammar import schema_constraint
from serve.sequence import OutputConstraint

# Harmony (gpt-oss), as the output continues its prompt's `<|start|>assistant`: optional reasoning, then the call.
HARMONY_ANALYSIS = "<|channel|>analysis<|message|>"
HARMONY_NEXT = "<|end|><|start|>assistant"
HARMONY_CALL = "<|channel|>commentary to=functions."
HARMONY_TEXT = 'harmony-text ::= ([^<] | "<" [^|])*'  # text up to the next special token

_RULE = re.compile(r"^([A-Za-z0-9_-]+)\s*::=\s*(.*)$")
# Inside a rule's body: string literals, character classes, token references and repetition counts
# are left alone; every other name is a reference to a rule.
_BODY_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\[(?:[^\]\\]|\\.)*\]|<[^>]*>|\{[0-9, ]*\}|([A-Za-z0-9_-]+)')


def _literal(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def renamed(gbnf: str, prefix: str) -> tuple[str, str]:
    """The grammar with every rule named `prefix` + its name, and the new name of its root."""
    rules = []
    for line in gbnf.splitlines():
        match = _RULE.match(line.strip())
        if match is None:
            if line.strip():
                rules[-1] += " " + line.strip()  # a rule continued on the next line
            continue
        name, body = match.groups()
        body = _BODY_TOKEN.sub(lambda m: prefix + m.group(1) if m.group(1) else m.group(0), body)
        rules.append(f"{prefix}{name} ::= {body}")
    return "\n".join(rules), f"{prefix}root"


def _call_rule(fmt: ToolFormat, tool: Tool, arguments_rule: str) -> str:
    if fmt.name == "gpt_oss":  # harmony: a commentary message addressed to the function
        return f'{_literal(f"{HARMONY_CALL}{tool.name} <|constrain|>json<|message|>")} {arguments_rule}'
    key = "parameters" if fmt.name == "llama3_json" else "arguments"
    head = _literal(f'{{"name": "{tool.name}", "{key}": ')
    call = f'{head} {arguments_rule} "}}"'
    if fmt.end_marker:
        return f'{_literal(fmt.start_markers[0] + chr(10))} {call} {_literal(chr(10) + fmt.end_marker)}'
    return call


def _calls_rule(fmt: ToolFormat, allows_parallel: bool) -> str:
    """The root: the calls in the format's own framing."""
    if fmt.name == "gpt_oss":  # one call ends the turn (<|call|>); reasoning on the analysis channel may come first
        return f"root ::= ({_literal(HARMONY_ANALYSIS)} harmony-text {_literal(HARMONY_NEXT)})? call\n{HARMONY_TEXT}"
    if fmt.opens_list:
        more = ' ("," " " call)*' if allows_parallel else ""
        markers = " | ".join(_literal(marker) for marker in fmt.start_markers)
        return f'root ::= ({markers}) "[" call{more} "]"'
    separator = '"\\n"' if fmt.end_marker else '";" " "'
    more = f" ({separator} call)*" if allows_parallel else ""
    opening = f"{_literal(fmt.start_markers[0])}? " if fmt.can_start_bare else ""
    return f"root ::= {opening}call{more}"


def tool_calls_gbnf(fmt: ToolFormat, tools: tuple[Tool, ...], allows_parallel: bool) -> str:
    """One grammar for calls to any of `tools`."""
    parts, alternatives = [], []
    for index, tool in enumerate(tools):
        schema = schema_constraint(tool.parameters, f"tools[{index}].function.parameters")
        rules, root = renamed(schema.gbnf, f"t{index}-")
        parts.append(rules)
        alternatives.append(_call_rule(fmt, tool, root))
    calls = " | ".join(alternatives)
    return "\n".join([_calls_rule(fmt, allows_parallel), f"call ::= {calls}", *parts]) + "\n"


def structural_tag(fmt: ToolFormat, tools: tuple[Tool, ...], allows_parallel: bool) -> str | None:
    """The lazy grammar of `auto` as an xgrammar structural tag (what vLLM runs): after the format's marker,
    one call per tag, its arguments held by the tool's schema grammar. Only formats whose every call is
    closed by its own end marker in plain text (hermes, generic) can be written so: a list of calls, a bare
    call or special-token markers cannot (None)."""
    if not fmt.end_marker:
        return None
    tags = []
    for index, tool in enumerate(tools):
        begin = f'{fmt.trigger}\n{{"name": "{tool.name}", "arguments": '
        arguments = schema_constraint(tool.parameters, f"tools[{index}].function.parameters").gbnf
        tags.append({"type": "tag", "begin": begin, "content": {"type": "grammar", "grammar": arguments},
                     "end": f"}}\n{fmt.end_marker}"})
    triggered = {"type": "triggered_tags", "triggers": [fmt.trigger], "tags": tags,
                 "stop_after_first": not allows_parallel}
    return json.dumps({"type": "structural_tag", "format": triggered}, ensure_ascii=False)


def tool_call_constraint(fmt: ToolFormat, request: ToolRequest) -> OutputConstraint | None:
    """The constraint of this request's calls: from the first token when forced, lazy for auto."""
    tools = request.callable_tools
    gbnf = tool_calls_gbnf(fmt, tools, request.allows_parallel)
    if request.is_forced:
        return OutputConstraint(gbnf=gbnf)
    markers = (HARMONY_CALL,) if fmt.name == "gpt_oss" else fmt.start_markers if fmt.opens_list else (fmt.trigger,)
    triggers = [re.escape(marker) for marker in markers]
    if fmt.can_start_bare:
        triggers.append(r"^\s*(\{)")  # Llama 3's bare call: the answer opens with its object
    return OutputConstraint(gbnf=gbnf, trigger_patterns=tuple(triggers),
                            structural_tag=structural_tag(fmt, tools, request.allows_parallel))
