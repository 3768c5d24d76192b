"""serve/grammar: JSON Schema -> GBNF with every keyword enforced or refused, integer bounds, GBNF checks.
No model: llama.cpp's grammar parser needs no vocabulary."""
from __future__ import annotations

import re

import pytest

from serve.errors import InvalidRequestError
from serve.grammar import gbnf_constraint, json_object_constraint, schema_constraint
from serve.grammar.gbnf import can_parse_gbnf
from serve.grammar.integers import IntegerRange, integer_alternatives
from serve.grammar.schema import schema_to_gbnf

PARAM = "response_format.json_schema.schema"


def _regex(bounds: IntegerRange) -> re.Pattern:
    """The integer alternatives as a Python regex, to test them against every number of a span."""
    def term(digit_class):
        low, high, num_min, num_max = digit_class
        chars = re.escape(low) if low == high else f"[{low}-{high}]"
        return chars + ("{%d,}" % num_min if num_max is None else "{%d,%d}" % (num_min, num_max))
    return re.compile("|".join("".join(term(c) for c in alt) for alt in integer_alternatives(bounds)))


@pytest.mark.parametrize("low, high", [
    (None, None), (0, None), (5, None), (-7, None), (None, 0), (None, -3), (None, 42), (0, 0), (-5, 5),
    (-120, -99), (123, 456), (10, 99), (7, 1234), (-1000, 1000), (99, 101), (250, None), (None, -250)])
def test_integer_bounds_match_exactly_the_numbers_in_range(low, high):
    pattern = _regex(IntegerRange(low, high))
    for number in range(-2100, 2101):
        inside = (low is None or number >= low) and (high is None or number <= high)
        assert bool(pattern.fullmatch(str(number))) == inside, number
    for numeral in ("00", "01", "-0", "-01", "007"):  # JSON has no leading zeros
        assert not pattern.fullmatch(numeral)


def test_empty_integer_range_is_refused():
    with pytest.raises(InvalidRequestError, match="no integer lies between"):
        schema_constraint({"type": "integer", "minimum": 5, "exclusiveMaximum": 5}, PARAM)


ENFORCEABLE = [
    {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0,
                                                                           "maximum": 150}},
     "required": ["name", "age"], "additionalProperties": False},
    {"type": "array", "items": {"type": "string", "enum": ["a", "b"]}, "minItems": 1, "maxItems": 3},
    {"type": ["string", "null"], "maxLength": 5},
    {"type": "string", "format": "date-time"},
    {"type": "string", "format": "uuid"},
    {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"},
    {"$defs": {"point": {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]}},
     "type": "array", "items": {"$ref": "#/$defs/point"}},
    {"anyOf": [{"type": "integer"}, {"const": "none"}], "title": "described", "description": "annotations pass"},
    {"type": "object", "properties": {"tag": {"type": "string"}}, "nullable": True},
    {"type": "array", "maxItems": 2},
]


@pytest.mark.parametrize("schema", ENFORCEABLE)
def test_enforceable_schemas_become_grammars_llama_cpp_parses(schema):
    constraint = schema_constraint(schema, PARAM)
    assert can_parse_gbnf(constraint.gbnf)
    assert constraint.json_schema is not None and not constraint.is_lazy


@pytest.mark.parametrize("schema, fragment", [
    ({"type": "number", "minimum": 0}, "bounds on a number (minimum)"),
    ({"type": "object", "minProperties": 1}, "minProperties at the top level cannot be enforced"),
    ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "uniqueItems"),
    ({"type": "integer", "multipleOf": 3}, "multipleOf"),
    ({"type": "string", "format": "email"}, "string format 'email'"),
    ({"type": "string", "pattern": "[a-z]+"}, "must be anchored"),
    ({"type": "string", "pattern": "^[a-z]+$", "maxLength": 3}, "pattern and minLength/maxLength"),
    ({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["b"]}, "required b"),
    ({"type": "object", "properties": {"a": {"not": {"type": "string"}}}}, "not at properties.a"),
    ({"$ref": "#/$defs/a", "maxLength": 2, "$defs": {"a": {"type": "string"}}}, "maxLength beside $ref"),
    ({"$ref": "https://example.com/schema.json"}, "only local references"),
    ({"type": "object", "if": {"type": "object"}, "then": {"required": ["a"]}}, "if, then"),
    ({"minLength": 2}, "without a type"),
])
def test_what_the_grammar_would_not_enforce_is_a_400_naming_it(schema, fragment):
    with pytest.raises(InvalidRequestError) as caught:
        schema_constraint(schema, PARAM)
    assert fragment in caught.value.message and caught.value.param == PARAM


@pytest.mark.parametrize("schema, fragment", [
    ({"type": "strnig"}, "at type"), ({"type": "object", "required": "name"}, "at required"),
    ({"type": "array", "minItems": -1}, "at minItems"), ([1, 2], "must be a JSON schema object")])
def test_an_invalid_schema_is_a_400(schema, fragment):
    with pytest.raises(InvalidRequestError) as caught:
        schema_constraint(schema, "json_schema")
    assert fragment in caught.value.message and caught.value.param == "json_schema"


def test_conversions_are_cached_per_schema_text():
    schema = {"type": "object", "properties": {"cached": {"type": "boolean"}}}
    schema_constraint(schema, PARAM)
    hits = schema_to_gbnf.cache_info().hits
    assert schema_constraint(dict(schema), PARAM) is schema_constraint(schema, PARAM)
    assert schema_to_gbnf.cache_info().hits >= hits  # the constraint itself is cached above the conversion


def test_json_strings_exclude_raw_control_characters():
    """A raw newline inside a JSON string is invalid JSON; the grammar must not allow it."""
    char_rule = next(line for line in json_object_constraint().gbnf.splitlines() if line.startswith("char ::="))
    assert r"\x00-\x1F" in char_rule


def test_json_object_is_any_object():
    constraint = json_object_constraint()
    assert constraint.is_json_object and constraint.json_schema is None and "root ::= object" in constraint.gbnf


@pytest.mark.parametrize("grammar", ['root ::= foo', 'root ::= "x', 'start ::= "a"', "", "root ::= <|im_end|>"])
def test_an_invalid_gbnf_is_a_400(grammar):
    with pytest.raises(InvalidRequestError) as caught:
        gbnf_constraint(grammar, "grammar")
    assert caught.value.param == "grammar"


def test_a_valid_gbnf_is_kept_as_given():
    assert gbnf_constraint('root ::= "yes" | "no"', "grammar").gbnf == 'root ::= "yes" | "no"'
