"""The tool-call grammars: one per format and choice, accepted by llama.cpp's GBNF parser, each tool's
schema rules renamed apart; a schema the grammar cannot enforce is a 400 naming the tool's parameters."""
from __future__ import annotations

import pytest

from serve.api.tools.formats import GENERIC, GPT_OSS, HERMES, LLAMA3_JSON, MISTRAL, PHI4_MINI_JSON
from serve.api.tools.grammar import HARMONY_CALL, renamed, tool_call_constraint
from serve.api.tools.spec import make_tool, make_tool_request
from serve.errors import InvalidRequestError
from serve.grammar.gbnf import can_parse_gbnf

WEATHER = make_tool(0, "get_weather", "", {"type": "object", "properties": {"city": {"type": "string"}},
                                           "required": ["city"]})
TIME = make_tool(1, "get_time", "", {"type": "object", "properties": {"hours": {"type": "integer", "minimum": 0,
                                                                                  "maximum": 48}}, "required": ["hours"]})


@pytest.mark.parametrize("fmt", [HERMES, GENERIC, LLAMA3_JSON, MISTRAL, PHI4_MINI_JSON, GPT_OSS],
                         ids=lambda f: f.name)
@pytest.mark.parametrize("choice,named,parallel", [("required", None, True), ("required", None, False),
                                                   (None, "get_time", False), ("auto", None, True)])
def test_grammars_parse(fmt, choice, named, parallel):
    constraint = tool_call_constraint(fmt, make_tool_request([WEATHER, TIME], choice, named, parallel))
    assert can_parse_gbnf(constraint.gbnf), constraint.gbnf
    assert constraint.is_lazy == (choice == "auto")
    if named:
        assert "get_time" in constraint.gbnf and "get_weather" not in constraint.gbnf
    if choice == "auto":
        assert constraint.trigger_patterns[0].replace("\\", "") == (HARMONY_CALL if fmt is GPT_OSS else fmt.trigger)


def test_hermes_call_text_is_fixed():
    gbnf = tool_call_constraint(HERMES, make_tool_request([WEATHER], "required", None, False)).gbnf
    assert gbnf.startswith("root ::= call\n")
    assert '"<tool_call>\\n" "{\\"name\\": \\"get_weather\\", \\"arguments\\": " t0-root "}" "\\n</tool_call>"' in gbnf


def test_rules_renamed_apart_but_literals_classes_and_counts_kept():
    gbnf = 'root ::= "{" space kv "}" [a-z]{2,4} "root"\nkv ::= "\\"k\\"" space ( x | root )\nspace ::= " "?'
    text, root = renamed(gbnf, "t3-")
    assert root == "t3-root"
    assert text.splitlines()[0] == 't3-root ::= "{" t3-space t3-kv "}" [a-z]{2,4} "root"'
    assert text.splitlines()[1] == 't3-kv ::= "\\"k\\"" t3-space ( t3-x | t3-root )'


def test_a_schema_the_grammar_cannot_enforce_names_the_tool():
    tool = make_tool(1, "f", "", {"type": "object", "properties": {"a": {"type": "string", "contentEncoding": "base64"}}})
    with pytest.raises(InvalidRequestError) as caught:
        tool_call_constraint(HERMES, make_tool_request([WEATHER, tool], "required", None, True))
    assert caught.value.param == "tools[1].function.parameters"


def test_phi4_calls_open_with_either_marker_and_auto_starts_on_both():
    request = make_tool_request([WEATHER], "auto", None, True)
    constraint = tool_call_constraint(PHI4_MINI_JSON, request)
    assert constraint.gbnf.startswith('root ::= ("functools" | "<|tool_call|>") "[" call ("," " " call)* "]"')
    assert [p.replace("\\", "") for p in constraint.trigger_patterns] == ["functools", "<|tool_call|>"]


def test_gpt_oss_call_is_a_commentary_message_after_optional_reasoning():
    gbnf = tool_call_constraint(GPT_OSS, make_tool_request([WEATHER], "required", None, True)).gbnf
    assert gbnf.startswith('root ::= ("<|channel|>analysis<|message|>" harmony-text "<|end|><|start|>assistant")? call')
    assert '"<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>" t0-root' in gbnf
