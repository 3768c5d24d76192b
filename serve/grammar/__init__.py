"""Constraints on generated text (structured output), built at the API edge and enforced by the backends:
JSON Schema -> GBNF with a check that every keyword is enforced (schema.py, integers.py), GBNF checked
by llama.cpp's parser (gbnf.py). Each constructor raises InvalidRequestError naming the request field.

A leaf package: the API builds constraints with it and backends may use it; it imports only
serve.sequence and serve.errors (and llama-cpp-python's converter and parser).
"""
from __future__ import annotations

import functools
import json
from typing import Any

from serve.errors import InvalidRequestError
from serve.grammar.gbnf import can_parse_gbnf
from serve.grammar.schema import SchemaFeatureError, check_enforceable, schema_to_gbnf
from serve.sequence import OutputConstraint

# Any JSON object (OpenAI's json_object, Ollama's "json").
JSON_OBJECT_SCHEMA = {"type": "object"}


def _check_valid(schema: Any, param: str) -> None:
    """A valid JSON Schema by its own meta-schema (the draft its $schema names, else the latest)."""
    import jsonschema

    if not isinstance(schema, dict):
        raise InvalidRequestError(f"{param} must be a JSON schema object, got {type(schema).__name__}", param=param)
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "the top level"
        raise InvalidRequestError(f"{param} is not a valid JSON schema: {exc.message} (at {where})",
                                  param=param) from None


@functools.lru_cache(maxsize=256)
def _schema_constraint(schema_text: str) -> OutputConstraint:
    schema = json.loads(schema_text)
    check_enforceable(schema)
    return OutputConstraint(gbnf=schema_to_gbnf(schema_text), json_schema=schema_text)


def schema_constraint(schema: Any, param: str) -> OutputConstraint:
    """Output that is a JSON document valid under `schema`; a 400 naming `param` for an invalid schema or
    one with a keyword the grammar would not enforce."""
    _check_valid(schema, param)
    try:
        return _schema_constraint(json.dumps(schema, ensure_ascii=False, separators=(",", ":")))
    except SchemaFeatureError as exc:
        raise InvalidRequestError(f"{param}: {exc}", param=param) from None


def json_object_constraint() -> OutputConstraint:
    """Output that is one JSON object."""
    constraint = schema_constraint(JSON_OBJECT_SCHEMA, "response_format")
    return OutputConstraint(gbnf=constraint.gbnf, is_json_object=True)


def gbnf_constraint(text: Any, param: str) -> OutputConstraint:
    """Output matching a GBNF grammar (llama-server's `grammar` field; root rule `root`)."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidRequestError(f"{param} must be a non-empty GBNF grammar string", param=param)
    if not can_parse_gbnf(text):
        raise InvalidRequestError(f"{param} is not a valid GBNF grammar: llama.cpp could not parse it (a syntax "
                                  "error, an undefined rule, left recursion, a missing root rule, or a token "
                                  "reference, which is not accepted here)", param=param)
    return OutputConstraint(gbnf=text)
