"""OpenAI's structured output as an OutputConstraint: `response_format` (json_object, json_schema) and
llama-server's extension fields `json_schema` and `grammar` (GBNF), on chat completions and completions.
At most one of them per request; a schema or grammar that cannot be enforced is a 400 naming the field."""
from __future__ import annotations

from serve.api.openai.protocol import SamplingFields
from serve.errors import InvalidRequestError
from serve.grammar import gbnf_constraint, json_object_constraint, schema_constraint
from serve.sequence import OutputConstraint


def _asked(body: SamplingFields) -> list[str]:
    response_format = body.response_format
    fields = (("response_format", response_format is not None and response_format.type != "text"),
              ("json_schema", body.json_schema is not None), ("grammar", body.grammar is not None))
    return [name for name, given in fields if given]


def output_constraint(body: SamplingFields) -> OutputConstraint | None:
    """What the output must match, or None for free text."""
    asked = _asked(body)
    if len(asked) > 1:
        raise InvalidRequestError(f"send only one of {' and '.join(asked)}: each constrains the whole output",
                                  param=asked[1])
    if not asked:
        return None
    if asked[0] == "grammar":
        return gbnf_constraint(body.grammar, "grammar")
    if asked[0] == "json_schema":
        return schema_constraint(body.json_schema, "json_schema")
    if body.response_format.type == "json_object":
        return json_object_constraint()
    json_schema = body.response_format.json_schema
    if json_schema is None or json_schema.schema_ is None:
        raise InvalidRequestError("response_format of type json_schema needs json_schema.schema (the JSON schema "
                                  "of the output)", param="response_format.json_schema")
    return schema_constraint(json_schema.schema_, "response_format.json_schema.schema")
