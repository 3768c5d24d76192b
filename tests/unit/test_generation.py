"""The generation core every dialect shares, through the real app over a Fake* pool and engine (the seam
is serve/api/engine_client.py): collecting and streaming in each dialect's framing, failures as the
dialect's error, Retry-After on a full queue, abort when the client leaves, Ollama's timings."""
from __future__ import annotations

import asyncio
import inspect
import json
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient

from serve.api import engine_client
from serve.api.app import create_app
from serve.api.generation import (Prompt, Timings, collect, collect_unless_gone, default_num_max_tokens,
                                  resolve_engine, stream_response, submit, text_prompt)
from serve.api.ollama.ndjson import CHAT as OLLAMA_CHAT, NDJSONFraming
from serve.config import ServerConfig
from serve.errors import ContextLengthError, OverloadedError, ServeError
from serve.models.catalog import load_catalog
from serve.runtime.engine import Engine, RequestStream
from serve.runtime.pool import ModelInfo, ModelPool
from serve.sequence import FinishReason, Request, SamplingParams, StepOutput

MODEL = "fake-model"
CONTEXT_LENGTH = 64
HELLO = [{"role": "user", "content": "hello"}]
OUTPUTS = [StepOutput("r", "Hel", 1), StepOutput("r", "lo", 1), StepOutput("r", "!", 1, FinishReason.STOP)]


class FakeStream:
    """A request's outputs from a list; `fail` is raised after them, `None` in the list blocks for ever."""

    def __init__(self, outputs: list, num_prompt_tokens: int, fail: Exception | None = None):
        self._outputs = list(outputs)
        self._fail = fail
        self.num_prompt_tokens = num_prompt_tokens
        self.num_cached_tokens = 1
        self.num_aborts = 0

    def __aiter__(self):
        return self

    async def __anext__(self) -> StepOutput:
        if not self._outputs:
            if self._fail is not None:
                raise self._fail
            raise StopAsyncIteration
        output = self._outputs.pop(0)
        if output is None:
            await asyncio.Event().wait()
        return output

    def abort(self) -> None:
        self.num_aborts += 1


@dataclass(frozen=True)
class FakeCapabilities:
    context_length: int


class FakeEngine:
    """One word per token; the chat template is the messages' contents joined."""

    chat_template = "{{ messages | map(attribute='content') | join(' ') }} ANSWER:"  # what render_chat does
    tool_format: str | None = None

    def __init__(self, outputs: list = OUTPUTS, *, fail: Exception | None = None,
                 refuse: ServeError | None = None, reasoning_format: str | None = None):
        self.model_name = MODEL
        self.reasoning_format = reasoning_format
        self.capabilities = FakeCapabilities(context_length=CONTEXT_LENGTH)
        self._outputs, self._fail, self._refuse = outputs, fail, refuse
        self.requests: list[Request] = []
        self.streams: list[FakeStream] = []

    def render_chat(self, messages: list[dict], tools: list[dict] | None = None, **template_kwargs) -> str:
        self.template_kwargs = template_kwargs
        return " ".join(message["content"] for message in messages) + " ANSWER:"

    def tokenize(self, text: str) -> list[int]:
        return list(range(len(text.split())))

    def submit(self, request: Request) -> FakeStream:
        if self._refuse is not None:
            raise self._refuse
        self.requests.append(request)
        self.streams.append(FakeStream(self._outputs, len(request.prompt_token_ids), self._fail))
        return self.streams[-1]


class FakePool:
    is_stopping = False

    def __init__(self, engine: FakeEngine):
        self.engine = engine

    async def get(self, name: str | None, *, keep_alive: float | None = None) -> FakeEngine:
        return self.engine

    async def unload(self, name: str) -> None:
        pass

    def loaded_name(self, name: str) -> str | None:
        return MODEL if name.removesuffix(":latest") == MODEL else None

    def model_infos(self) -> list[ModelInfo]:
        return [ModelInfo(name=MODEL, backend="fake", context_length=CONTEXT_LENGTH, num_parallel=1, created=0)]

    def stats(self) -> dict:
        return {}


def client_for(engine: FakeEngine) -> TestClient:
    app = create_app(FakePool(engine), ServerConfig(), load_catalog())
    return TestClient(app, raise_server_exceptions=False)


def ndjson(response) -> list[dict]:
    return [json.loads(line) for line in response.text.splitlines()]


def sse(response) -> list:
    events = [event.removeprefix("data: ") for event in response.text.split("\n\n") if event]
    return [event if event == "[DONE]" else json.loads(event) for event in events]


# --- one path for both dialects ---------------------------------------------------------------------

def test_an_openai_chat_is_templated_tokenized_submitted_and_collected():
    engine = FakeEngine()
    body = client_for(engine).post("/v1/chat/completions", json={"messages": HELLO}).json()
    assert body["model"] == MODEL and body["choices"][0]["message"]["content"] == "Hello!"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5,
                             "prompt_tokens_details": {"cached_tokens": 1}}
    request = engine.requests[0]
    assert request.prompt == "hello ANSWER:" and request.prompt_token_ids == [0, 1]
    assert request.messages == HELLO and request.params.max_tokens == CONTEXT_LENGTH - 2
    assert request.request_id.startswith("chatcmpl-")


def test_an_ollama_generate_goes_the_same_way_with_ollamas_options():
    engine = FakeEngine()
    response = client_for(engine).post("/api/generate", json={"model": MODEL, "prompt": "hi there", "raw": True,
                                                              "stream": False, "options": {"num_predict": 5}})
    reply = response.json()
    assert reply["response"] == "Hello!" and reply["done"] is True and reply["done_reason"] == "stop"
    assert reply["prompt_eval_count"] == 2 and reply["eval_count"] == 3
    request = engine.requests[0]
    assert request.prompt == "hi there" and request.messages is None
    assert request.params.max_tokens == 5 and request.params.temperature == 0.8
    assert request.request_id.startswith("ollama-")


def test_streams_are_framed_by_the_dialect():
    client = client_for(FakeEngine())
    events = sse(client.post("/v1/chat/completions", json={"messages": HELLO, "stream": True}))
    assert events[-1] == "[DONE]"
    assert [e["choices"][0]["delta"].get("content") for e in events[:-1]] == ["", "Hel", "lo", "!", None]
    lines = ndjson(client.post("/api/chat", json={"model": MODEL, "messages": HELLO}))
    assert [line["message"]["content"] for line in lines] == ["Hel", "lo", "!", ""]
    assert [line["done"] for line in lines] == [False, False, False, True]
    assert lines[-1]["eval_count"] == 3 and lines[-1]["total_duration"] > 0


def test_the_default_output_limit_is_what_the_context_leaves_capped():
    engine = FakeEngine()
    assert default_num_max_tokens(engine, Prompt("a b", [0, 1])) == CONTEXT_LENGTH - 2
    assert default_num_max_tokens(engine, Prompt("x", list(range(CONTEXT_LENGTH)))) == 1


# --- failures ---------------------------------------------------------------------------------------

def test_a_full_queue_is_429_with_retry_after_in_each_dialects_shape():
    client = client_for(FakeEngine(refuse=OverloadedError("the queue is full", retry_after=3)))
    openai = client.post("/v1/chat/completions", json={"messages": HELLO, "stream": True})
    assert openai.status_code == 429 and openai.headers["retry-after"] == "3"
    assert openai.json()["error"]["code"] == "queue_full"
    ollama = client.post("/api/chat", json={"model": MODEL, "messages": HELLO})
    assert ollama.status_code == 429 and ollama.headers["retry-after"] == "3"
    assert ollama.json() == {"error": "the queue is full"}


def test_a_failure_after_the_first_byte_is_the_dialects_error_event():
    client = client_for(FakeEngine(OUTPUTS[:1], fail=ContextLengthError("context full")))
    events = sse(client.post("/v1/completions", json={"prompt": "hi", "stream": True}))
    assert events[-1] == "[DONE]" and events[-2]["error"]["code"] == "context_length_exceeded"
    lines = ndjson(client.post("/api/chat", json={"model": MODEL, "messages": HELLO}))
    assert lines[0]["message"]["content"] == "Hel" and lines[-1] == {"error": "context full"}


def test_an_unexpected_failure_shows_no_details(caplog):
    client = client_for(FakeEngine(OUTPUTS[:1], fail=RuntimeError("secret /home/user/model.gguf")))
    events = sse(client.post("/v1/chat/completions", json={"messages": HELLO, "stream": True}))
    assert events[-2]["error"] == {"message": "internal server error; see the server log", "type": "server_error",
                                   "param": None, "code": "internal_error"}
    lines = ndjson(client.post("/api/generate", json={"model": MODEL, "prompt": "hi"}))
    assert lines[-1] == {"error": "internal server error; see the server log"}
    assert "secret" in caplog.text and "secret" not in str(events) + str(lines)


def test_a_server_side_abort_is_an_error_not_an_answer():
    aborted = [StepOutput("r", "Hel", 1), StepOutput("r", finish_reason=FinishReason.ABORT, error="shutting down")]
    client = client_for(FakeEngine(aborted))
    response = client.post("/v1/chat/completions", json={"messages": HELLO})
    assert response.status_code == 500 and response.json()["error"]["code"] == "aborted"
    assert "shutting down" in response.json()["error"]["message"]
    response = client.post("/api/chat", json={"model": MODEL, "messages": HELLO, "stream": False})
    assert response.status_code == 500 and "aborted: shutting down" in response.json()["error"]


def test_a_request_ended_by_the_shutdown_is_a_503_to_retry_in_each_dialects_shape():
    """What the drain timeout leaves running is ended by the engine with is_server_stopping: a 503 with
    Retry-After (another instance may serve it), not a 500."""
    stopped = [StepOutput("r", "Hel", 1), StepOutput("r", finish_reason=FinishReason.ABORT,
                                                     error="the server is shutting down", is_server_stopping=True)]
    client = client_for(FakeEngine(stopped))
    openai = client.post("/v1/chat/completions", json={"messages": HELLO})
    assert openai.status_code == 503 and openai.headers["retry-after"] == "1"
    assert openai.json()["error"]["code"] == "shutting_down" and "shutting down" in openai.json()["error"]["message"]
    ollama = client.post("/api/chat", json={"model": MODEL, "messages": HELLO, "stream": False})
    assert ollama.status_code == 503 and ollama.headers["retry-after"] == "1"
    assert "shutting down" in ollama.json()["error"]
    anthropic = client.post("/v1/messages", json={"model": MODEL, "max_tokens": 8, "messages": HELLO})
    assert anthropic.status_code == 503 and anthropic.headers["retry-after"] == "1"
    assert anthropic.json()["error"]["type"] == "overloaded_error"
    streamed = sse(client.post("/v1/chat/completions", json={"messages": HELLO, "stream": True}))
    assert streamed[-2]["error"]["code"] == "shutting_down"


def test_a_stream_without_a_finish_is_an_error_event():
    lines = ndjson(client_for(FakeEngine(OUTPUTS[:2])).post("/api/chat", json={"model": MODEL, "messages": HELLO}))
    assert "without a finish reason" in lines[-1]["error"]


# --- a client that leaves ---------------------------------------------------------------------------

def _generation(outputs: list):
    engine = FakeEngine(outputs)
    params = SamplingParams(max_tokens=8)
    return submit(engine, "r", Prompt("hi", [0]), params, Timings(started=0.0)), engine


class FakeHTTPRequest:
    """The client hangs up at once."""

    async def receive(self) -> dict:
        return {"type": "http.disconnect"}


def test_a_client_that_leaves_before_the_collected_answer_aborts_it():
    generation, engine = _generation([None])
    assert asyncio.run(collect_unless_gone(FakeHTTPRequest(), generation)) is None
    assert engine.streams[0].num_aborts == 1


def test_a_client_that_leaves_a_stream_aborts_it_but_a_finished_one_is_left_alone():
    async def serve(outputs: list) -> FakeStream:
        generation, engine = _generation(outputs)
        response = stream_response(generation, NDJSONFraming(generation, OLLAMA_CHAT, MODEL))
        sent: list = []

        async def send(message) -> None:
            sent.append(message)

        scope = {"type": "http", "asgi": {"spec_version": "2.3"}}
        await response(scope, FakeHTTPRequest().receive, send)
        return engine.streams[0]

    assert asyncio.run(serve([None])).num_aborts == 1
    assert asyncio.run(serve(OUTPUTS)).num_aborts == 0


def test_timings_mark_load_submit_first_token_and_finish():
    async def run() -> Timings:
        pool = FakePool(FakeEngine([StepOutput("r", "", 0)] + OUTPUTS))
        timings = Timings(started=0.0)
        engine = await resolve_engine(pool, None, timings)
        generation = submit(engine, "r", text_prompt(engine, "hi"), SamplingParams(), timings)
        await collect(generation)
        return timings

    timings = asyncio.run(run())
    assert 0 < timings.load_started <= timings.loaded <= timings.submitted <= timings.first_output <= timings.finished


# --- the seam ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("protocol, concrete", [(engine_client.PoolClient, ModelPool),
                                                (engine_client.EngineClient, Engine),
                                                (engine_client.OutputStream, RequestStream)])
def test_the_runtime_offers_what_the_api_needs(protocol, concrete):
    """Every method of the protocol exists on the runtime class, taking the same arguments; every property
    is one of the class's or an attribute its __init__ sets."""
    for name, member in vars(protocol).items():
        if isinstance(member, property):
            assert hasattr(concrete, name) or name in concrete.__init__.__code__.co_names, \
                f"{concrete.__name__} lacks {name}"
        elif callable(member) and (not name.startswith("_") or name == "__aiter__"):
            real = getattr(concrete, name, None)
            assert real is not None, f"{concrete.__name__} lacks {name}"
            assert list(inspect.signature(real).parameters) == list(inspect.signature(member).parameters), name
