"""The OpenAPI document of the real app (over a Fake pool) describes every route: each POST its JSON
request body, each route its answers with a schema per status (the dialect's error shape for errors).
A route added without `@documented(...)` (serve/api/openapi.py) fails here."""
from __future__ import annotations

import json

import pytest
from fastapi.routing import APIRoute

from serve.api.openapi import route_doc
from tests.unit.test_generation import FakeEngine, client_for

ERROR_SHAPES = {"/v1/messages": "AnthropicError", "/api/": "OllamaError"}


@pytest.fixture(scope="module")
def client():
    return client_for(FakeEngine())


@pytest.fixture(scope="module")
def document(client) -> dict:
    return client.app.openapi()


def operations(document: dict):
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            yield path, method, operation


def resolve(document: dict, schema: dict) -> dict:
    name = schema["$ref"].rsplit("/", 1)[-1]
    return document["components"]["schemas"][name]


def expected_error_shape(path: str) -> str:
    return next((shape for prefix, shape in ERROR_SHAPES.items() if path.startswith(prefix)), "OpenAIError")


def test_every_api_route_is_labelled_and_in_the_document(client, document):
    unlabelled = [route.path for route in client.app.routes if isinstance(route, APIRoute)
                  and route.include_in_schema and route_doc(route) is None]
    assert not unlabelled, f"routes without @documented(...): {unlabelled}"
    in_document = {path for path, _, _ in operations(document)}
    assert {"/v1/chat/completions", "/api/chat", "/v1/messages", "/v1/responses", "/health", "/metrics",
            "/"} <= in_document


def test_every_post_route_documents_its_json_request_body(document):
    posts = [(path, operation) for path, method, operation in operations(document) if method == "post"]
    assert len(posts) >= 9
    for path, operation in posts:
        body = operation.get("requestBody")
        assert body and body["required"], f"POST {path} documents no request body"
        schema = resolve(document, body["content"]["application/json"]["schema"])
        assert schema["type"] == "object" and schema["properties"], path


def test_every_route_documents_its_answers_and_errors_in_its_dialects_shape(document):
    for path, method, operation in operations(document):
        responses = operation["responses"]
        assert "200" in responses and responses["200"]["content"], f"{method} {path}: no 200 answer"
        assert "422" not in responses, f"{method} {path}: FastAPI's 422 never answers here"
        assert "500" in responses, f"{method} {path}"
        for status, response in responses.items():
            for media_type, content in response["content"].items():
                assert content.get("schema"), f"{method} {path} {status} {media_type}: no schema"
            if int(status) >= 400 and (path, status) != ("/health", "503"):  # /health's 503 is its own body
                ref = response["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/" + expected_error_shape(path)), (method, path, status, ref)


def test_generation_routes_document_their_stream_and_the_errors_of_a_busy_or_stopping_server(document):
    streams = {"/v1/chat/completions": "text/event-stream", "/v1/completions": "text/event-stream",
               "/v1/messages": "text/event-stream", "/v1/responses": "text/event-stream",
               "/api/chat": "application/x-ndjson", "/api/generate": "application/x-ndjson"}
    for path, media_type in streams.items():
        responses = document["paths"][path]["post"]["responses"]
        assert set(responses["200"]["content"]) == {"application/json", media_type}
        assert {"400", "404", "413", "429", "503"} <= set(responses), path
        assert "Retry-After" in responses["429"]["headers"] and "Retry-After" in responses["503"]["headers"]


def test_request_bodies_refuse_unknown_fields_where_the_routes_do(document):
    for name in ("ChatCompletionRequest", "CompletionRequest", "ChatRequest", "GenerateRequest", "MessagesRequest",
                 "ResponsesRequest"):
        assert document["components"]["schemas"][name]["additionalProperties"] is False, name
    # /api/show and /api/pull ignore unknown keys, as Ollama does
    assert "additionalProperties" not in document["components"]["schemas"]["ModelRequest"]


def test_the_collected_answers_match_their_documented_schemas(client, document):
    """The Fake engine's answers, collected, validated against the document's schemas (schemathesis does
    this for the real model in tests/integration/test_schemathesis.py)."""
    jsonschema_rs = pytest.importorskip("jsonschema_rs")
    requests = [("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}]}),
                ("/v1/completions", {"prompt": "Hi"}),
                ("/api/chat", {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "stream": False}),
                ("/api/generate", {"model": "m", "prompt": "Hi", "stream": False}),
                ("/v1/messages", {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]}),
                ("/v1/responses", {"input": "Hi"})]
    for path, body in requests:
        response = client.post(path, json=body)
        assert response.status_code == 200, response.text
        schema = document["paths"][path]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
        standalone = {**schema, "components": document["components"]}
        validator = jsonschema_rs.Draft202012Validator(json.loads(json.dumps(standalone)))
        errors = [str(error) for error in validator.iter_errors(response.json())]
        assert not errors, (path, errors)
