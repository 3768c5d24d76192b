"""oneOf is enforced exactly or refused: a grammar writes it as a choice between its branches (anyOf), which
is exact only when no value can match two branches. Exclusive branches (by type, const, enum, a required
discriminator, a closed object) are accepted; branches that may overlap are a 400 naming oneOf and the two
branches, never a silently looser grammar."""
from __future__ import annotations

import jsonschema
import pytest

from serve.errors import InvalidRequestError
from serve.grammar import schema_constraint
from serve.grammar.gbnf import can_parse_gbnf

STRING, INTEGER, NUMBER = {"type": "string", "maxLength": 8}, {"type": "integer"}, {"type": "number"}


def _kind(name: str, **extra) -> dict:
    return {"type": "object", "properties": {"kind": {"const": name}, **extra}, "required": ["kind"]}


EXCLUSIVE = {
    "types": {"oneOf": [STRING, INTEGER, {"type": "boolean"}, {"type": "null"}]},
    "consts": {"oneOf": [{"const": "a"}, {"const": "b"}, {"const": 1}]},
    "enums": {"oneOf": [{"enum": ["a", "b"]}, {"enum": ["c", 3]}]},
    "enum-vs-type": {"oneOf": [{"enum": [1, 2]}, STRING]},
    "discriminator": {"oneOf": [_kind("cat", lives={"type": "integer"}), _kind("dog", breed=STRING)]},
    "discriminator-by-ref": {"$defs": {"cat": _kind("cat"), "dog": _kind("dog")},
                             "oneOf": [{"$ref": "#/$defs/cat"}, {"$ref": "#/$defs/dog"}]},
    "closed-objects": {"oneOf": [
        {"type": "object", "properties": {"cat": STRING}, "required": ["cat"], "additionalProperties": False},
        {"type": "object", "properties": {"dog": STRING}, "required": ["dog"], "additionalProperties": False}]},
    "nullable-vs-integer": {"oneOf": [{"type": "string", "nullable": True}, INTEGER]},
    "nested": {"type": "object", "properties": {"pet": {"oneOf": [_kind("cat"), _kind("dog")]}},
               "required": ["pet"]},
}
OVERLAPPING = {
    "integer-and-number": ({"oneOf": [INTEGER, NUMBER]}, "branches 0 and 1"),
    "same-type": ({"oneOf": [STRING, {"type": "string", "pattern": "^a+$"}]}, "branches 0 and 1"),
    "enum-inside-type": ({"oneOf": [{"enum": ["x", 2]}, STRING]}, "branches 0 and 1"),
    "open-objects": ({"oneOf": [{"type": "object", "properties": {"a": STRING}, "required": ["a"]},
                                {"type": "object", "properties": {"b": STRING}, "required": ["b"]}]},
                     "branches 0 and 1"),
    "same-discriminator": ({"oneOf": [_kind("cat"), _kind("dog"), _kind("cat", age=INTEGER)]}, "branches 0 and 2"),
    "anything": ({"oneOf": [{}, STRING]}, "branches 0 and 1"),
    "nested": ({"type": "object", "properties": {"n": {"oneOf": [INTEGER, NUMBER]}}}, "at properties.n"),
}


@pytest.mark.parametrize("name", list(EXCLUSIVE))
def test_exclusive_branches_become_a_grammar(name):
    constraint = schema_constraint(EXCLUSIVE[name], "response_format")
    assert can_parse_gbnf(constraint.gbnf)


@pytest.mark.parametrize("name", list(OVERLAPPING))
def test_branches_that_may_overlap_are_a_400_naming_oneof(name):
    schema, fragment = OVERLAPPING[name]
    with pytest.raises(InvalidRequestError) as refused:
        schema_constraint(schema, "response_format")
    message = str(refused.value)
    assert "oneOf" in message and fragment in message and "send anyOf" in message, message


def test_overlapping_examples_really_overlap():
    """The refusals are not over-cautious here: each has a value valid under two branches (jsonschema)."""
    witnesses = {"integer-and-number": 3, "same-type": "aa", "enum-inside-type": "x",
                 "open-objects": {"a": "", "b": ""}, "same-discriminator": {"kind": "cat"}, "anything": "s", "nested": {"n": 1}}
    for name, value in witnesses.items():
        assert not jsonschema.Draft202012Validator(OVERLAPPING[name][0]).is_valid(value), name
        relaxed = jsonschema.Draft202012Validator(_as_any_of(OVERLAPPING[name][0]))
        assert relaxed.is_valid(value), name  # valid under anyOf: two branches match, so oneOf rejects it


def _as_any_of(schema):
    if isinstance(schema, dict):
        return {("anyOf" if k == "oneOf" else k): _as_any_of(v) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_as_any_of(item) for item in schema]
    return schema


def test_the_anyof_advice_holds():
    assert can_parse_gbnf(schema_constraint({"anyOf": [INTEGER, NUMBER]}, "response_format").gbnf)


def test_an_overlapping_oneof_is_a_400_over_http():
    from tests.unit.test_generation import MODEL, FakeEngine, client_for

    schema = OVERLAPPING["integer-and-number"][0]
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}}}
    response = client_for(FakeEngine()).post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("response_format")
    assert "oneOf at the top level: branches 0 and 1 may both match" in response.json()["error"]["message"]
