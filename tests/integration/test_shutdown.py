"""Graceful shutdown of the real server: on SIGTERM or SIGINT it admits nothing new (503 with Retry-After in
each dialect's shape, /health 503), lets running streams finish within --drain-timeout, ends the rest with
an error event and [DONE], and exits 0 in time."""
from __future__ import annotations

import json
import signal
import subprocess
import threading
import time

import httpx

from tests.integration.conftest import start_llamacpp_server

NO_EOS = {"0": -100, "2": -100}  # the model never ends on its own: a stream runs to max_tokens
EXIT_GRACE_SECONDS = 15  # after the drain: the engines stop, uvicorn closes, the model is freed


def stream_body(model: str, max_tokens: int) -> dict:
    return {"model": model, "prompt": "Once upon a time", "max_tokens": max_tokens, "logit_bias": NO_EOS,
            "stream": True, "temperature": 0}


def wait_until_stopping(http: httpx.Client, timeout: float = 10) -> None:
    """The signal is noticed within uvicorn's 0.1 s tick; /health then answers 503."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if http.get("/health").status_code == 503:
            return
        time.sleep(0.02)
    raise AssertionError("the server did not start draining")


def wait_for_exit(process: subprocess.Popen, timeout: float) -> int:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the server did not exit within {timeout:.0f} s") from None


def tokens_for_seconds(http: httpx.Client, model: str, seconds: float) -> int:
    """How many tokens this machine generates in about `seconds` now (a loaded CI machine can be 100 times
    slower than an idle one): long enough for the checks made during the drain, short enough to finish."""
    started = time.monotonic()
    response = http.post("/v1/completions", json={**stream_body(model, 16), "stream": False})
    assert response.status_code == 200, response.text
    tokens_per_second = 16 / (time.monotonic() - started)
    return max(24, min(int(tokens_per_second * seconds), 2000))


def test_sigterm_lets_a_running_stream_finish_and_refuses_new_requests(tmp_path_factory):
    args = ["--parallel", "1", "--drain-timeout", "300"]
    with start_llamacpp_server(tmp_path_factory, "drain", args) as server, server.http() as http:
        num_tokens = tokens_for_seconds(http, server.model, 5)
        with http.stream("POST", "/v1/completions", json=stream_body(server.model, num_tokens)) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
            server.process.send_signal(signal.SIGTERM)
            wait_until_stopping(http)
            assert http.get("/health").json()["status"] == "stopping"
            assert_refused_in_each_shape(http, server.model)
            assert server.process.poll() is None, "the server exited while a stream was running"

            events = [line.removeprefix("data: ") for line in lines if line]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(event) for event in events[:-1]]
        assert all("error" not in chunk for chunk in chunks), chunks[-1]
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert wait_for_exit(server.process, EXIT_GRACE_SECONDS) == 0


def assert_refused_in_each_shape(http: httpx.Client, model: str) -> None:
    refused = http.post("/v1/completions", json={"model": model, "prompt": "Hi", "max_tokens": 2})
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "shutting_down"
    assert "shutting down" in refused.json()["error"]["message"]
    ollama = http.post("/api/generate", json={"model": model, "prompt": "Hi", "stream": False})
    assert ollama.status_code == 503 and ollama.headers["retry-after"] == "1"
    assert "shutting down" in ollama.json()["error"]  # Ollama's shape: {"error": "..."}


def test_sigint_ends_a_stream_past_the_drain_timeout_with_an_error_event(tmp_path_factory):
    drain_timeout = 1.0
    args = ["--parallel", "1", "--drain-timeout", f"{drain_timeout:g}s"]
    with start_llamacpp_server(tmp_path_factory, "drain-timeout", args) as server, server.http() as http, \
            http.stream("POST", "/v1/completions", json=stream_body(server.model, 3000)) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGINT)
        events = [line.removeprefix("data: ") for line in lines if line]
        ended = time.monotonic() - signalled
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])["error"]
        assert "shutting down" in error["message"], error
        assert drain_timeout <= ended < drain_timeout + 10
        assert wait_for_exit(server.process, EXIT_GRACE_SECONDS) == 0


def wait_for_stats(http: httpx.Client, model: str, running: int, waiting: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = http.get("/health").json()["stats"].get(model, {})
        if stats.get("running") == running and stats.get("waiting") == waiting:
            return
        time.sleep(0.02)
    raise AssertionError(f"expected {running} running and {waiting} waiting, got {stats}")


def test_collected_requests_past_the_drain_timeout_get_a_503_to_retry_in_each_dialects_shape(tmp_path_factory):
    """Non-streamed requests still in flight when --drain-timeout expires (one running, two queued behind
    it) are answered 503 with Retry-After, in each dialect's error shape: the client may retry elsewhere."""
    args = ["--parallel", "1", "--drain-timeout", "1s"]
    with start_llamacpp_server(tmp_path_factory, "drain-collected", args) as server, server.http() as http:
        model = server.model
        requests = {
            "openai": ("/v1/completions", {**stream_body(model, 3000), "stream": False}),
            "ollama": ("/api/generate", {"model": model, "prompt": "Hi", "stream": False}),
            "anthropic": ("/v1/messages", {"model": model, "max_tokens": 8,
                                           "messages": [{"role": "user", "content": "Hi"}]}),
        }
        answers: dict[str, httpx.Response] = {}

        def send(name: str) -> None:
            path, body = requests[name]
            with server.http() as own:
                answers[name] = own.post(path, json=body)

        threads = [threading.Thread(target=send, args=("openai",))]
        threads[0].start()
        wait_for_stats(http, model, running=1, waiting=0)  # the long one holds the only slot
        threads += [threading.Thread(target=send, args=(name,)) for name in ("ollama", "anthropic")]
        for thread in threads[1:]:
            thread.start()
        wait_for_stats(http, model, running=1, waiting=2)
        server.process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(timeout=60)
        for name, response in answers.items():
            assert response.status_code == 503 and response.headers["retry-after"] == "1", (name, response.text)
        assert answers["openai"].json()["error"]["code"] == "shutting_down"
        assert "shutting down" in answers["openai"].json()["error"]["message"]
        assert "shutting down" in answers["ollama"].json()["error"]  # Ollama's shape: {"error": "..."}
        assert answers["anthropic"].json()["type"] == "error"
        assert answers["anthropic"].json()["error"]["type"] == "overloaded_error"
        assert len(answers) == 3
        assert wait_for_exit(server.process, EXIT_GRACE_SECONDS) == 0
