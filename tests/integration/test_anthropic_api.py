"""Anthropic's Messages API on the real server (both backends), driven by the official `anthropic` client
(and raw httpx for the event order and the error shapes): messages.create, messages.stream,
messages.count_tokens, stop sequences, system prompts, multi-turn, x-api-key, and a 400 in Anthropic's
shape for every bad or unimplemented field. A 135M model: structure, determinism and lengths, never facts.
"""
from __future__ import annotations

import json

import anthropic
import httpx
import jsonschema
import pytest

from tests.integration.conftest import start_llamacpp_server

API_KEY = "anthropic-test-key"
QUESTION = [{"role": "user", "content": "Name three colors."}]
# This client (anthropic 2.x) has no sampling arguments any more: they go in the body as extra fields.
GREEDY = {"max_tokens": 16, "extra_body": {"temperature": 0}}


@pytest.fixture
def claude(server) -> anthropic.Anthropic:
    """The official anthropic client pointed at the server (it appends /v1/messages itself)."""
    return anthropic.Anthropic(base_url=server.base_url, api_key="not-needed", max_retries=0, timeout=120)


def text_of(message) -> str:
    assert [block.type for block in message.content] == ["text"]
    return message.content[0].text


# --- messages.create ------------------------------------------------------------------------------------

def test_create_returns_a_message_with_usage(server, claude):
    message = claude.messages.create(model=server.model, messages=QUESTION, **GREEDY)
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert message.model == server.model
    assert text_of(message).strip()
    assert message.stop_reason in ("end_turn", "max_tokens") and message.stop_sequence is None
    usage = message.usage
    assert usage.input_tokens + usage.cache_read_input_tokens > 0 and 0 < usage.output_tokens <= 16


def test_greedy_is_deterministic(server, claude):
    first = claude.messages.create(model=server.model, messages=QUESTION, **GREEDY)
    second = claude.messages.create(model=server.model, messages=QUESTION, **GREEDY)
    assert text_of(first) == text_of(second)


def test_max_tokens_ends_with_max_tokens(server, claude):
    message = claude.messages.create(model=server.model, messages=QUESTION, max_tokens=3,
                                     extra_body={"temperature": 0})
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 3


def test_stop_sequence_is_reported(server, claude):
    greedy = {"max_tokens": 24, "extra_body": {"temperature": 0}}
    full = text_of(claude.messages.create(model=server.model, messages=QUESTION, **greedy))
    words = full.split()
    assert len(words) >= 3, full
    stop = words[2]
    message = claude.messages.create(model=server.model, messages=QUESTION, stop_sequences=["ZZZ-never", stop],
                                     **greedy)
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == stop
    assert text_of(message) == full[:full.index(stop)]


def test_system_prompt_as_string_or_blocks_is_used(server, claude):
    system = "You are a terse assistant. Answer in one word."
    shorter = claude.messages.count_tokens(model=server.model, system="Be terse.", messages=QUESTION)
    as_string = claude.messages.count_tokens(model=server.model, system=system, messages=QUESTION)
    as_blocks = claude.messages.count_tokens(model=server.model, messages=QUESTION,
                                             system=[{"type": "text", "text": system}])
    assert as_string.input_tokens == as_blocks.input_tokens > shorter.input_tokens
    message = claude.messages.create(model=server.model, system=[{"type": "text", "text": system}],
                                     messages=QUESTION, **GREEDY)
    assert message.usage.input_tokens + message.usage.cache_read_input_tokens == as_string.input_tokens


def test_multi_turn_with_text_blocks(server, claude):
    messages = [{"role": "user", "content": [{"type": "text", "text": "My name is Ada."}]},
                {"role": "assistant", "content": "Nice to meet you, Ada."},
                {"role": "user", "content": [{"type": "text", "text": "What is my name?"}]}]
    message = claude.messages.create(model=server.model, messages=messages, **GREEDY)
    counted = claude.messages.count_tokens(model=server.model, messages=messages).input_tokens
    assert text_of(message) and message.usage.input_tokens + message.usage.cache_read_input_tokens == counted
    assert counted > claude.messages.count_tokens(model=server.model, messages=messages[-1:]).input_tokens


def test_metadata_and_sampling_fields_are_accepted(server, claude):
    message = claude.messages.create(model=server.model, messages=QUESTION, max_tokens=8, metadata={"user_id": "user-1"},
                                     extra_body={"temperature": 0.7, "top_p": 0.9, "top_k": 40},
                                     cache_control={"type": "ephemeral"})
    assert message.usage.output_tokens <= 8


# --- streaming ------------------------------------------------------------------------------------------

def test_stream_gives_the_same_text_as_create(server, claude):
    created = claude.messages.create(model=server.model, messages=QUESTION, **GREEDY)
    with claude.messages.stream(model=server.model, messages=QUESTION, **GREEDY) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == text_of(final) == text_of(created)
    assert final.stop_reason == created.stop_reason and final.usage.output_tokens == created.usage.output_tokens


def _events(http: httpx.Client, body: dict) -> list[tuple[str, dict]]:
    events = []
    with http.stream("POST", "/v1/messages", json=body) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                data = json.loads(line[len("data: "):])
                assert data["type"] == name
                events.append((name, data))
    return events


def test_stream_event_sequence(server, http):
    events = _events(http, {"model": server.model, "messages": QUESTION, "max_tokens": 4, "temperature": 0,
                            "stream": True})
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[3:-3] == ["content_block_delta"] * (len(names) - 6) and len(names) > 6
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["usage"]["output_tokens"] == 0
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == 4
    assert all(data["delta"]["type"] == "text_delta" for name, data in events if name == "content_block_delta")


# --- prefill and thinking -------------------------------------------------------------------------------

def test_a_final_assistant_message_is_continued(server, claude, http):
    """A prefill: the model continues the assistant's text; the answer is only the continuation."""
    prefilled = [*QUESTION, {"role": "assistant", "content": "The three colors are"}]
    first = claude.messages.create(model=server.model, messages=prefilled, **GREEDY)
    second = claude.messages.create(model=server.model, messages=prefilled, **GREEDY)
    assert text_of(first) == text_of(second) and not text_of(first).startswith("The three colors are")
    counts = [http.post("/v1/messages/count_tokens", json={"model": server.model, "messages": messages})
              .json()["input_tokens"] for messages in (QUESTION, prefilled)]
    assert counts[1] > counts[0]
    usage = first.usage
    assert usage.input_tokens + usage.cache_read_input_tokens == counts[1]


def test_an_open_think_block_is_answered_as_a_thinking_block(server, claude):
    """A prompt that ends inside <think> (as R1-style templates leave it) makes the output reasoning (the
    135M model never closes the block): it comes back as a thinking block, created and streamed, and is
    left out when thinking is disabled."""
    messages = [*QUESTION, {"role": "assistant", "content": "<think>"}]
    fields = {"model": server.model, "messages": messages, "max_tokens": 6, "extra_body": {"temperature": 0}}
    created = claude.messages.create(**fields, thinking={"type": "adaptive"})
    assert [block.type for block in created.content] == ["thinking"] and created.content[0].thinking.strip()
    assert created.stop_reason in ("end_turn", "max_tokens")
    with claude.messages.stream(**fields, thinking={"type": "adaptive"}) as stream:
        kinds = {event.delta.type for event in stream if event.type == "content_block_delta"}
        final = stream.get_final_message()
    assert kinds == {"thinking_delta"} and final.content[0].thinking == created.content[0].thinking
    hidden = claude.messages.create(**fields, thinking={"type": "disabled"})
    assert [block.type for block in hidden.content] == ["text"] and hidden.content[0].text == ""


def test_earlier_thinking_blocks_are_accepted_in_the_history(server, claude):
    history = [*QUESTION, {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "Colors are easy.", "signature": ""}, {"type": "text", "text": "Red."}]},
        {"role": "user", "content": "And two more?"}]
    assert text_of(claude.messages.create(model=server.model, messages=history, **GREEDY)) is not None


# --- errors in Anthropic's shape ------------------------------------------------------------------------

def _error(http: httpx.Client, path: str, body: dict, status: int = 400) -> str:
    response = http.post(path, json=body)
    assert response.status_code == status, response.text
    payload = response.json()
    assert payload["type"] == "error" and set(payload["error"]) == {"type", "message"}
    expected = {400: "invalid_request_error", 404: "not_found_error"}[status]
    assert payload["error"]["type"] == expected
    return payload["error"]["message"]


@pytest.mark.parametrize("change, fragment", [
    ({"max_tokens": None}, "max_tokens: required"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "system", "content": "x"}]}, "top-level `system` field"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "role must be 'user' or 'assistant'"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y "}]}, "whitespace"),
    ({"messages": [{"role": "user", "content": [{"type": "thinking", "thinking": "x"}]}]}, "assistant messages"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}, "image content"),
    ({"messages": [{"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "t"}]}]},
     "tool_result blocks belong to user messages"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]},
     "tool_use blocks belong to assistant messages"),
    ({"temperature": 1.5}, "temperature"),
    ({"stop_sequences": [" "]}, "stop_sequences[0]"),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "server tools"),
    ({"tools": [{"name": "get weather", "input_schema": {"type": "object"}}]}, "name must be 1 to 64"),
    ({"tools": [{"name": "f", "input_schema": {"type": "string"}}]}, "must describe an object"),
    ({"tools": [{"name": "f"}]}, "input_schema"),
    ({"tool_choice": {"type": "any"}}, "tool_choice 'required' needs at least one tool"),
    ({"tool_choice": {"type": "tool"}}, "tool_choice.name: required"),
    ({"tools": [{"name": "f", "input_schema": {"type": "object"}}], "tool_choice": {"type": "tool", "name": "g"}},
     "not in tools"),
    ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "must be less than max_tokens"),
    ({"thinking": {"type": "enabled"}, "max_tokens": 4096}, "thinking.budget_tokens: required"),
    ({"thinking": {"type": "enabled", "budget_tokens": 100}}, "thinking.budget_tokens"),
    ({"output_config": {"effort": "low"}}, "output_config"),
    ({"frobnicate": True}, "frobnicate: unknown field"),
])
def test_bad_or_unimplemented_fields_are_400s_naming_them(server, http, change, fragment):
    body = {"model": server.model, "messages": QUESTION, "max_tokens": 4, **change}
    body = {key: value for key, value in body.items() if value is not None}
    assert fragment in _error(http, "/v1/messages", body)


def test_unknown_model_is_a_404_in_anthropic_shape(server, http, claude):
    assert "is not available" in _error(http, "/v1/messages", {"model": "claude-nope", "messages": QUESTION,
                                                                "max_tokens": 4}, status=404)
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.create(model="claude-nope", messages=QUESTION, max_tokens=4)


def test_count_tokens_refuses_what_it_cannot_count(server, http):
    message = _error(http, "/v1/messages/count_tokens",
                     {"model": server.model, "messages": QUESTION, "max_tokens": 4})
    assert "max_tokens: unknown field" in message


def test_malformed_json_is_a_400_in_anthropic_shape(server, http):
    response = http.post("/v1/messages", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"
    assert "malformed JSON" in response.json()["error"]["message"]


# --- the API key as x-api-key ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def guarded_server(tmp_path_factory):
    with start_llamacpp_server(tmp_path_factory, "anthropic-key", ["--ctx", "512", "--parallel", "1"],
                               api_key=API_KEY) as running:
        yield running


def test_x_api_key_is_accepted(guarded_server):
    claude = anthropic.Anthropic(base_url=guarded_server.base_url, api_key=API_KEY, max_retries=0, timeout=120)
    message = claude.messages.create(model=guarded_server.model, messages=QUESTION, max_tokens=2)
    assert message.usage.output_tokens <= 2
    wrong = anthropic.Anthropic(base_url=guarded_server.base_url, api_key="wrong", max_retries=0, timeout=120)
    with pytest.raises(anthropic.AuthenticationError):
        wrong.messages.create(model=guarded_server.model, messages=QUESTION, max_tokens=2)


def test_a_missing_or_wrong_key_is_a_401_in_anthropic_shape(guarded_server):
    body = {"model": guarded_server.model, "messages": QUESTION, "max_tokens": 2}
    with httpx.Client(base_url=guarded_server.base_url, timeout=60) as http:
        missing = http.post("/v1/messages", json=body)
        wrong = http.post("/v1/messages/count_tokens", json=body, headers={"x-api-key": "wrong"})
        openai_shaped = http.post("/v1/chat/completions", json=body)
    for response in (missing, wrong):
        assert response.status_code == 401
        payload = response.json()
        assert payload["type"] == "error" and payload["error"]["type"] == "authentication_error"
    assert "x-api-key" in missing.json()["error"]["message"]
    assert openai_shaped.status_code == 401 and "Bearer" in openai_shaped.json()["error"]["message"]


# --- tool use -------------------------------------------------------------------------------------------

WEATHER_TOOL = {"name": "get_weather", "description": "The current weather in a city.",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"},
                                                                  "unit": {"enum": ["celsius", "fahrenheit"]}},
                                 "required": ["city"]}}
# one call: a forced choice lets the model call again and again (parallel calls) until max_tokens
FORCED = {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}
WEATHER_QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


def test_forced_tool_choice_gives_a_tool_use_that_matches_the_schema(server, claude):
    """The grammar makes even the 135M model call the named tool with input valid for its schema."""
    message = claude.messages.create(model=server.model, messages=WEATHER_QUESTION, max_tokens=64,
                                     tools=[WEATHER_TOOL], tool_choice=FORCED, extra_body={"temperature": 0})
    calls = message.content
    assert [block.type for block in calls] == ["tool_use"] and calls[0].name == "get_weather" and calls[0].id
    jsonschema.validate(calls[0].input, WEATHER_TOOL["input_schema"])
    assert message.stop_reason == "tool_use"


def test_any_tool_choice_calls_a_tool(server, claude):
    message = claude.messages.create(model=server.model, messages=WEATHER_QUESTION, max_tokens=64,
                                     tools=[WEATHER_TOOL],
                                     tool_choice={"type": "any", "disable_parallel_tool_use": True},
                                     extra_body={"temperature": 0})
    assert [block.type for block in message.content] == ["tool_use"] and message.stop_reason == "tool_use"


def test_tool_choice_none_answers_in_text(server, claude):
    message = claude.messages.create(model=server.model, messages=WEATHER_QUESTION, max_tokens=8,
                                     tools=[WEATHER_TOOL], tool_choice={"type": "none"},
                                     extra_body={"temperature": 0})
    assert [block.type for block in message.content] == ["text"] and message.stop_reason != "tool_use"


def test_streamed_tool_use_is_the_created_one(server, claude, http):
    fields = {"model": server.model, "messages": WEATHER_QUESTION, "max_tokens": 64, "tools": [WEATHER_TOOL],
              "tool_choice": FORCED}
    created = claude.messages.create(**fields, extra_body={"temperature": 0})
    with claude.messages.stream(**fields, extra_body={"temperature": 0}) as stream:
        final = stream.get_final_message()
    assert [(b.type, getattr(b, "name", None), getattr(b, "input", None)) for b in final.content] == \
        [(b.type, getattr(b, "name", None), getattr(b, "input", None)) for b in created.content]
    assert final.stop_reason == "tool_use"
    events = _events(http, {**fields, "temperature": 0, "stream": True})
    starts = [data["content_block"] for name, data in events if name == "content_block_start"]
    tool_start = next(block for block in starts if block["type"] == "tool_use")
    assert tool_start["name"] == "get_weather" and tool_start["input"] == {}
    partial = "".join(data["delta"]["partial_json"] for name, data in events
                      if name == "content_block_delta" and data["delta"]["type"] == "input_json_delta")
    assert json.loads(partial) == next(b.input for b in created.content if b.type == "tool_use")
    indexes = [data["index"] for name, data in events if name == "content_block_start"]
    assert indexes == list(range(len(indexes)))


def test_a_tool_result_round_trip(server, claude):
    first = claude.messages.create(model=server.model, messages=WEATHER_QUESTION, max_tokens=64,
                                   tools=[WEATHER_TOOL], tool_choice=FORCED, extra_body={"temperature": 0})
    call = next(block for block in first.content if block.type == "tool_use")
    history = [*WEATHER_QUESTION, {"role": "assistant", "content": [block.model_dump() for block in first.content]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                             "content": '{"temperature": 21, "unit": "celsius"}'}]}]
    answer = claude.messages.create(model=server.model, messages=history, max_tokens=16, tools=[WEATHER_TOOL],
                                    tool_choice={"type": "none"}, extra_body={"temperature": 0})
    assert [block.type for block in answer.content] == ["text"]
    counted = claude.messages.count_tokens(model=server.model, messages=history, tools=[WEATHER_TOOL]).input_tokens
    assert counted > claude.messages.count_tokens(model=server.model, messages=WEATHER_QUESTION,
                                                  tools=[WEATHER_TOOL]).input_tokens
