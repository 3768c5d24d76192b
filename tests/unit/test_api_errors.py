"""The HTTP edge without a model: every failure maps to OpenAI's error shape with the right status.

The app runs over a real, empty ModelPool: validation must reject bad requests before any model is
involved, and an unknown model gets the pool's own 404.
"""
from __future__ import annotations

import asyncio
import json

import pytest
from fastapi.testclient import TestClient

from serve.api.openai import protocol
from serve.api.app import create_app
from serve.api.errors import error_response, field_path, validate
from serve.api.openai.sse import CHAT_CHUNK, TEXT_CHUNK, StreamHeader, stream_events
from serve.config import ServerConfig
from serve.errors import (AuthenticationError, ContextLengthError, InvalidRequestError, ModelNotFoundError,
                          OverloadedError, PayloadTooLargeError, ServeError)
from serve.models.catalog import load_catalog
from serve.placement.hardware import probe
from serve.runtime.loader import ModelLoader
from serve.runtime.pool import ModelPool, PoolLimits
from serve.sequence import FinishReason, StepOutput

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
HELLO = [{"role": "user", "content": "hello"}]
API_KEY = "unit-test-key"
MAX_BODY_BYTES = 4096


def assert_openai_error(response, status: int, param: str | None = None, fragment: str = "") -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert "Traceback" not in error["message"]
    if param is not None:
        assert error["param"] == param
    assert fragment.lower() in error["message"].lower()
    return error


def empty_app(config: ServerConfig):
    """The app over a real pool with nothing loaded and no memory to load anything into."""
    catalog = load_catalog()
    return create_app(ModelPool(ModelLoader(config, catalog, probe()), PoolLimits(max_memory_bytes=0)), config,
                      catalog)


@pytest.fixture(scope="module")
def client():
    config = ServerConfig(max_body_bytes=MAX_BODY_BYTES)
    app = empty_app(config)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def keyed_client():
    config = ServerConfig(api_key=API_KEY)
    app = empty_app(config)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.mark.parametrize("error, status, error_type, code", [
    (InvalidRequestError("bad", param="x"), 400, "invalid_request_error", None),
    (ContextLengthError("too long"), 400, "invalid_request_error", "context_length_exceeded"),
    (AuthenticationError("no key"), 401, "authentication_error", "invalid_api_key"),
    (ModelNotFoundError("no such model"), 404, "invalid_request_error", "model_not_found"),
    (PayloadTooLargeError("big"), 413, "invalid_request_error", "payload_too_large"),
    (OverloadedError("busy", retry_after=7), 429, "rate_limit_error", "queue_full"),
    (ServeError("broken"), 500, "server_error", None),
])
def test_serve_errors_map_to_status_and_openai_shape(error, status, error_type, code):
    response = error_response(error)
    assert response.status_code == status
    body = response.body.decode()
    assert f'"type":"{error_type}"' in body.replace(" ", "")
    assert (f'"code":"{code}"' if code else '"code":null') in body.replace(" ", "")
    if isinstance(error, OverloadedError):
        assert response.headers["retry-after"] == "7"


def test_field_path_names_nested_fields():
    assert field_path(("messages", 0, "content")) == "messages[0].content"
    assert field_path(("temperature",)) == "temperature"
    assert field_path(()) == ""


def test_validate_names_the_field_and_pydantic_reason():
    with pytest.raises(InvalidRequestError) as caught:
        validate(protocol.ChatCompletionRequest, {"messages": HELLO, "temperature": "hot"})
    assert caught.value.param == "temperature"
    assert caught.value.message.startswith("temperature: Input should be a valid number")


def test_protocol_normalizes_content_stop_and_roles():
    body = validate(protocol.ChatCompletionRequest, {
        "messages": [{"role": "developer", "content": "be brief"},
                     {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
        "stop": "END", "max_tokens": 5, "max_completion_tokens": 9, "unknown_field": {"ignored": True}})
    assert [m.to_template_dict() for m in body.messages] == [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "a\nb"}]
    assert body.stop == ("END",)
    assert body.num_max_tokens == 9  # max_completion_tokens wins, as in OpenAI's API


BAD_REQUESTS = [
    # (path, json body, status, param, fragment of the message)
    (CHAT, {"model": "m"}, 400, "messages", "field required"),
    (COMPLETIONS, {"model": "m"}, 400, "prompt", "field required"),
    (CHAT, {"messages": HELLO, "temperature": "hot"}, 400, "temperature", "input should be a valid number"),
    (CHAT, {"messages": HELLO, "temperature": -0.1}, 400, "temperature", "greater than or equal to 0"),
    (CHAT, {"messages": HELLO, "temperature": 2.5}, 400, "temperature", "less than or equal to 2"),
    (CHAT, {"messages": HELLO, "top_p": 0}, 400, "top_p", "greater than 0"),
    (CHAT, {"messages": HELLO, "top_p": 1.5}, 400, "top_p", "less than or equal to 1"),
    (CHAT, {"messages": HELLO, "max_tokens": 0}, 400, "max_tokens", "greater than 0"),
    (COMPLETIONS, {"prompt": "x", "max_tokens": -3}, 400, "max_tokens", "greater than 0"),
    (CHAT, {"messages": HELLO, "max_completion_tokens": 0}, 400, "max_completion_tokens", "greater than 0"),
    (CHAT, {"messages": HELLO, "max_tokens": "many"}, 400, "max_tokens", "valid integer"),
    (CHAT, {"messages": HELLO, "n": 2}, 400, "n", "n=2: several choices"),
    (CHAT, {"messages": []}, 400, "messages", "at least 1"),
    (CHAT, {"messages": "hello"}, 400, "messages", "valid list"),
    (CHAT, {"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0].role", "input should be"),
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     400, "messages[0].content", "image_url content is not supported"),
    (CHAT, {"messages": HELLO, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop", "at most 4"),
    (CHAT, {"messages": HELLO, "stop": 7}, 400, "stop", "string or a list of strings"),
    (CHAT, {"messages": HELLO, "logit_bias": {"word": 5}}, 400, "logit_bias", "token ids"),
    (CHAT, {"messages": HELLO, "logit_bias": {"2": -500}}, 400, "logit_bias", "between -100 and 100"),
    (CHAT, {"messages": HELLO, "presence_penalty": 3}, 400, "presence_penalty", "less than or equal to 2"),
    (CHAT, {"messages": HELLO, "top_logprobs": 2}, 400, "top_logprobs", "needs logprobs: true"),
    (CHAT, {"messages": HELLO, "logprobs": True, "top_logprobs": 21}, 400, "top_logprobs", "less than or equal"),
    (COMPLETIONS, {"prompt": "a", "echo": True, "stream": True}, 400, "echo", "not supported with stream"),
    (COMPLETIONS, {"prompt": ["a", "b"]}, 400, "prompt", "exactly one prompt"),
    (CHAT, {"model": "no-such-model", "messages": HELLO}, 404, "model", "no-such-model"),
]


@pytest.mark.parametrize("path, body, status, param, fragment", BAD_REQUESTS,
                         ids=[f"{p.rsplit('/', 1)[1]}-{param}-{status}" for p, _, status, param, _ in BAD_REQUESTS])
def test_bad_requests_get_clear_openai_errors(client, path, body, status, param, fragment):
    assert_openai_error(client.post(path, json=body), status, param, fragment)


@pytest.mark.parametrize("raw, fragment", [
    (b'{"messages": [', "malformed json"),
    (b"", "body is empty"),
    (b"[1, 2]", "must be a json object"),
    (b'{"prompt": "x", "temperature": NaN}', "nan is not valid json"),
    (b"\xff\xfe{", "malformed json"),
])
def test_malformed_bodies_are_400(client, raw, fragment):
    response = client.post(COMPLETIONS, content=raw, headers={"content-type": "application/json"})
    assert_openai_error(response, 400, None, fragment)


def test_json_is_parsed_whatever_the_content_type(client):
    # curl -d sends application/x-www-form-urlencoded; the body still reaches validation.
    response = client.post(CHAT, content=b'{"messages": []}',
                           headers={"content-type": "application/x-www-form-urlencoded"})
    assert_openai_error(response, 400, "messages", "at least 1")


def test_body_over_the_limit_is_413_by_content_length(client):
    response = client.post(COMPLETIONS, json={"prompt": "x" * (MAX_BODY_BYTES + 10)})
    error = assert_openai_error(response, 413, None, f"the limit is {MAX_BODY_BYTES} bytes")
    assert error["code"] == "payload_too_large"


def test_body_over_the_limit_is_413_when_streamed_without_length(client):
    def chunks():
        for _ in range(MAX_BODY_BYTES // 512 + 2):
            yield b" " * 512

    response = client.post(COMPLETIONS, content=chunks(), headers={"content-type": "application/json"})
    assert_openai_error(response, 413, None, "too large")


def test_unknown_route_and_method_use_the_error_shape(client):
    assert_openai_error(client.get("/v1/nothing"), 404, None, "no route")
    assert_openai_error(client.get(COMPLETIONS), 405)


def test_unexpected_errors_are_500_without_details(client):
    def explode():
        raise RuntimeError("secret internals /home/user/model.gguf")

    client.app.add_api_route("/explode", explode)
    error = assert_openai_error(client.get("/explode"), 500)
    assert "secret" not in error["message"] and error["type"] == "server_error"


def test_empty_pool_lists_no_models_and_is_healthy(client):
    assert client.get("/v1/models").json() == {"object": "list", "data": []}
    assert client.get("/health").json()["status"] == "ok"


@pytest.mark.parametrize("headers, fragment", [
    ({}, "missing api key"),
    ({"Authorization": "Bearer wrong"}, "invalid api key"),
    ({"Authorization": "Basic " + API_KEY}, "missing api key"),
])
def test_api_key_is_required_when_configured(keyed_client, headers, fragment):
    error = assert_openai_error(keyed_client.get("/v1/models", headers=headers), 401, None, fragment)
    assert error["type"] == "authentication_error"
    # Refused before the body is read or validated.
    assert keyed_client.post(CHAT, json={}, headers=headers).status_code == 401


def test_the_guards_answer_ollamas_routes_in_ollamas_shape(client, keyed_client):
    """Ollama's clients read `error` as a string: a 401 or 413 on /api/* must be {"error": "..."}."""
    refused = keyed_client.post("/api/chat", json={})
    assert refused.status_code == 401 and refused.json() == {"error": "missing API key: send the header "
                                                                      "'Authorization: Bearer <key>'"}
    too_large = client.post("/api/generate", json={"prompt": "x" * (MAX_BODY_BYTES + 10)})
    assert too_large.status_code == 413 and "the limit is" in too_large.json()["error"]


def test_right_api_key_passes_and_health_stays_open(keyed_client):
    assert keyed_client.get("/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
    assert keyed_client.get("/v1/models", headers={"x-api-key": API_KEY}).status_code == 200
    assert keyed_client.get("/health").status_code == 200


# -- server-sent events ------------------------------------------------------------------------------


def _events(outputs: list, *, is_chat: bool, include_usage: bool, fail_after: int | None = None) -> list[str]:
    async def produce():
        for index, output in enumerate(outputs):
            if fail_after is not None and index == fail_after:
                raise ContextLengthError("context full")
            yield output

    async def run() -> list[str]:
        header = StreamHeader("id-1", "m", 0, CHAT_CHUNK if is_chat else TEXT_CHUNK, include_usage)
        def usage_of(num_completion_tokens: int) -> dict:
            return {"prompt_tokens": 5, "completion_tokens": num_completion_tokens}

        return [event.decode() async for event in stream_events(produce(), header, usage_of)]

    return asyncio.run(run())


OUTPUTS = [StepOutput("id-1", "Hel", 1), StepOutput("id-1", "", 1), StepOutput("id-1", "lo", 1),
           StepOutput("id-1", "!", 1, FinishReason.LENGTH)]


def test_chat_stream_order_role_deltas_finish_usage_done():
    events = _events(OUTPUTS, is_chat=True, include_usage=True)
    assert all(event.startswith("data: ") and event.endswith("\n\n") for event in events)
    assert events[-1] == "data: [DONE]\n\n"
    chunks = [json.loads(event[6:]) for event in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:4]] == ["Hel", "lo", "!"]
    assert chunks[4]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}
    assert chunks[5]["choices"] == [] and chunks[5]["usage"] == {"prompt_tokens": 5, "completion_tokens": 4}
    assert all(chunk["usage"] is None for chunk in chunks[:5])


def test_text_stream_has_no_role_chunk_and_no_usage_unless_asked():
    events = _events(OUTPUTS, is_chat=False, include_usage=False)
    chunks = [json.loads(event[6:]) for event in events[:-1]]
    assert [c["choices"][0]["text"] for c in chunks] == ["Hel", "lo", "!", ""]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all("usage" not in chunk and chunk["object"] == "text_completion" for chunk in chunks)


def test_error_after_the_stream_started_is_an_error_event_then_done():
    events = _events(OUTPUTS, is_chat=True, include_usage=True, fail_after=2)
    assert events[-1] == "data: [DONE]\n\n"
    error = json.loads(events[-2][6:])["error"]
    assert error["code"] == "context_length_exceeded" and error["message"] == "context full"


@pytest.mark.parametrize("shape", [CHAT_CHUNK, TEXT_CHUNK], ids=["chat", "text"])
@pytest.mark.parametrize("include_usage", [True, False])
@pytest.mark.parametrize("model", ["SmolLM2-135M-Instruct.Q4_1", "a\x00text\x00b"], ids=["model", "marker-in-name"])
def test_a_text_delta_from_the_stream_template_is_the_chunk_byte_for_byte(shape, include_usage, model):
    header = StreamHeader("cmpl-1", model, 1764288000, shape, include_usage)
    for text in ["", " hello", 'quote " back \\ newline \n tab \t', "é中文🙂", "\x00\x01\x1f", "\u2028", "\x00text\x00"]:
        assert header.text_chunk(text) == header.chunk([shape.choice(text, None)])
