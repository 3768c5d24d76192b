"""OutputConstraint -> vLLM's StructuredOutputsParams (no model; vLLM's own class checks the keywords
when vllm imports)."""
from __future__ import annotations

import importlib.util

import pytest

from backends.vllm import structured_output_kwargs
from serve.grammar import gbnf_constraint, json_object_constraint, schema_constraint
from serve.sequence import OutputConstraint

SCHEMA = {"type": "object", "properties": {"age": {"type": "integer", "minimum": 0, "maximum": 9}},
          "required": ["age"], "additionalProperties": False}


def test_vllm_gets_the_checked_grammar_whatever_the_constraint_came_from():
    """The same GBNF as llama.cpp: vLLM's xgrammar given the schema itself allows runs of whitespace and
    integers of any length."""
    for constraint in (schema_constraint(SCHEMA, "json_schema"), json_object_constraint(),
                       gbnf_constraint('root ::= "a"', "grammar")):
        assert structured_output_kwargs(constraint) == {"grammar": constraint.gbnf}
    assert structured_output_kwargs(None) is None


def test_a_lazy_grammar_is_refused_on_vllm():
    with pytest.raises(ValueError, match="lazy"):
        structured_output_kwargs(OutputConstraint(gbnf='root ::= "<tool_call>"', trigger_patterns=("<tool_call>",)))


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")
@pytest.mark.parametrize("constraint", [schema_constraint(SCHEMA, "json_schema"), json_object_constraint(),
                                        gbnf_constraint('root ::= "yes" | "no"', "grammar")])
def test_vllm_accepts_the_keywords(constraint):
    from vllm.sampling_params import StructuredOutputsParams

    StructuredOutputsParams(**structured_output_kwargs(constraint))
