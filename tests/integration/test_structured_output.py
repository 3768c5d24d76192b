"""Structured output on the real server, both backends: OpenAI `response_format` (json_object, json_schema),
llama-server's `json_schema` and `grammar` fields, Ollama's `format`, through the official openai, ollama
and instructor clients. Every output is parsed and validated with `jsonschema`, sampled at temperature 0.8
over several seeds: a 135M model writes valid JSON only because the grammar holds it. Unenforceable or
invalid schemas and grammars are 400s in each dialect's shape.
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import ollama
import openai
import pytest
from pydantic import BaseModel, Field

SEEDS = (1, 2, 3)
NUM_SCHEMA_SEEDS = 2  # seeds per schema in the test over every schema (2 x 22 requests)
TEMPERATURE = 0.8
MAX_TOKENS = 160  # the schemas bound their strings and arrays, so a complete answer fits
NUM_CLIENT_THREADS = 8
ASK = [{"role": "user", "content": "Reply with JSON describing a person, a city or a product."}]
NAME = {"type": "string", "minLength": 1, "maxLength": 16}

SCHEMAS = {
    "object-required": {"type": "object", "properties": {"name": NAME, "age": {"type": "integer"}},
                        "required": ["name", "age"]},
    "no-additional": {"type": "object", "properties": {"name": NAME, "city": NAME}, "required": ["name"],
                      "additionalProperties": False},
    "optional-only": {"type": "object", "properties": {"x": {"type": "boolean"}, "y": {"type": "null"}},
                      "additionalProperties": False},
    "array-bounds": {"type": "array", "items": NAME, "minItems": 2, "maxItems": 4},
    "array-of-objects": {"type": "array", "maxItems": 2, "items": {
        "type": "object", "properties": {"id": {"type": "integer", "minimum": 1, "maximum": 99}},
        "required": ["id"], "additionalProperties": False}},
    "enum": {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}},
             "required": ["color"], "additionalProperties": False},
    "mixed-enum": {"enum": ["yes", 1, None, True]},
    "const": {"type": "object", "properties": {"kind": {"const": "person"}, "name": NAME},
              "required": ["kind", "name"], "additionalProperties": False},
    "any-of": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 9}, {"type": "boolean"}]},
    "one-of": {"oneOf": [{"type": "object", "properties": {"cat": NAME}, "required": ["cat"],
                          "additionalProperties": False},
                         {"type": "object", "properties": {"dog": NAME}, "required": ["dog"],
                          "additionalProperties": False}]},
    "one-of-discriminated": {"$defs": {"cat": {"type": "object",
                                               "properties": {"kind": {"const": "cat"}, "name": NAME},
                                               "required": ["kind", "name"], "additionalProperties": False}},
                             "oneOf": [{"$ref": "#/$defs/cat"},
                                       {"type": "object", "properties": {"kind": {"const": "dog"},
                                                                         "age": {"type": "integer", "minimum": 0,
                                                                                 "maximum": 30}},
                                        "required": ["kind", "age"], "additionalProperties": False}]},
    "ref-defs": {"$defs": {"city": {"type": "object", "properties": {"name": NAME, "zip": {"type": "integer",
                                                                                           "minimum": 1000,
                                                                                           "maximum": 99999}},
                                    "required": ["name", "zip"], "additionalProperties": False}},
                 "type": "object", "properties": {"home": {"$ref": "#/$defs/city"},
                                                  "work": {"$ref": "#/$defs/city"}},
                 "required": ["home", "work"], "additionalProperties": False},
    "nullable-type-list": {"type": "object", "properties": {"nick": {"type": ["string", "null"], "maxLength": 8}},
                           "required": ["nick"], "additionalProperties": False},
    "nullable-openapi": {"type": "object", "properties": {"age": {"type": "integer", "minimum": 0, "maximum": 120,
                                                                  "nullable": True}},
                         "required": ["age"], "additionalProperties": False},
    "format-date": {"type": "object", "properties": {"born": {"type": "string", "format": "date"}},
                    "required": ["born"], "additionalProperties": False},
    "format-date-time": {"type": "string", "format": "date-time"},
    "format-uuid": {"type": "object", "properties": {"id": {"type": "string", "format": "uuid"}},
                    "required": ["id"], "additionalProperties": False},
    "pattern": {"type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"}},
                "required": ["code"], "additionalProperties": False},
    "integer-bounds": {"type": "object", "properties": {
        "small": {"type": "integer", "minimum": -5, "maximum": 5},
        "big": {"type": "integer", "exclusiveMinimum": 1000, "maximum": 1000000},
        "negative": {"type": "integer", "minimum": -999, "maximum": -10}},
        "required": ["small", "big", "negative"], "additionalProperties": False},
    "string-length": {"type": "object", "properties": {"word": {"type": "string", "minLength": 3,
                                                                 "maxLength": 6}},
                      "required": ["word"], "additionalProperties": False},
    "number-and-bool": {"type": "object", "properties": {"price": {"type": "number"}, "ok": {"type": "boolean"}},
                        "required": ["price", "ok"], "additionalProperties": False},
    "nested": {"type": "object", "properties": {"person": {"type": "object", "properties": {
        "name": NAME, "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3}},
        "required": ["name", "tags"], "additionalProperties": False}},
        "required": ["person"], "additionalProperties": False},
    "tuple": {"type": "array", "prefixItems": [{"type": "integer", "minimum": 0, "maximum": 9}, {"type": "boolean"}]},
}


def _validator(schema: dict) -> jsonschema.Validator:
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def _problem(schema: dict, text: str, finish: str) -> str | None:
    """Why the output does not satisfy the schema, or None."""
    if finish != "stop":
        return f"finish_reason {finish!r} for {text!r}"
    try:
        value = json.loads(text)
    except ValueError as exc:
        return f"not JSON ({exc}): {text!r}"
    errors = [error.message for error in _validator(schema).iter_errors(value)]
    return f"{errors} for {text!r}" if errors else None


def _chat_json_schema(client: openai.OpenAI, model: str, name: str, seed: int) -> str | None:
    schema = SCHEMAS[name]
    response = client.chat.completions.create(
        model=model, messages=ASK, temperature=TEMPERATURE, seed=seed, max_tokens=MAX_TOKENS,
        response_format={"type": "json_schema", "json_schema": {"name": name.replace("-", "_"), "schema": schema,
                                                                "strict": True}})
    choice = response.choices[0]
    problem = _problem(schema, choice.message.content, choice.finish_reason)
    return f"{name} seed {seed}: {problem}" if problem else None


def test_schemas_cover_the_features():
    assert len(SCHEMAS) >= 20
    for schema in SCHEMAS.values():
        jsonschema.Draft202012Validator.check_schema(schema)


def test_every_output_validates_against_its_schema(server):
    """Every schema, several seeds, at temperature 0.8 (requests in parallel: the server batches them; a
    request may wait for others, hence the long client timeout)."""
    jobs = [(name, seed) for name in SCHEMAS for seed in SEEDS[:NUM_SCHEMA_SEEDS]]
    with server.openai(timeout=900) as client, ThreadPoolExecutor(NUM_CLIENT_THREADS) as pool:
        problems = [p for p in pool.map(lambda job: _chat_json_schema(client, server.model, *job), jobs) if p]
    assert not problems, "\n".join(problems)


def test_json_object(server, client):
    for seed in SEEDS:
        response = client.chat.completions.create(model=server.model, messages=ASK, temperature=TEMPERATURE, seed=seed,
                                                  max_tokens=MAX_TOKENS, response_format={"type": "json_object"})
        choice = response.choices[0]
        if choice.finish_reason == "stop":
            assert isinstance(json.loads(choice.message.content), dict)
        else:  # an object with free strings may be longer than max_tokens: still a JSON object's beginning
            assert choice.finish_reason == "length" and choice.message.content.startswith("{")


def test_text_response_format_is_free_text(server, client):
    response = client.chat.completions.create(model=server.model, messages=ASK, temperature=0, max_tokens=8,
                                              response_format={"type": "text"})
    assert response.choices[0].message.content


def test_stream_under_a_schema_reassembles_into_valid_json(server, client):
    schema = SCHEMAS["ref-defs"]
    stream = client.chat.completions.create(
        model=server.model, messages=ASK, temperature=TEMPERATURE, seed=7, max_tokens=MAX_TOKENS, stream=True,
        response_format={"type": "json_schema", "json_schema": {"name": "cities", "schema": schema}})
    chunks = [chunk for chunk in stream if chunk.choices]
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert _problem(schema, text, chunks[-1].choices[0].finish_reason) is None


def test_max_tokens_cuts_a_constrained_output_with_length(server, client):
    response = client.chat.completions.create(
        model=server.model, messages=ASK, temperature=0, max_tokens=4,
        response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMAS["nested"]}})
    choice = response.choices[0]
    assert choice.finish_reason == "length" and response.usage.completion_tokens == 4
    assert choice.message.content.startswith("{")


def test_greedy_constrained_output_is_deterministic(server, client):
    def once() -> str:
        return client.chat.completions.create(
            model=server.model, messages=ASK, temperature=0, max_tokens=MAX_TOKENS,
            response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMAS["const"]}},
        ).choices[0].message.content
    first = once()
    assert first == once() and json.loads(first)["kind"] == "person"


def test_completions_with_json_schema_and_grammar(server, client):
    schema = SCHEMAS["integer-bounds"]
    response = client.completions.create(model=server.model, prompt="A JSON object:", temperature=TEMPERATURE, seed=3,
                                         max_tokens=MAX_TOKENS, extra_body={"json_schema": schema})
    assert _problem(schema, response.choices[0].text, response.choices[0].finish_reason) is None
    grammar = 'root ::= ("yes" | "no") " " [0-9] [0-9]?'
    for seed in SEEDS:
        response = client.completions.create(model=server.model, prompt="Answer:", temperature=TEMPERATURE, seed=seed,
                                             max_tokens=16, extra_body={"grammar": grammar})
        choice = response.choices[0]
        assert choice.finish_reason == "stop"
        answer, number = choice.text.split(" ")
        assert answer in ("yes", "no") and number.isdigit() and len(number) <= 2


def test_completions_with_response_format(server, client):
    schema = SCHEMAS["enum"]
    response = client.completions.create(
        model=server.model, prompt="Pick a color as JSON:", temperature=TEMPERATURE, seed=1, max_tokens=MAX_TOKENS,
        extra_body={"response_format": {"type": "json_schema", "json_schema": {"name": "c", "schema": schema}}})
    assert _problem(schema, response.choices[0].text, response.choices[0].finish_reason) is None


class Person(BaseModel):
    name: str = Field(max_length=16)
    age: int = Field(ge=0, le=120)
    languages: list[str] = Field(max_length=3)


def test_instructor_gets_a_validated_model(server):
    import instructor

    with server.openai() as raw:
        client = instructor.from_openai(raw, mode=instructor.Mode.JSON_SCHEMA)
        for seed in SEEDS:
            person = client.chat.completions.create(model=server.model, response_model=Person, max_retries=0, seed=seed,
                                                    temperature=TEMPERATURE, max_tokens=MAX_TOKENS,
                                                    messages=[{"role": "user", "content": "Invent a person."}])
            assert isinstance(person, Person) and 0 <= person.age <= 120


def test_ollama_format_json_and_schema(server):
    client = ollama.Client(host=server.base_url)
    options = {"temperature": TEMPERATURE, "num_predict": MAX_TOKENS}
    schema = SCHEMAS["array-of-objects"]
    for seed in SEEDS:
        reply = client.chat(model=server.model, messages=ASK, format=schema, options={**options, "seed": seed})
        assert _problem(schema, reply.message.content, "stop" if reply.done_reason == "stop" else "length") is None
        generated = client.generate(model=server.model, prompt="A person as JSON:", format=Person.model_json_schema(),
                                    options={**options, "seed": seed})
        Person.model_validate_json(generated.response)
    reply = client.chat(model=server.model, messages=ASK, format="json", options={**options, "seed": 1})
    if reply.done_reason == "stop":
        assert isinstance(json.loads(reply.message.content), dict)


REFUSED = [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strnig"}}}},
     "response_format.json_schema.schema", "not a valid JSON schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "number", "maximum": 3}}}}, "response_format.json_schema.schema", "bounds on a number"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "minProperties": 2}}}}, "response_format.json_schema.schema", "minProperties"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format.json_schema",
     "needs json_schema.schema"),
    ({"response_format": {"type": "xml"}}, "response_format", "response_format"),
    ({"grammar": "root ::= undefined-rule"}, "grammar", "not a valid GBNF grammar"),
    ({"json_schema": {"type": "string", "format": "email"}}, "json_schema", "string format 'email'"),
    ({"grammar": 'root ::= "a"', "response_format": {"type": "json_object"}}, "grammar", "send only one of"),
]


@pytest.mark.parametrize("extra, param, fragment", REFUSED)
def test_what_cannot_be_enforced_is_a_400_naming_the_field(server, client, extra, param, fragment):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=server.model, messages=ASK, max_tokens=8, extra_body=extra)
    error = caught.value.body
    assert fragment in error["message"] and param in (error.get("param") or error["message"])


def test_ollama_refuses_an_unenforceable_format_with_a_400(server):
    client = ollama.Client(host=server.base_url)
    with pytest.raises(ollama.ResponseError) as caught:
        client.chat(model=server.model, messages=ASK, format={"type": "string", "pattern": "[a-z]"})
    assert caught.value.status_code == 400 and "must be anchored" in caught.value.error
