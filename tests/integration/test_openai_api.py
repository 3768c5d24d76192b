"""The OpenAI-compatible API of the real server, through the official `openai` client and raw httpx.

SmolLM2-135M is tiny: these tests assert structure, determinism, lengths and encodings, never facts.
Every test runs on each backend of the `server` fixture (llama.cpp; vLLM when it is installed).
"""
from __future__ import annotations

import json
import time

import openai
import pytest

# Suppress the end-of-generation tokens (<|endoftext|> 0, <|im_end|> 2) so a request runs to max_tokens.
NO_EOS = {"0": -100, "2": -100}
HELLO = [{"role": "user", "content": "Say hello."}]
STORY = "Once upon a time"


def sse_chunks(response) -> list[dict]:
    """The JSON chunks of an SSE response; asserts the framing and the final data: [DONE]."""
    assert response.status_code == 200, response.read()
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line for line in response.iter_lines() if line]
    assert events, "empty event stream"
    assert all(event.startswith("data: ") for event in events), events
    assert events[-1] == "data: [DONE]"
    assert events.count("data: [DONE]") == 1
    return [json.loads(event[len("data: "):]) for event in events[:-1]]


def stream_post(http, path: str, body: dict) -> list[dict]:
    with http.stream("POST", path, json={**body, "stream": True}) as response:
        return sse_chunks(response)


def assert_usage(usage, *, num_completion_tokens: int | None = None) -> None:
    usage = usage if isinstance(usage, dict) else usage.model_dump()
    assert usage["prompt_tokens"] > 0
    assert 0 <= usage["prompt_tokens_details"]["cached_tokens"] < usage["prompt_tokens"]
    assert usage["completion_tokens"] >= 0
    assert usage["prompt_tokens"] + usage["completion_tokens"] == usage["total_tokens"]
    if num_completion_tokens is not None:
        assert usage["completion_tokens"] == num_completion_tokens


def text_deltas(chunks: list[dict]) -> list[str]:
    deltas = []
    for chunk in chunks:
        for choice in chunk["choices"]:
            text = choice["delta"].get("content") if "delta" in choice else choice["text"]
            if text:
                deltas.append(text)
    return deltas


# -- discovery ---------------------------------------------------------------------------------------


def test_health_is_ok_and_reports_the_context_per_request(server, http):
    response = http.get("/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    card = http.get("/v1/models").json()["data"][0]
    stats = response.json()["stats"][server.model]
    assert stats["context_length"] == card["context_length"] > 0
    assert stats["num_parallel"] == card["num_parallel"] >= 1


def test_models_lists_the_served_model_with_extras(server, http, client):
    models = client.models.list().data
    assert [model.id for model in models] == [server.model]
    card = http.get("/v1/models").json()["data"][0]
    assert card["object"] == "model" and card["id"] == server.model
    assert card["backend"] == server.backend
    assert isinstance(card["context_length"], int) and card["context_length"] > 0
    assert isinstance(card["num_parallel"], int) and card["num_parallel"] >= 1
    assert http.get(f"/v1/models/{server.model}").json()["id"] == server.model
    missing = http.get("/v1/models/qwen2.5-7b-q4")  # in the catalog, not loaded: a GET does not load it
    assert missing.status_code == 404 and server.model in missing.json()["error"]["message"]


# -- non-streaming -----------------------------------------------------------------------------------


def test_chat_completion_structure(server, client):
    completion = client.chat.completions.create(model=server.model, messages=HELLO, max_tokens=16, temperature=0)
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-") and completion.model == server.model
    assert len(completion.choices) == 1
    choice = completion.choices[0]
    assert choice.index == 0 and choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert_usage(completion.usage)
    assert 1 <= completion.usage.completion_tokens <= 16


def test_completion_structure(server, client):
    completion = client.completions.create(model=server.model, prompt=STORY, max_tokens=12, temperature=0)
    assert completion.object == "text_completion" and completion.id.startswith("cmpl-")
    assert len(completion.choices) == 1 and isinstance(completion.choices[0].text, str)
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert_usage(completion.usage)
    assert completion.usage.completion_tokens <= 12


@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Count from 1 to 50."}], "max_tokens": 7}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Count from 1 to 50."}],
                              "max_completion_tokens": 7}),
    ("/v1/completions", {"prompt": STORY, "max_tokens": 7}),
], ids=["chat-max_tokens", "chat-max_completion_tokens", "completions-max_tokens"])
def test_max_tokens_ends_with_length(server, http, path, body):
    body = {**body, "model": server.model, "temperature": 0, "logit_bias": NO_EOS}
    result = http.post(path, json=body).json()
    assert result["choices"][0]["finish_reason"] == "length"
    assert_usage(result["usage"], num_completion_tokens=7)


def test_end_of_generation_token_ends_with_stop(server, client):
    # Greedy, this prompt is answered in a couple of dozen tokens, well under max_tokens.
    completion = client.chat.completions.create(
        model=server.model, temperature=0, max_tokens=200,
        messages=[{"role": "user", "content": "Translate to French: I am happy."}])
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.completion_tokens < 200
    assert "<|im_end|>" not in completion.choices[0].message.content


def test_system_and_developer_messages_are_used(server, client):
    def prompt_tokens(messages) -> int:
        completion = client.chat.completions.create(model=server.model, messages=messages, max_tokens=4,
                                                    temperature=0)
        assert isinstance(completion.choices[0].message.content, str)
        return completion.usage.prompt_tokens

    system = "You are a pirate. Answer in one short sentence."
    plain = prompt_tokens(HELLO)
    with_system = prompt_tokens([{"role": "system", "content": system}, *HELLO])
    with_developer = prompt_tokens([{"role": "developer", "content": system}, *HELLO])
    assert with_system != plain  # the template put our system prompt in place of its default one
    assert with_developer == with_system


def test_multi_turn_and_text_parts(server, http):
    messages = [{"role": "user", "content": [{"type": "text", "text": "Name a color."}]},
                {"role": "assistant", "content": "Blue."},
                {"role": "user", "content": [{"type": "text", "text": "Another"}, {"type": "text", "text": "one?"}]}]
    response = http.post("/v1/chat/completions", json={"model": server.model, "messages": messages,
                                                        "max_tokens": 8, "temperature": 0})
    assert response.status_code == 200, response.text
    assert_usage(response.json()["usage"])


def test_repeated_prompt_reports_cached_tokens(server, client):
    """A second request with the same long system prompt reuses its KV (prefix reuse) and says so in
    usage.prompt_tokens_details.cached_tokens, as OpenAI does; the first one computes (nearly) everything."""
    system = "You are a careful assistant for a museum. " + " ".join(
        f"Rule {i}: answer about exhibit {i} in one short sentence." for i in range(40))
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "Which rule is first?"}]

    def cached_and_prompt_tokens() -> tuple[int, int]:
        usage = client.chat.completions.create(model=server.model, messages=messages, max_tokens=2,
                                               temperature=0).usage
        return usage.prompt_tokens_details.cached_tokens, usage.prompt_tokens

    first_cached, num_prompt = cached_and_prompt_tokens()
    second_cached, _ = cached_and_prompt_tokens()
    assert num_prompt > 400
    # Any shared prefix is reused, so the first may reuse the template's opening from earlier requests.
    assert first_cached < num_prompt // 10
    assert num_prompt // 2 <= second_cached < num_prompt  # vLLM caches whole blocks; llama.cpp all but one token


def test_model_may_be_omitted(server, http):
    response = http.post("/v1/completions", json={"prompt": STORY, "max_tokens": 2, "temperature": 0})
    assert response.status_code == 200, response.text
    assert response.json()["model"] == server.model


def test_sampling_parameters_are_accepted(server, client):
    completion = client.chat.completions.create(
        model=server.model, messages=HELLO, max_tokens=8, temperature=0.7, top_p=0.9, seed=3,
        presence_penalty=0.5, frequency_penalty=0.5, logit_bias={"28": 5}, user="tester", n=1,
        extra_body={"top_k": 40, "min_p": 0.05, "repeat_penalty": 1.1})
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert_usage(completion.usage)


def test_an_unknown_field_is_a_400_naming_it(server, client):
    with pytest.raises(openai.BadRequestError, match="unrecognized request field.*some_future_field") as caught:
        client.chat.completions.create(model=server.model, messages=HELLO, max_tokens=2,
                                       extra_body={"some_future_field": True})
    assert caught.value.body["param"] == "some_future_field"


# -- streaming ---------------------------------------------------------------------------------------


def test_chat_stream_sends_role_deltas_finish_usage_done(server, http):
    body = {"model": server.model, "messages": HELLO, "max_tokens": 12, "temperature": 0,
            "stream_options": {"include_usage": True}}
    chunks = stream_post(http, "/v1/chat/completions", body)
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"].get("role") == "assistant"
    finish_positions = [i for i, c in enumerate(chunks) if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finish_positions == [len(chunks) - 2]  # one finish chunk, just before the usage chunk
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    assert all(chunk["usage"] is None for chunk in chunks[:-1])
    streamed = "".join(text_deltas(chunks))
    whole = http.post("/v1/chat/completions", json={**body, "stream_options": None}).json()
    assert streamed == whole["choices"][0]["message"]["content"]
    # cached_tokens may differ: the second request reuses the first one's prompt (prefix cache)
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert usage_chunk["usage"][key] == whole["usage"][key]
    assert chunks[finish_positions[0]]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]


def test_completion_stream_with_openai_client(server, client):
    stream = client.completions.create(model=server.model, prompt=STORY, max_tokens=10, temperature=0,
                                       stream=True, stream_options={"include_usage": True},
                                       logit_bias=NO_EOS)
    chunks = list(stream)
    text = "".join(choice.text for chunk in chunks for choice in chunk.choices)
    finishes = [choice.finish_reason for chunk in chunks for choice in chunk.choices if choice.finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].choices == []
    assert_usage(chunks[-1].usage, num_completion_tokens=10)
    whole = client.completions.create(model=server.model, prompt=STORY, max_tokens=10, temperature=0,
                                      logit_bias=NO_EOS)
    assert text == whole.choices[0].text


def test_stream_without_include_usage_has_no_usage(server, http):
    chunks = stream_post(http, "/v1/completions", {"model": server.model, "prompt": STORY, "max_tokens": 3})
    assert all("usage" not in chunk or chunk["usage"] is None for chunk in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


# -- stop strings ------------------------------------------------------------------------------------

STOP_BODY = {"prompt": STORY, "max_tokens": 32, "temperature": 0, "logit_bias": NO_EOS}


@pytest.fixture(scope="module")
def greedy_deltas(server) -> list[str]:
    """The greedy continuation of STORY, one delta per token, without any stop string."""
    with server.http() as http:
        deltas = text_deltas(stream_post(http, "/v1/completions", {**STOP_BODY, "model": server.model}))
    assert len(deltas) >= 10, deltas
    return deltas


def straddling_stop(deltas: list[str], start: int) -> str:
    """A stop string made of the end of one token's text and the start of the next one's."""
    for i in range(start, len(deltas) - 1):
        left, right = deltas[i].strip(), deltas[i + 1]
        if len(left) >= 2 and len(right.strip()) >= 2:
            return deltas[i][-2:] + right[:2]
    pytest.fail(f"no two adjacent multi-character tokens in {deltas}")


def test_stop_string_cuts_output_also_across_tokens(server, http, greedy_deltas):
    full = "".join(greedy_deltas)
    stop = straddling_stop(greedy_deltas, start=3)
    expected = full[:full.index(stop)]
    body = {**STOP_BODY, "model": server.model, "stop": stop}
    result = http.post("/v1/completions", json=body).json()
    assert result["choices"][0]["text"] == expected
    assert result["choices"][0]["finish_reason"] == "stop"
    assert stop not in result["choices"][0]["text"]
    assert_usage(result["usage"])
    chunks = stream_post(http, "/v1/completions", body)
    assert "".join(text_deltas(chunks)) == expected
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_stop_list_cuts_at_the_earliest_match(server, client, greedy_deltas):
    full = "".join(greedy_deltas)
    late = straddling_stop(greedy_deltas, start=len(greedy_deltas) // 2)
    early = straddling_stop(greedy_deltas, start=3)
    cut = min(full.index(late), full.index(early))
    completion = client.completions.create(model=server.model, stop=["@@never@@", late, early],
                                           **{k: v for k, v in STOP_BODY.items()})
    assert completion.choices[0].text == full[:cut]
    assert completion.choices[0].finish_reason == "stop"


def test_chat_stop_string(server, client):
    messages = [{"role": "user", "content": "Count from 1 to 20, separated by commas."}]
    full = client.chat.completions.create(model=server.model, messages=messages, max_tokens=24, temperature=0,
                                          logit_bias=NO_EOS).choices[0].message.content
    stop = full[len(full) // 2:len(full) // 2 + 3]
    cut = client.chat.completions.create(model=server.model, messages=messages, max_tokens=24, temperature=0,
                                         logit_bias=NO_EOS, stop=[stop])
    assert cut.choices[0].message.content == full[:full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


# -- determinism -------------------------------------------------------------------------------------


def test_same_seed_gives_same_sampled_output(server, client):
    def sample(seed: int) -> str:
        return client.chat.completions.create(
            model=server.model, messages=[{"role": "user", "content": "Write a short poem."}],
            max_tokens=24, temperature=0.8, seed=seed).choices[0].message.content

    first = sample(1234)
    assert sample(1234) == first
    assert first


def test_greedy_is_deterministic(server, client):
    def greedy() -> str:
        return client.completions.create(model=server.model, prompt="The three best things about summer are",
                                         max_tokens=20, temperature=0).choices[0].text

    assert greedy() == greedy()


# -- text encoding -----------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", [
    "😀 😃 😄 😁 😆 😅 😂 🤣 😀 😃 😄 😁 😆",
    "Café, crème brûlée, naïve, résumé, déjà vu, fiancé, café, crème brûlée, naïve,",
], ids=["emoji", "accents"])
def test_multibyte_utf8_is_decoded_whole(server, http, prompt):
    body = {"model": server.model, "prompt": prompt, "max_tokens": 16, "temperature": 0, "logit_bias": NO_EOS}
    text = http.post("/v1/completions", json=body).json()["choices"][0]["text"]
    assert "\ufffd" not in text
    assert any(ord(char) > 127 for char in text), f"expected non-ASCII output, got {text!r}"
    deltas = text_deltas(stream_post(http, "/v1/completions", body))
    assert all("\ufffd" not in delta for delta in deltas), deltas
    assert "".join(deltas) == text
    assert text.encode("utf-8").decode("utf-8") == text


# -- client disconnect -------------------------------------------------------------------------------


def _num_running(http) -> int:
    stats = http.get("/health").json().get("stats", {})
    return sum(model_stats.get("running", 0) + model_stats.get("waiting", 0) for model_stats in stats.values())


def test_disconnected_stream_is_aborted(server, http):
    body = {"model": server.model, "prompt": STORY, "max_tokens": 3000, "logit_bias": NO_EOS, "stream": True}
    with http.stream("POST", "/v1/completions", json=body) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        assert _num_running(http) == 1
    # Closing the response closed the connection; the request is freed at the engine's next step.
    for _ in range(100):
        if _num_running(http) == 0:
            break
        time.sleep(0.1)
    assert _num_running(http) == 0
    after = http.post("/v1/completions", json={"model": server.model, "prompt": STORY, "max_tokens": 2})
    assert after.status_code == 200
