"""Tool calling on the real server through the official openai and ollama clients, on both backends.

SmolLM2-135M-Instruct's template knows no tools, so it gets the generic format (the tools described in the
system message, calls as <tool_call> blocks). `required` and a named tool_choice are held by a grammar, so
even this 135M model returns calls whose arguments are valid under their schema; the tests check that
structure (jsonschema), never what the model chose to say.
"""
from __future__ import annotations

import json

import httpx
import jsonschema
import ollama
import pytest

WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"},
                                                   "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                  "required": ["city", "unit"], "additionalProperties": False}
TIME_SCHEMA = {"type": "object", "properties": {"timezone": {"type": "string"}, "hours_ahead": {"type": "integer",
                                                                                               "minimum": 0, "maximum": 48}},
               "required": ["timezone", "hours_ahead"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather of a city",
                                           "parameters": WEATHER_SCHEMA}},
         {"type": "function", "function": {"name": "get_time", "description": "Local time in a timezone",
                                           "parameters": TIME_SCHEMA}}]
SCHEMAS = {"get_weather": WEATHER_SCHEMA, "get_time": TIME_SCHEMA}
QUESTION = [{"role": "user", "content": "What's the weather in Paris?"}]


def assert_valid_call(name: str, arguments: str | dict) -> dict:
    assert name in SCHEMAS, name
    parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
    jsonschema.validate(parsed, SCHEMAS[name])
    return parsed


@pytest.fixture
def chat(server, client):
    """chat(**kwargs): a chat completion about the weather with TOOLS, unless kwargs say otherwise."""
    return lambda **kwargs: _chat(client, server.model, **kwargs)


def _chat(client, model: str, **kwargs):
    return client.chat.completions.create(model=model, messages=kwargs.pop("messages", QUESTION),
                                          tools=kwargs.pop("tools", TOOLS), max_tokens=kwargs.pop("max_tokens", 120),
                                          timeout=600, **kwargs)  # grammar-held tokens are slow on 2 busy cores


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_required_returns_one_valid_call(chat, seed):
    response = chat(tool_choice="required", parallel_tool_calls=False, temperature=0.8, seed=seed)
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_") and len(call.id) == 29
    assert_valid_call(call.function.name, call.function.arguments)


def test_named_choice_calls_that_tool(chat):
    for name in SCHEMAS:
        response = chat(tool_choice={"type": "function", "function": {"name": name}},
                        parallel_tool_calls=False, temperature=0)
        [call] = response.choices[0].message.tool_calls
        assert call.function.name == name and response.choices[0].finish_reason == "tool_calls"
        assert_valid_call(name, call.function.arguments)


def test_parallel_calls_each_valid_with_their_own_ids(chat):
    response = chat(tool_choice="required", temperature=0, max_tokens=100,
                    messages=[{"role": "user", "content": "Weather in Paris and in Rome, and the time in Tokyo?"}])
    choice = response.choices[0]
    calls = choice.message.tool_calls
    assert calls and len({call.id for call in calls}) == len(calls)
    complete = calls if choice.finish_reason == "tool_calls" else calls[:-1]  # max_tokens may cut the last one
    assert choice.finish_reason in ("tool_calls", "length") and complete
    for call in complete:
        assert_valid_call(call.function.name, call.function.arguments)


def test_none_answers_in_text(chat):
    response = chat(tool_choice="none", temperature=0, max_tokens=30)
    choice = response.choices[0]
    assert choice.message.tool_calls is None and isinstance(choice.message.content, str) and choice.message.content
    assert choice.finish_reason in ("stop", "length")


def _shape(message) -> tuple:
    calls = [(c.function.name, c.function.arguments) for c in message.tool_calls or []]
    return message.content, calls


def test_auto_is_text_or_valid_calls_and_deterministic(chat):
    # Compared with the prompt cache in the same state: a prompt computed whole and one reused from the
    # cache differ in the last bits of their logits, which may move a near tie (llama-server's cache too).
    chat(tool_choice="auto", temperature=0, max_tokens=1)
    first, second = (chat(tool_choice="auto", temperature=0, max_tokens=60).choices[0] for _ in range(2))
    assert _shape(first.message) == _shape(second.message)
    if first.message.tool_calls:
        assert first.finish_reason in ("tool_calls", "length")
        assert all(call.function.name in SCHEMAS for call in first.message.tool_calls)
    else:
        assert first.message.content and first.finish_reason in ("stop", "length")


def test_streamed_deltas_reassemble_into_the_same_calls(chat):
    kwargs = dict(tool_choice="required", parallel_tool_calls=False, temperature=0)
    whole = chat(**kwargs).choices[0].message.tool_calls
    names, ids, arguments, finish = {}, {}, {}, None
    for chunk in chat(stream=True, **kwargs):
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        assert not choice.delta.content
        for delta in choice.delta.tool_calls or []:
            if delta.function.name is not None:  # the first delta of a call: id, type and name
                assert delta.index not in names and delta.id and delta.type == "function"
                names[delta.index], ids[delta.index] = delta.function.name, delta.id
            else:
                assert delta.index in names and delta.id is None
            arguments[delta.index] = arguments.get(delta.index, "") + (delta.function.arguments or "")
    assert finish == "tool_calls" and list(names) == [0]
    assert_valid_call(names[0], arguments[0])
    assert (names[0], json.loads(arguments[0])) == (whole[0].function.name, json.loads(whole[0].function.arguments))


def test_round_trip_call_result_answer(chat):
    called = chat(tool_choice={"type": "function", "function": {"name": "get_weather"}},
                  parallel_tool_calls=False, temperature=0).choices[0].message
    call = called.tool_calls[0]
    history = [*QUESTION, called.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"celsius": 21, "sky": "clear"})}]
    answer = chat(messages=history, tool_choice="none", temperature=0, max_tokens=40).choices[0]
    assert answer.message.content and answer.message.tool_calls is None
    again = chat(messages=history, tool_choice="auto", temperature=0, max_tokens=40).choices[0]
    assert again.message.content or again.message.tool_calls


@pytest.mark.parametrize("body,param,message", [
    ({"tool_choice": {"type": "function", "function": {"name": "get_stock"}}}, "tool_choice",
     "names the function 'get_stock', which is not in tools"),
    ({"tools": [], "tool_choice": "required"}, "tool_choice", "needs at least one tool"),
    ({"messages": [*QUESTION, {"role": "tool", "content": "21"}]}, "messages[1].tool_call_id", "without tool_call_id"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties":
                                                                                {"a": {"type": "strin"}}}}}]},
     "tools[0].function.parameters", "not a valid JSON schema"),
    ({"tools": [{"type": "function", "function": {"name": "get weather"}}]}, "tools[0].function.name", "letters"),
    ({"messages": [*QUESTION, {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {
        "name": "get_weather", "arguments": "{oops"}}]}]}, "messages[1].tool_calls[0].function.arguments",
     "is not valid JSON"),
])
def test_bad_tool_requests_are_400s_naming_the_field(server, body, param, message):
    request = {"model": server.model, "messages": QUESTION, "tools": TOOLS, "max_tokens": 5, **body}
    response = httpx.post(f"{server.api_url}/chat/completions", json=request, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and message in error["message"], error


def _ollama(server) -> ollama.Client:
    return ollama.Client(host=server.base_url)


def test_ollama_tool_calls_in_ollama_shape(server):
    messages = [{"role": "user", "content": "Call get_weather for Paris."}]
    options = {"temperature": 0, "num_predict": 80}
    reply = _ollama(server).chat(model=server.model, messages=messages, tools=TOOLS[:1], options=options)
    assert reply.done and reply.done_reason in ("stop", "length")
    streamed = list(_ollama(server).chat(model=server.model, messages=messages, tools=TOOLS[:1], options=options,
                                         stream=True))
    assert streamed[-1].done and not streamed[-1].message.tool_calls
    calls = [call for part in [reply, *streamed] for call in part.message.tool_calls or []]
    for call in calls:  # whole calls (one message each when streamed), arguments as an object
        assert call.function.name == "get_weather"
        assert_valid_call(call.function.name, call.function.arguments)
    # Greedy on llama.cpp, this prompt makes the model call (recorded); a batch that reuses the cached
    # prompt computes slightly different logits, so either reply may be the one that calls.
    if server.backend == "llamacpp":
        assert calls


def test_ollama_round_trip_with_a_tool_result(server):
    messages = [{"role": "user", "content": "What's the weather in Paris?"},
                {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather",
                                                                                  "arguments": {"city": "Paris"}}}]},
                {"role": "tool", "content": '{"celsius": 21}', "tool_name": "get_weather"}]
    reply = _ollama(server).chat(model=server.model, messages=messages, tools=TOOLS[:1],
                                 options={"temperature": 0, "num_predict": 40})
    assert reply.done and (reply.message.content or reply.message.tool_calls)


def test_ollama_bad_tool_is_a_400_in_ollama_shape(server):
    response = httpx.post(f"{server.base_url}/api/chat", timeout=60, json={
        "model": server.model, "messages": QUESTION, "stream": False,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]})
    assert response.status_code == 400 and "must describe an object" in response.json()["error"]
