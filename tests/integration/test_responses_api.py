"""OpenAI's Responses API on the real server (both backends), driven by the official `openai` client
(client.responses.create plain and streamed, responses.stream, previous_response_id, retrieve, delete)
and raw httpx for the error shapes: a 400 naming every bad or unimplemented parameter, a 404 for an
unknown stored response. A 135M model: structure, determinism and lengths, never facts.
"""
from __future__ import annotations

import json

import jsonschema
import openai
import pytest

QUESTION = "Name three colors."
GREEDY = {"max_output_tokens": 16, "temperature": 0}
STREAM_EVENTS = ["response.created", "response.in_progress", "response.output_item.added",
                 "response.content_part.added"]
CLOSING_EVENTS = ["response.output_text.done", "response.content_part.done", "response.output_item.done"]


def test_create_returns_a_response_with_one_message(server, client):
    response = client.responses.create(model=server.model, input=QUESTION, **GREEDY)
    assert response.object == "response" and response.id.startswith("resp_") and response.model == server.model
    assert response.status in ("completed", "incomplete")
    [message] = response.output
    assert message.type == "message" and message.role == "assistant" and message.status == response.status
    assert [part.type for part in message.content] == ["output_text"]
    assert response.output_text == message.content[0].text and response.output_text.strip()
    usage = response.usage
    assert usage.input_tokens > 0 and 0 < usage.output_tokens <= 16
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens


def test_max_output_tokens_makes_it_incomplete(server, client):
    response = client.responses.create(model=server.model, input=QUESTION, max_output_tokens=3, temperature=0)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 3


def test_instructions_and_message_items_are_used(server, client):
    plain = client.responses.create(model=server.model, input=QUESTION, max_output_tokens=1)
    instructed = client.responses.create(model=server.model, input=QUESTION, max_output_tokens=1,
                                         instructions="You are a terse assistant. Answer in one word.")
    as_items = client.responses.create(model=server.model, max_output_tokens=1, input=[
        {"role": "developer", "content": "You are a terse assistant. Answer in one word."},
        {"role": "user", "content": [{"type": "input_text", "text": QUESTION}]}])
    assert instructed.instructions.startswith("You are a terse")
    assert instructed.usage.input_tokens == as_items.usage.input_tokens != plain.usage.input_tokens


def test_greedy_is_deterministic(server, client):
    first = client.responses.create(model=server.model, input=QUESTION, **GREEDY)
    second = client.responses.create(model=server.model, input=QUESTION, **GREEDY)
    assert first.output_text == second.output_text


# --- streaming ------------------------------------------------------------------------------------------

def test_stream_event_sequence_and_text(server, client):
    created = client.responses.create(model=server.model, input=QUESTION, **GREEDY)
    events = list(client.responses.create(model=server.model, input=QUESTION, stream=True, **GREEDY))
    names = [event.type for event in events]
    assert names[:4] == STREAM_EVENTS and names[-4:-1] == CLOSING_EVENTS
    assert names[-1] == "response.completed" if created.status == "completed" else "response.incomplete"
    assert set(names[4:-4]) == {"response.output_text.delta"}
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    final = events[-1].response
    assert deltas == events[-4].text == final.output_text == created.output_text
    assert final.usage.output_tokens == created.usage.output_tokens
    assert client.responses.retrieve(final.id).output_text == deltas  # a streamed response is stored too


def test_stream_helper_accumulates_the_response(server, client):
    with client.responses.stream(model=server.model, input=QUESTION, **GREEDY) as stream:
        texts = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(texts) == final.output_text


# --- the store ------------------------------------------------------------------------------------------

def test_previous_response_id_continues_the_conversation(server, client):
    first = client.responses.create(model=server.model, input="My name is Ada.", **GREEDY)
    follow_up = client.responses.create(model=server.model, input="What is my name?",
                                        previous_response_id=first.id, **GREEDY)
    assert follow_up.previous_response_id == first.id
    # the same conversation sent in full is the same prompt (not always the same greedy answer: the prompt
    # then reuses the KV cache of `first`, computed in other batches, and the sums differ in the last bits)
    in_full = client.responses.create(model=server.model, **GREEDY, input=[
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "What is my name?"}])
    assert follow_up.usage.input_tokens == in_full.usage.input_tokens
    alone = client.responses.create(model=server.model, input="What is my name?", max_output_tokens=1)
    assert follow_up.usage.input_tokens > alone.usage.input_tokens


def test_earlier_output_items_may_be_sent_back_as_input(server, client):
    first = client.responses.create(model=server.model, input="My name is Ada.", **GREEDY)
    items = [{"role": "user", "content": "My name is Ada."}, *[item.model_dump() for item in first.output],
             {"role": "user", "content": "What is my name?"}]
    answered = client.responses.create(model=server.model, input=items, **GREEDY)
    assert answered.output_text
    # a reasoning model's earlier reasoning item goes back too; like OpenAI's API, it is not read again
    reasoning = {"type": "reasoning", "id": "rs_1", "summary": [],
                 "content": [{"type": "reasoning_text", "text": "The user says their name."}]}
    with_reasoning = client.responses.create(model=server.model, input=[*items[:1], reasoning, *items[1:]], **GREEDY)
    assert with_reasoning.usage.input_tokens == answered.usage.input_tokens


def test_retrieve_and_delete(server, client):
    response = client.responses.create(model=server.model, input=QUESTION, **GREEDY)
    retrieved = client.responses.retrieve(response.id)
    assert retrieved.id == response.id and retrieved.output_text == response.output_text
    client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError, match="no stored response"):
        client.responses.create(model=server.model, input=QUESTION, previous_response_id=response.id)


def test_store_false_is_not_kept(server, client):
    response = client.responses.create(model=server.model, input=QUESTION, store=False, max_output_tokens=2)
    assert response.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


def test_unknown_previous_response_id_is_a_404(server, http):
    response = http.post("/v1/responses", json={"input": QUESTION, "previous_response_id": "resp_unknown"})
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["param"] == "previous_response_id" and "resp_unknown" in error["message"]


# --- errors in OpenAI's shape ---------------------------------------------------------------------------

@pytest.mark.parametrize("change, fragment", [
    ({"input": None}, "input"),
    ({"input": []}, "input must not be empty"),
    ({"max_output_tokens": 0}, "max_output_tokens"),
    ({"temperature": 3}, "temperature"),
    ({"input": [{"role": "tool", "content": "x"}]}, "input"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input_image"),
    ({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{"}]}, "not valid JSON"),
    ({"input": [{"type": "function_call_output", "output": "1"}]}, "call_id"),
    ({"input": [{"type": "item_reference", "id": "x"}]}, "expected a message item"),
    ({"tools": [{"type": "web_search"}]}, "define function tools"),
    ({"tools": [{"type": "function", "name": "f", "parameters": {"type": "array"}}]}, "must describe an object"),
    ({"tool_choice": "required"}, "tool_choice 'required' needs at least one tool"),
    ({"tool_choice": {"type": "file_search"}}, "tool_choice of type 'file_search'"),
    ({"tools": [{"type": "function", "name": "f"}], "tool_choice": {"type": "function", "name": "g"}}, "not in tools"),
    ({"text": {"format": {"type": "json_schema", "name": "a"}}}, "needs name and schema"),
    ({"text": {"format": {"type": "json_schema", "name": "a", "schema": {"type": "nope"}}}}, "text.format.schema"),
    ({"reasoning": {"effort": "low"}}, "reasoning: reasoning options"),
    ({"include": ["reasoning.encrypted_content"]}, "include"),
    ({"background": True}, "background"),
    ({"truncation": "auto"}, "truncation"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"frobnicate": 1}, "frobnicate: unknown parameter"),
])
def test_bad_or_unimplemented_parameters_are_400s_naming_them(server, http, change, fragment):
    body = {"model": server.model, "input": QUESTION, "max_output_tokens": 2, **change}
    body = {key: value for key, value in body.items() if value is not None}
    response = http.post("/v1/responses", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and fragment in error["message"]


# --- function tools and structured output ---------------------------------------------------------------

WEATHER_TOOL = {"type": "function", "name": "get_weather", "description": "The current weather in a city.",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
# one call: a forced choice lets the model call again and again (parallel calls) until max_output_tokens
FORCED = {"tools": [WEATHER_TOOL], "tool_choice": {"type": "function", "name": "get_weather"},
          "parallel_tool_calls": False, "max_output_tokens": 64, "temperature": 0}
WEATHER_QUESTION = "What is the weather in Paris?"


def test_a_forced_function_call_matches_its_schema(server, client):
    response = client.responses.create(model=server.model, input=WEATHER_QUESTION, **FORCED)
    [call] = response.output
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id and call.id.startswith("fc_")
    jsonschema.validate(json.loads(call.arguments), WEATHER_TOOL["parameters"])
    assert response.status == "completed" and response.tools[0].name == "get_weather"


def test_a_streamed_function_call_is_the_created_one(server, client):
    created = client.responses.create(model=server.model, input=WEATHER_QUESTION, **FORCED)
    events = list(client.responses.create(model=server.model, input=WEATHER_QUESTION, stream=True, **FORCED))
    names = [event.type for event in events]
    assert names[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert events[2].item.type == "function_call" and events[2].item.arguments == ""
    deltas = "".join(event.delta for event in events if event.type == "response.function_call_arguments.delta")
    done = next(event for event in events if event.type == "response.function_call_arguments.done")
    assert deltas == done.arguments == created.output[0].arguments
    assert names[-2:] == ["response.output_item.done", "response.completed"]
    assert [event.sequence_number for event in events] == list(range(len(events)))


def test_a_function_call_output_round_trip(server, client):
    """The call, then its output sent with previous_response_id, then the same conversation sent in full."""
    first = client.responses.create(model=server.model, input=WEATHER_QUESTION, **FORCED)
    call = first.output[0]
    result = {"type": "function_call_output", "call_id": call.call_id, "output": '{"temperature": 21}'}
    follow_up = client.responses.create(model=server.model, input=[result], previous_response_id=first.id,
                                        tools=[WEATHER_TOOL], tool_choice="none", max_output_tokens=16, temperature=0)
    assert [item.type for item in follow_up.output] == ["message"]
    in_full = client.responses.create(model=server.model, tools=[WEATHER_TOOL], tool_choice="none",
                                      max_output_tokens=16, temperature=0,
                                      input=[{"role": "user", "content": WEATHER_QUESTION},
                                             call.model_dump(exclude_none=True), result])
    assert follow_up.usage.input_tokens == in_full.usage.input_tokens


def test_text_format_json_schema_is_followed(server, client):
    schema = {"type": "object", "properties": {"colors": {"type": "array", "items": {"type": "string"},
                                                          "minItems": 1, "maxItems": 3}},
              "required": ["colors"], "additionalProperties": False}
    response = client.responses.create(model=server.model, input=QUESTION, max_output_tokens=128, temperature=0,
                                       text={"format": {"type": "json_schema", "name": "colors", "schema": schema,
                                                        "strict": True}})
    assert response.status == "completed" and response.text.format.type == "json_schema"
    jsonschema.validate(json.loads(response.output_text), schema)
    as_object = client.responses.create(model=server.model, input=QUESTION, max_output_tokens=128, temperature=0,
                                        text={"format": {"type": "json_object"}})
    assert as_object.status != "completed" or isinstance(json.loads(as_object.output_text), dict)
