"""The tool-call parsers on outputs in each family's format, whole and split at every possible point
(markers cut in the middle included): the same content and calls, names before their arguments."""
from __future__ import annotations

import itertools
import json

import pytest

from serve.api.tools.calls import ToolCallDelta, ToolCallDone
from serve.api.tools.formats import GENERIC, HERMES, LLAMA3_JSON, MISTRAL
from serve.api.tools.parser import ToolCallParser, parse_all

# Outputs as these families write them (Qwen 2.5 for hermes, Llama 3.1/3.2, Mistral v0.3 and v11+).
HERMES_TWO_CALLS = ('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", '
                    '"unit": "celsius"}}\n</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": '
                    '{"tz": "Europe/Paris"}}\n</tool_call>')
LLAMA3_CALL = '{"name": "get_weather", "parameters": {"city": "Paris, \\"FR\\"", "days": [1, 2]}}'
LLAMA3_PYTHON_TAG = '<|python_tag|>{"name": "a", "parameters": {"x": 1}}; {"name": "b", "parameters": {}}'
MISTRAL_LIST = '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "f", "arguments": {}}]'
MISTRAL_V11 = '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]get_time[ARGS]{"tz": "UTC"}'

CASES = [
    (HERMES, HERMES_TWO_CALLS, "Let me check.",
     [("get_weather", {"city": "Paris", "unit": "celsius"}), ("get_time", {"tz": "Europe/Paris"})]),
    (GENERIC, HERMES_TWO_CALLS, "Let me check.",
     [("get_weather", {"city": "Paris", "unit": "celsius"}), ("get_time", {"tz": "Europe/Paris"})]),
    (LLAMA3_JSON, LLAMA3_CALL, "", [("get_weather", {"city": 'Paris, "FR"', "days": [1, 2]})]),
    (LLAMA3_JSON, LLAMA3_PYTHON_TAG, "", [("a", {"x": 1}), ("b", {})]),
    (MISTRAL, MISTRAL_LIST, "", [("get_weather", {"city": "Paris"}), ("f", {})]),
    (MISTRAL, MISTRAL_V11, "", [("get_weather", {"city": "Paris"}), ("get_time", {"tz": "UTC"})]),
    (HERMES, "No tools needed: 2 < 3 and <tool is not a call.", "No tools needed: 2 < 3 and <tool is not a call.", []),
    (LLAMA3_JSON, "The answer is {not a call}.", "The answer is {not a call}.", []),
]


def _run(fmt, chunks):
    ids = itertools.count()
    parser = ToolCallParser(fmt, new_id=lambda: f"call_{next(ids)}")
    events = []
    for chunk in chunks:
        events += parser.feed(chunk)
    return events + parser.finish(), parser


def _summary(events):
    content = "".join(e for e in events if isinstance(e, str))
    names, arguments = {}, {}
    for event in events:
        if isinstance(event, ToolCallDelta):
            if event.name is not None:
                assert event.index not in names and event.index not in arguments, "the name comes first, once"
                names[event.index] = event.name
            arguments[event.index] = arguments.get(event.index, "") + event.arguments
    calls = [(names[i], json.loads(arguments[i])) for i in sorted(names)]
    done = [(e.call.name, json.loads(e.call.arguments)) for e in events if isinstance(e, ToolCallDone)]
    assert done == calls
    return content, calls


@pytest.mark.parametrize("fmt,text,content,calls", CASES)
def test_whole_output(fmt, text, content, calls):
    assert _summary(_run(fmt, [text])[0]) == (content, calls)
    assert parse_all(fmt, text)[0] == content


@pytest.mark.parametrize("fmt,text,content,calls", CASES)
def test_every_split_point(fmt, text, content, calls):
    for cut in range(1, len(text)):
        assert _summary(_run(fmt, [text[:cut], text[cut:]])[0]) == (content, calls), cut


@pytest.mark.parametrize("fmt,text,content,calls", CASES)
def test_one_character_at_a_time(fmt, text, content, calls):
    events, parser = _run(fmt, list(text))
    assert _summary(events) == (content, calls)
    assert [(c.name, json.loads(c.arguments)) for c in parser.calls] == calls


def test_arguments_stream_as_they_are_generated():
    parser = ToolCallParser(HERMES)
    events = parser.feed('<tool_call>\n{"name": "get_weather", "arguments": {"ci')
    assert events == [ToolCallDelta(0, id=events[0].id, name="get_weather"), ToolCallDelta(0, arguments='{"ci')]
    assert parser.feed('ty": "Paris"}') == [ToolCallDelta(0, arguments='ty": "Paris"}')]
    done = parser.feed("}\n</tool_call>")
    assert [type(e) for e in done] == [ToolCallDone] and done[0].call.arguments == '{"city": "Paris"}'
    assert events[0].id.startswith("call_") and len(events[0].id) == 29


def test_keys_in_another_order_are_read_whole():
    content, calls = parse_all(HERMES, '<tool_call>{"arguments": {"a": 1}, "name": "f"}</tool_call>')
    assert content == "" and [(c.name, json.loads(c.arguments)) for c in calls] == [("f", {"a": 1})]


def test_arguments_as_a_json_string():
    _, calls = parse_all(HERMES, '<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}</tool_call>')
    assert json.loads(calls[0].arguments) == {"a": 1}


def test_a_marker_without_a_call_is_content():
    text = "<tool_call>not json</tool_call> done"
    content, calls = parse_all(HERMES, text)
    assert calls == [] and "not json" in content


def test_output_cut_inside_a_call():
    parser = ToolCallParser(HERMES)
    events = parser.feed('<tool_call>{"name": "f", "arguments": {"a": "x') + parser.finish()
    assert parser.calls[0].name == "f" and parser.calls[0].arguments == '{"a": "x'
    assert not any(isinstance(e, str) for e in events)


def test_output_cut_before_the_name_is_content():
    content, calls = parse_all(HERMES, '<tool_call>{"na')
    assert calls == [] and content == '<tool_call>{"na'


def test_max_calls_drops_the_rest():
    parser = ToolCallParser(HERMES, max_calls=1)
    events = parser.feed(HERMES_TWO_CALLS) + parser.finish()
    assert [c.name for c in parser.calls] == ["get_weather"]
    assert {e.index for e in events if not isinstance(e, str)} == {0}


def test_a_partial_marker_after_calls_is_dropped_but_kept_in_plain_text():
    assert parse_all(HERMES, HERMES_TWO_CALLS + "\n<tool")[0] == "Let me check."
    assert parse_all(HERMES, "Hello <tool")[0] == "Hello <tool"
    assert parse_all(HERMES, "Hello\n")[0] == "Hello\n"
