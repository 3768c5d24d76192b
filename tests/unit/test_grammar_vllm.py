"""OutputConstraint -> vLLM's StructuredOutputsParams (no model; vLLM's own class checks the keywords
when vllm imports)."""
from __future__ import annotations

import importlib.util

import pytest

from backends.vllm import structured_output_kwargs
from serve.grammar import gbnf_constraint, json_object_constraint, schema_constraint
from serve.api.tools.formats import FORMATS, GENERIC, HERMES
from serve.api.tools.grammar import tool_call_constraint
from serve.api.tools.spec import make_tool, make_tool_request
from serve.sequence import OutputConstraint

SCHEMA = {"type": "object", "properties": {"age": {"type": "integer", "minimum": 0, "maximum": 9}},
          "required": ["age"], "additionalProperties": False}
WEATHER = make_tool(0, "get_weather", "", SCHEMA)


def test_vllm_gets_the_checked_grammar_whatever_the_constraint_came_from():
    """The same GBNF as llama.cpp: vLLM's xgrammar given the schema itself allows runs of whitespace and
    integers of any length."""
    for constraint in (schema_constraint(SCHEMA, "json_schema"), json_object_constraint(),
                       gbnf_constraint('root ::= "a"', "grammar")):
        assert structured_output_kwargs(constraint) == {"grammar": constraint.gbnf}
    assert structured_output_kwargs(None) is None


def test_a_lazy_grammar_without_a_structural_tag_is_refused_on_vllm():
    with pytest.raises(ValueError, match="lazy"):
        structured_output_kwargs(OutputConstraint(gbnf='root ::= "<tool_call>"', trigger_patterns=("<tool_call>",)))


def test_a_lazy_grammar_runs_as_its_structural_tag():
    constraint = tool_call_constraint(GENERIC, make_tool_request([WEATHER], "auto", None, True))
    assert structured_output_kwargs(constraint) == {"structural_tag": constraint.structural_tag}


def test_only_formats_with_closed_plain_text_calls_have_a_structural_tag():
    request = make_tool_request([WEATHER], "auto", None, True)
    with_tag = {fmt.name for fmt in FORMATS.values() if tool_call_constraint(fmt, request).structural_tag}
    assert with_tag == {"hermes", "generic"}
    assert tool_call_constraint(HERMES, make_tool_request([WEATHER], "required", None, True)).structural_tag is None


def _accepts(structural_tag: str, text: str) -> bool:
    xgrammar = pytest.importorskip("xgrammar")
    from xgrammar.testing import _is_grammar_accept_string

    return _is_grammar_accept_string(xgrammar.Grammar.from_structural_tag(structural_tag), text)


@pytest.mark.parametrize("parallel", [True, False])
def test_xgrammar_holds_auto_calls_to_their_schema_after_the_marker(parallel):
    """vLLM's own grammar library: free text, then the marker starts a call whose arguments must match the
    tool's schema (the 135M test model seldom writes the marker by itself, so this is checked here)."""
    tag = tool_call_constraint(HERMES, make_tool_request([WEATHER], "auto", None, parallel)).structural_tag
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"age": 7}}\n</tool_call>'
    assert _accepts(tag, "Just text, no call.")
    assert _accepts(tag, "Let me look. " + call)
    too_old = '<tool_call>\n{"name": "get_weather", "arguments": {"age": 70}}\n</tool_call>'
    assert not _accepts(tag, "Let me look. " + too_old)
    assert not _accepts(tag, '<tool_call>\n{"name": "get_time", "arguments": {"age": 7}}\n</tool_call>')
    assert _accepts(tag, call + " and " + call) == parallel


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")
@pytest.mark.parametrize("constraint", [schema_constraint(SCHEMA, "json_schema"), json_object_constraint(),
                                        gbnf_constraint('root ::= "yes" | "no"', "grammar"),
                                        tool_call_constraint(HERMES, make_tool_request([WEATHER], "auto", None, True))])
def test_vllm_accepts_the_keywords(constraint):
    from vllm.sampling_params import StructuredOutputsParams

    StructuredOutputsParams(**structured_output_kwargs(constraint))
