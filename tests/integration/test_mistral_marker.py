"""Mistral's `[TOOL_CALLS]` marker is a special (control) token of its vocabulary, and llama.cpp leaves control
tokens out of the text: without keeping it, the parser never sees the marker and a call comes back as content.

The model is the real SmolLM2 with `[TOOL_CALLS]` as a control token and a Mistral-style chat template
(tests/fixtures_gguf.py), so the format is recognised from the template as mistral. A logit bias makes the
135M model write the marker as that one special token (not spelled out in ordinary tokens), which is what a
Mistral model does; with `auto` the output is free until that token, so the call is found only if the token
shows in the text (without kept special tokens these tests fail). `required` holds the output to the grammar
from the start, whose literal marker llguidance matches with ordinary tokens: it passes either way. vLLM's side (skip_special_tokens=False for such a request) is unit-tested in
tests/unit/test_kept_special_tokens.py: a second vLLM server with this vocabulary would take minutes here.
"""
from __future__ import annotations

import json

import pytest

from tests.fixtures_gguf import MISTRAL_MARKER, MISTRAL_MARKER_ID, mistral_marked_gguf
from tests.integration.conftest import start_llamacpp_server

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                   "required": ["city"], "additionalProperties": False}}}
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
MARKER_FIRST = {str(MISTRAL_MARKER_ID): 100}  # the marker as its special token, as Mistral models write it


@pytest.fixture(scope="module")
def mistral(tmp_path_factory):
    model = mistral_marked_gguf()
    args = ["--model", str(model), "--ctx", "1024", "--parallel", "2"]
    with start_llamacpp_server(tmp_path_factory, "mistral-marker", args) as server, server.http() as http:
        yield http, model.stem


def _chat(http, model: str, **fields) -> dict:
    body = {"model": model, "messages": QUESTION, "temperature": 0, "max_tokens": 60, **fields}
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]


@pytest.mark.parametrize("tool_choice", ["required", "auto"])
def test_a_call_after_the_special_marker_token_is_parsed(mistral, tool_choice):
    http, model = mistral
    choice = _chat(http, model, tools=[WEATHER], tool_choice=tool_choice, logit_bias=MARKER_FIRST)
    assert choice["finish_reason"] == "tool_calls", choice
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert isinstance(json.loads(call["function"]["arguments"])["city"], str)
    assert MISTRAL_MARKER not in (choice["message"]["content"] or "")


def test_the_streamed_call_is_parsed_too(mistral):
    http, model = mistral
    body = {"model": model, "messages": QUESTION, "temperature": 0, "max_tokens": 60, "stream": True,
            "tools": [WEATHER], "tool_choice": "auto", "logit_bias": MARKER_FIRST}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        chunks = [json.loads(line[6:]) for line in response.iter_lines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    calls = [call for delta in deltas for call in delta.get("tool_calls") or ()]
    assert calls[0]["function"]["name"] == "get_weather"
    assert json.loads("".join(call["function"].get("arguments") or "" for call in calls))["city"]
    assert not any(MISTRAL_MARKER in (delta.get("content") or "") for delta in deltas)


def test_without_tools_the_special_token_stays_out_of_the_text(mistral):
    http, model = mistral
    choice = _chat(http, model, logit_bias=MARKER_FIRST, max_tokens=8)
    assert MISTRAL_MARKER not in choice["message"]["content"]
