"""Bad input against the real server: each gets a clear 4xx in OpenAI's error shape, and the server keeps
serving afterwards. The shared `server` runs on every backend; the API key, the body size limit and the
full queue need their own llama.cpp servers with special flags.
"""
from __future__ import annotations

import time

import httpx
import ollama
import openai
import pytest

from tests.integration.conftest import start_llamacpp_server

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
HELLO = [{"role": "user", "content": "Say hello."}]
NO_EOS = {"0": -100, "2": -100}
API_KEY = "integration-secret"
MAX_BODY_BYTES = 64 * 1024


def assert_openai_error(response: httpx.Response, status: int, param: str | None = None,
                        fragments: tuple[str, ...] = ()) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and "Traceback" not in error["message"]
    if param is not None:
        assert error["param"] == param, error
    for fragment in fragments:
        assert fragment.lower() in error["message"].lower(), error
    return error


def assert_still_serving(http: httpx.Client, model: str) -> None:
    response = http.post(COMPLETIONS, json={"model": model, "prompt": "Hi", "max_tokens": 1})
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 1


BAD_BODIES = [
    # (path, body, status, param, fragments of the message)
    (CHAT, {}, 400, "messages", ("messages", "field required")),
    (COMPLETIONS, {}, 400, "prompt", ("prompt", "field required")),
    (CHAT, {"messages": HELLO, "temperature": "hot"}, 400, "temperature",
     ("temperature: Input should be a valid number",)),
    (CHAT, {"messages": HELLO, "max_tokens": "ten"}, 400, "max_tokens", ("max_tokens", "valid integer")),
    (CHAT, {"messages": "hello"}, 400, "messages", ("messages", "valid list")),
    (CHAT, {"messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content", ("content",)),
    (CHAT, {"messages": HELLO, "temperature": -0.5}, 400, "temperature", ("temperature", "greater than or equal")),
    (CHAT, {"messages": HELLO, "temperature": 2.1}, 400, "temperature", ("temperature", "less than or equal")),
    (CHAT, {"messages": HELLO, "top_p": 0}, 400, "top_p", ("top_p", "greater than 0")),
    (COMPLETIONS, {"prompt": "x", "top_p": 1.01}, 400, "top_p", ("top_p", "less than or equal to 1")),
    (CHAT, {"messages": HELLO, "max_tokens": 0}, 400, "max_tokens", ("max_tokens", "greater than 0")),
    (COMPLETIONS, {"prompt": "x", "max_tokens": -1}, 400, "max_tokens", ("max_tokens", "greater than 0")),
    (CHAT, {"messages": HELLO, "max_completion_tokens": 0}, 400, "max_completion_tokens", ("greater than 0",)),
    (CHAT, {"messages": HELLO, "n": 2}, 400, "n", ("n=2: several choices",)),
    (CHAT, {"messages": []}, 400, "messages", ("messages", "at least 1")),
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}]},
     400, "messages[0].content", ("image_url", "not supported")),
    (CHAT, {"messages": HELLO, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop", ("at most 4",)),
    (CHAT, {"messages": HELLO, "logit_bias": {"2": 1000}}, 400, "logit_bias", ("between -100 and 100",)),
]


@pytest.mark.parametrize("path, body, status, param, fragments", BAD_BODIES,
                         ids=[f"{i}-{p.rsplit('/', 1)[1]}-{param}" for i, (p, _, _, param, _) in enumerate(BAD_BODIES)])
def test_bad_body_is_a_clear_4xx(server, http, path, body, status, param, fragments):
    error = assert_openai_error(http.post(path, json={"model": server.model, **body}), status, param, fragments)
    assert error["type"] == "invalid_request_error"
    assert_still_serving(http, server.model)


@pytest.mark.parametrize("raw", [b'{"model": "x", "messages": [', b"not json at all", b""],
                         ids=["truncated", "garbage", "empty"])
def test_malformed_json_is_400(server, http, raw):
    response = http.post(CHAT, content=raw, headers={"content-type": "application/json"})
    assert_openai_error(response, 400, None, ())
    assert "json" in response.json()["error"]["message"].lower()
    assert_still_serving(http, server.model)


def test_unknown_model_is_404_naming_the_available_ones(server, http, client):
    error = assert_openai_error(http.post(CHAT, json={"model": "gpt-17", "messages": HELLO}), 404, "model",
                                ("gpt-17", server.model))
    assert error["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-17", messages=HELLO, max_tokens=1)
    assert_still_serving(http, server.model)


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
def test_prompt_longer_than_the_context_is_400_with_both_numbers(server, http, path):
    limit = server.context_length
    words = " ".join(["hello"] * (limit + 50))
    body = {"model": server.model, "max_tokens": 1}
    body.update({"messages": [{"role": "user", "content": words}]} if path == CHAT else {"prompt": words})
    error = assert_openai_error(http.post(path, json=body), 400, None, (str(limit),))
    assert error["code"] == "context_length_exceeded"
    numbers = [int(token) for token in error["message"].replace(",", " ").split() if token.isdigit()]
    assert any(number > limit for number in numbers), error["message"]  # the prompt's own length
    assert_still_serving(http, server.model)


def test_openai_client_sees_bad_request_errors(server, http, client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=server.model, messages=HELLO, temperature=-1)
    assert caught.value.status_code == 400 and "temperature" in str(caught.value)
    with pytest.raises(openai.BadRequestError, match="several choices per request"):
        client.chat.completions.create(model=server.model, messages=HELLO, n=3)
    assert_still_serving(http, server.model)


# -- API key and body size limit (their own server) --------------------------------------------------


@pytest.fixture(scope="module")
def guarded_server(tmp_path_factory):
    env = {"SERVE_MAX_BODY_BYTES": str(MAX_BODY_BYTES)}
    with start_llamacpp_server(tmp_path_factory, "guarded", ["--ctx", "512", "--parallel", "2"],
                               api_key=API_KEY, env=env) as running:
        yield running


@pytest.fixture
def guarded_http(guarded_server):
    with guarded_server.http() as client:
        yield client


@pytest.mark.parametrize("headers, fragment", [({}, "missing api key"),
                                                ({"Authorization": "Bearer wrong"}, "invalid api key")],
                         ids=["missing", "wrong"])
def test_api_key_is_required(guarded_server, headers, fragment):
    with httpx.Client(base_url=guarded_server.base_url, headers=headers, timeout=60) as anonymous:
        for response in (anonymous.get("/v1/models"),
                         anonymous.post(CHAT, json={"model": guarded_server.model, "messages": HELLO})):
            error = assert_openai_error(response, 401, None, (fragment,))
            assert error["type"] == "authentication_error"
        assert anonymous.get("/health").status_code == 200  # liveness probes carry no key


def test_ollama_client_without_the_key_reads_the_401_in_ollamas_shape(guarded_server):
    """Before the key is checked no route runs, but /api/* still answers {"error": "..."}: the Ollama client
    shows the message (OpenAI's nested shape would reach it as a dict)."""
    with pytest.raises(ollama.ResponseError) as refused:
        ollama.Client(host=guarded_server.base_url).chat(model=guarded_server.model, messages=HELLO)
    assert refused.value.status_code == 401
    assert refused.value.error == "missing API key: send the header 'Authorization: Bearer <key>'"


def test_openai_client_with_wrong_key_gets_authentication_error(guarded_server, guarded_http):
    with guarded_server.openai(api_key="wrong") as wrong:
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()
    with guarded_server.openai() as right:
        assert right.models.list().data[0].id == guarded_server.model
    assert_still_serving(guarded_http, guarded_server.model)


def test_body_over_the_limit_is_413(guarded_server, guarded_http):
    body = {"model": guarded_server.model, "prompt": "x" * (MAX_BODY_BYTES + 1), "max_tokens": 1}
    error = assert_openai_error(guarded_http.post(COMPLETIONS, json=body), 413, None, (str(MAX_BODY_BYTES),))
    assert error["code"] == "payload_too_large"
    assert_still_serving(guarded_http, guarded_server.model)


def test_streamed_body_over_the_limit_is_413(guarded_server, guarded_http):
    def chunks():  # no Content-Length: the server must count what arrives
        yield b'{"prompt": "'
        for _ in range(MAX_BODY_BYTES // 1024 + 2):
            yield b"x" * 1024
        yield b'"}'

    response = guarded_http.post(COMPLETIONS, content=chunks(), headers={"content-type": "application/json"})
    assert_openai_error(response, 413, None, ("too large",))
    assert_still_serving(guarded_http, guarded_server.model)


def test_small_context_is_reported_and_enforced(guarded_server, guarded_http):
    assert guarded_server.context_length == 512
    words = " ".join(["hello"] * 600)
    response = guarded_http.post(COMPLETIONS, json={"model": guarded_server.model, "prompt": words})
    assert_openai_error(response, 400, None, ("512",))
    # A prompt that fits runs to the end of its context at most: finish_reason "length", never an error.
    fits = " ".join(["hello"] * 490)  # leaves a couple of dozen tokens for the output
    result = guarded_http.post(COMPLETIONS, json={"model": guarded_server.model, "prompt": fits,
                                                   "logit_bias": NO_EOS}).json()
    assert result["choices"][0]["finish_reason"] == "length"
    assert result["usage"]["total_tokens"] == 512  # the default max_tokens is what the context has left


# -- full queue (its own server: one running sequence, no waiting room) ------------------------------


@pytest.fixture(scope="module")
def tiny_queue_server(tmp_path_factory):
    with start_llamacpp_server(tmp_path_factory, "tiny-queue", ["--parallel", "1", "--max-queue", "0"]) as running:
        yield running


def test_full_queue_is_429_with_retry_after(tiny_queue_server):
    server = tiny_queue_server
    long_body = {"model": server.model, "prompt": "Once upon a time", "max_tokens": 3000,
                 "logit_bias": NO_EOS, "stream": True}
    with server.http() as http:
        with http.stream("POST", COMPLETIONS, json=long_body) as running:
            lines = running.iter_lines()  # kept referenced: a collected iterator closes the response
            assert next(lines).startswith("data: ")
            busy = http.post(COMPLETIONS, json={"model": server.model, "prompt": "Hi", "max_tokens": 1})
            error = assert_openai_error(busy, 429, None, ())
            assert error["type"] == "rate_limit_error"
            assert int(busy.headers["retry-after"]) >= 1
            with server.openai() as client, pytest.raises(openai.RateLimitError):
                client.completions.create(model=server.model, prompt="Hi", max_tokens=1)
        # The stream is closed, so its sequence is aborted and the slot comes free.
        for _ in range(100):
            response = http.post(COMPLETIONS, json={"model": server.model, "prompt": "Hi", "max_tokens": 1})
            if response.status_code != 429:
                break
            time.sleep(0.1)
        assert response.status_code == 200, response.text
