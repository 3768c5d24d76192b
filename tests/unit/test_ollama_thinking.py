"""Ollama's `think` and `thinking` through the real app over a Fake engine replaying a recorded reasoning
answer (the 135M test model does not think): the block goes to `message.thinking` (`thinking` in
/api/generate), streamed as it comes; think=false hides it; asking a model that does not reason to think,
or giving a level to a model without harmony output (or whose template reads no level), is a 400 in Ollama's
shape."""
from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from serve.api.app import create_app
from serve.config import ServerConfig
from serve.models.catalog import load_catalog
from serve.sequence import FinishReason, StepOutput
from tests.unit.test_generation import MODEL, FakeEngine, FakePool

# A Qwen3-style answer, cut where a streamed one may be cut: inside both tags.
RECORDED = [StepOutput("r", "<thi", 1), StepOutput("r", "nk>\nThe user greets", 2),
            StepOutput("r", " me.\n</th", 2), StepOutput("r", "ink>\n\nHello", 2),
            StepOutput("r", " there!", 2, FinishReason.STOP)]
THINKING, CONTENT = "The user greets me.", "Hello there!"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
GENERATE = {"model": MODEL, "prompt": "hi"}


def client_with(reasoning_format: str | None) -> TestClient:
    """The engine carries the catalog's reasoning_format (serve/runtime/loader.py)."""
    engine = FakeEngine(RECORDED, reasoning_format=reasoning_format)
    return TestClient(create_app(FakePool(engine), ServerConfig(), load_catalog()), raise_server_exceptions=False)


def lines(response) -> list[dict]:
    assert response.status_code == 200, response.text
    return [json.loads(line) for line in response.text.splitlines()]


@pytest.mark.parametrize("think", [None, True])
def test_a_reasoning_models_thinking_is_its_own_field(think):
    body = {**CHAT, "stream": False, **({"think": think} if think is not None else {})}
    reply = client_with("think_tags").post("/api/chat", json=body).json()
    assert reply["message"] == {"role": "assistant", "content": CONTENT, "thinking": THINKING}
    assert reply["done"] is True and reply["eval_count"] == 9


def test_thinking_streams_as_it_comes_and_never_shows_a_tag():
    objects = lines(client_with("think_tags").post("/api/chat", json={**CHAT, "think": True}))
    thinking = "".join(o["message"].get("thinking", "") for o in objects)
    content = "".join(o["message"]["content"] for o in objects)
    assert (thinking, content) == (THINKING, CONTENT)
    assert not any("<" in json.dumps(o["message"]) for o in objects)
    first_thought = next(i for i, o in enumerate(objects) if o["message"].get("thinking"))
    first_word = next(i for i, o in enumerate(objects) if o["message"]["content"])
    assert first_thought < first_word and objects[-1]["done"] is True


def test_generate_answers_thinking_beside_the_response():
    client = client_with("think_tags")
    reply = client.post("/api/generate", json={**GENERATE, "stream": False, "think": True}).json()
    assert (reply["thinking"], reply["response"]) == (THINKING, CONTENT)
    objects = lines(client.post("/api/generate", json={**GENERATE, "think": True}))
    assert "".join(o.get("thinking", "") for o in objects) == THINKING
    assert "".join(o["response"] for o in objects) == CONTENT


@pytest.mark.parametrize("stream", [False, True])
def test_think_false_hides_the_thinking(stream):
    client = client_with("think_tags")
    for path, body in (("/api/chat", CHAT), ("/api/generate", GENERATE)):
        objects = lines(client.post(path, json={**body, "think": False, "stream": stream}))
        assert not any("thinking" in o or "thinking" in o.get("message", {}) for o in objects)
        text = "".join(o["message"]["content"] if "message" in o else o["response"] for o in objects)
        assert text == CONTENT


def test_a_model_that_does_not_reason_answers_as_it_is():
    reply = client_with(None).post("/api/chat", json={**CHAT, "stream": False, "think": False}).json()
    assert reply["message"] == {"role": "assistant", "content": "".join(o.text for o in RECORDED)}


@pytest.mark.parametrize("reasoning_format, think, message", [
    (None, True, f"'{MODEL}' does not support thinking"),
    (None, "high", f"'{MODEL}' does not support thinking levels; send think true or false"),
    ("think_tags", "low", f"'{MODEL}' does not support thinking levels"),
    ("harmony", "medium", "reasoning_effort 'medium': this model's chat template has no reasoning levels"),
    ("think_tags", "hard", 'think: think must be true, false, "low", "medium" or "high", got \'hard\'')])
def test_think_the_model_cannot_honour_is_a_400_in_ollamas_shape(reasoning_format, think, message):
    for path, body in (("/api/chat", CHAT), ("/api/generate", GENERATE)):
        response = client_with(reasoning_format).post(path, json={**body, "think": think})
        assert response.status_code == 400 and list(response.json()) == ["error"]
        assert response.json()["error"].startswith(message), response.json()
