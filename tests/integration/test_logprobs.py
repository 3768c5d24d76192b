"""Logprobs through the official openai client on both backends: consistent with the greedy choice (at
temperature 0 the chosen token is the most likely one), sorted alternatives, and completions' echo with the
prompt tokens' logprobs, as lm-evaluation-harness's local-completions asks for them."""
from __future__ import annotations

import math

import pytest

PROMPT = "The capital of France is Paris. The capital of Germany is"
GREEDY = {"temperature": 0.0, "seed": 0}


def assert_greedy_entry(logprob: float, top: list[tuple[str, float]], token: str) -> None:
    """The chosen token is a most likely one. Ties are real: vLLM computes in bfloat16 on this CPU, where
    SmolLM2's "Say hello." gives "!" and " there" the very same logprob (-1.17247); greedy takes the lower
    token id, the top list may rank the other first."""
    assert logprob <= 0.0
    values = [value for _, value in top]
    assert values == sorted(values, reverse=True)
    assert math.isclose(top[0][1], logprob, abs_tol=1e-4)
    assert token in [other for other, value in top if math.isclose(value, logprob, abs_tol=1e-4)]


def test_chat_logprobs_follow_the_greedy_choice(client):
    response = client.chat.completions.create(
        model=client.models.list().data[0].id, messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=8, logprobs=True, top_logprobs=3, **GREEDY)
    choice = response.choices[0]
    entries = choice.logprobs.content
    assert 1 <= len(entries) <= 8
    for entry in entries:
        assert len(entry.top_logprobs) == 3 and bytes(entry.bytes).decode("utf-8", "replace")
        assert_greedy_entry(entry.logprob, [(top.token, top.logprob) for top in entry.top_logprobs], entry.token)
    assert "".join(entry.token for entry in entries) == choice.message.content


def test_no_logprobs_unless_asked(client):
    response = client.chat.completions.create(model=client.models.list().data[0].id, max_tokens=4,
                                              messages=[{"role": "user", "content": "Hi"}], **GREEDY)
    assert response.choices[0].logprobs is None
    text = client.completions.create(model=client.models.list().data[0].id, prompt=PROMPT, max_tokens=2)
    assert text.choices[0].logprobs is None


def test_streamed_chat_logprobs_come_with_their_tokens(client):
    stream = client.chat.completions.create(
        model=client.models.list().data[0].id, messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=6, logprobs=True, top_logprobs=1, stream=True, **GREEDY)
    content, tokens = "", ""
    for chunk in stream:
        if chunk.choices and chunk.choices[0].logprobs is not None:
            tokens += "".join(entry.token for entry in chunk.choices[0].logprobs.content)
        if chunk.choices and chunk.choices[0].delta.content:
            content += chunk.choices[0].delta.content
    assert tokens == content and content


def test_completions_echo_scores_the_prompt_like_lm_eval(client):
    """lm-evaluation-harness's loglikelihood request: echo, logprobs=1, max_tokens=1, temperature 0."""
    response = client.completions.create(model=client.models.list().data[0].id, prompt=PROMPT, echo=True,
                                         logprobs=1, max_tokens=1, **GREEDY)
    choice = response.choices[0]
    logprobs = choice.logprobs
    num_prompt_tokens = response.usage.prompt_tokens
    assert choice.text.startswith(PROMPT) and len(choice.text) > len(PROMPT)
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == num_prompt_tokens + 1
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None  # as OpenAI
    assert "".join(logprobs.tokens) == choice.text
    assert logprobs.text_offset == sorted(logprobs.text_offset) and logprobs.text_offset[0] == 0
    for value, top in zip(logprobs.token_logprobs[1:], logprobs.top_logprobs[1:]):
        assert value <= 0.0 and len(top) >= 1 and max(top.values()) >= value - 1e-4
    # The generated token is the greedy one: lm-eval's is_greedy check on the last position.
    assert math.isclose(logprobs.token_logprobs[-1], max(logprobs.top_logprobs[-1].values()), abs_tol=1e-4)


def test_a_token_id_prompt_is_scored_too(server, http):
    body = {"prompt": [[504, 3575, 282, 4649]], "max_tokens": 1, "logprobs": 1, "echo": True, "temperature": 0}
    choice = http.post("/v1/completions", json=body).json()["choices"][0]
    assert len(choice["logprobs"]["token_logprobs"]) == 5 and choice["logprobs"]["token_logprobs"][0] is None
    assert all(value <= 0.0 for value in choice["logprobs"]["token_logprobs"][1:])


@pytest.mark.parametrize("prompt", [[-1, 2], [10**9]])
def test_token_ids_outside_the_vocabulary_are_refused(http, prompt):
    response = http.post("/v1/completions", json={"prompt": prompt, "max_tokens": 1})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "prompt" and "token ids" in response.json()["error"]["message"]
