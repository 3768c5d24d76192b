"""Prompt-lookup speculative decoding through the real server (on by default for llama.cpp): the output
is the same as without it (greedy, seeded sampling, grammar, penalties, logprobs), steps carry several
tokens (streamed too), max_tokens and stop strings cut exactly, `"speculative": false` (OpenAI) and
`options.speculative: false` (Ollama) opt out, and drafted/accepted tokens are counted.

Answers are compared with the prompt's KV cache in the same state on both sides (`same_cache`): whether a
prompt's last token is computed alone (its prefix reused from the cache) or within the whole prompt
changes its logits in the last bits (llama.cpp's matrix products differ by batch shape), and at a
near tie that alone changes a greedy answer, with or without speculation (measured: "Add warm water,
stir" from a fresh prompt, "Add warm water and stir" from a reused one, speculation off both times)."""
from __future__ import annotations

import json

import httpx
import llama_cpp.llama_cpp as ll
import ollama
import pytest

from backends.base import BackendSettings
from backends.draft_policy import PRIOR_RATE, token_cost
from backends.llamacpp import LlamaCppBackend
from serve.models.catalog import embedded_model_path
from serve.runtime.scheduler import Scheduler
from serve.sequence import Request, SamplingParams, Sequence
from tests.integration.conftest import start_llamacpp_server
from tests.integration.test_metrics import Scrape

PASSAGES = [
    "The river rises in the hills to the north of the town and flows south through farmland for about forty "
    "miles before it reaches the sea. In the spring the snow melts and the water runs high and fast; in late "
    "summer the river is slow and shallow, and children wade across it near the old stone bridge.",
    "To make bread, mix the flour, salt and yeast in a large bowl. Add the warm water and stir until the dough "
    "comes together. Knead it on a floured table for ten minutes, until it is smooth. Leave it covered in a "
    "warm place for an hour, then shape it, let it rise again and bake it for thirty minutes.",
    "def total_price(items, tax_rate):\n    subtotal = 0\n    for item in items:\n        subtotal += "
    "item.price * item.quantity\n    tax = subtotal * tax_rate\n    return subtotal + tax\n",
]
COPY_PROMPTS = [f"Repeat the following text exactly, word for word:\n\n{passage}" for passage in PASSAGES]
OPEN_PROMPTS = ["Write a list of ten fruits.", "Tell me a short story about a cat."]
DRAFTED, ACCEPTED = "quantserve_spec_decode_num_draft_tokens_total", "quantserve_spec_decode_num_accepted_tokens_total"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with start_llamacpp_server(tmp_path_factory, "speculative", ["--parallel", "1", "--ctx", "2048"]) as running:
        yield running


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.base_url, timeout=600) as client:  # a loaded 2-core machine is slow
        yield client


def chat(http: httpx.Client, prompt: str, **fields) -> dict:
    body = {"messages": [{"role": "user", "content": prompt}], "temperature": 0, "max_tokens": 96, **fields}
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def same_cache(http: httpx.Client, prompt: str) -> None:
    """Cache the prompt (one token of output: nothing after the prompt is kept), so that every following
    request on this one-slot server reuses all of it but its last token."""
    chat(http, prompt, max_tokens=1, speculative=False)


def text_of(answer: dict) -> str:
    return answer["choices"][0]["message"]["content"]


def drafted_and_accepted(http: httpx.Client) -> tuple[float, float]:
    scrape = Scrape(http)
    return scrape.total(DRAFTED), scrape.total(ACCEPTED)


def test_greedy_output_is_the_same_with_and_without_speculation(http):
    for prompt in COPY_PROMPTS + OPEN_PROMPTS:
        same_cache(http, prompt)
        with_drafts, without = chat(http, prompt), chat(http, prompt, speculative=False)
        assert text_of(with_drafts) == text_of(without), prompt
        assert with_drafts["usage"]["completion_tokens"] == without["usage"]["completion_tokens"]
        assert with_drafts["choices"][0]["finish_reason"] == without["choices"][0]["finish_reason"]


def test_copying_is_drafted_and_mostly_accepted_and_counted(http, server):
    drafted_before, accepted_before = drafted_and_accepted(http)
    chat(http, COPY_PROMPTS[0])
    drafted_after, accepted_after = drafted_and_accepted(http)
    drafted, accepted = drafted_after - drafted_before, accepted_after - accepted_before
    assert drafted > 0 and 0 < accepted <= drafted
    assert accepted >= 0.5 * drafted, (drafted, accepted)  # a copy follows its passage
    assert " drafted=" in server.log_path.read_text()  # the request's log line reports its acceptance


def test_speculative_false_drafts_nothing(http):
    before = drafted_and_accepted(http)
    chat(http, COPY_PROMPTS[1], speculative=False)
    assert drafted_and_accepted(http) == before


def test_ollama_option_speculative_false_drafts_nothing(server, http):
    client = ollama.Client(host=server.base_url)
    messages = [{"role": "user", "content": COPY_PROMPTS[1]}]
    options = {"temperature": 0, "num_predict": 96}
    client.chat(model=server.model, messages=messages, options={**options, "num_predict": 1, "speculative": False})
    before = drafted_and_accepted(http)
    without = client.chat(model=server.model, messages=messages, options={**options, "speculative": False})
    assert drafted_and_accepted(http) == before
    with_drafts = client.chat(model=server.model, messages=messages, options=options)
    assert drafted_and_accepted(http)[0] > before[0]
    assert with_drafts.message.content == without.message.content


def test_a_speculative_that_is_not_a_boolean_is_a_400_naming_it(http, server):
    body = {"messages": [{"role": "user", "content": "hi"}], "speculative": {"on": 1}}
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert "speculative" in json.dumps(response.json()["error"])
    response = http.post("/api/chat", json={"model": server.model, "messages": [{"role": "user", "content": "hi"}],
                                            "options": {"speculative": "yes"}})
    assert response.status_code == 400 and "speculative" in response.json()["error"]


def test_streamed_steps_carry_several_tokens_and_the_same_text(server, http):
    same_cache(http, COPY_PROMPTS[0])
    with server.openai(timeout=600) as client:
        stream = client.chat.completions.create(
            model=server.model, messages=[{"role": "user", "content": COPY_PROMPTS[0]}], temperature=0,
            max_tokens=96, stream=True, stream_options={"include_usage": True})
        chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    usage = chunks[-1].usage
    assert "".join(pieces) == text_of(chat(http, COPY_PROMPTS[0], speculative=False))
    assert len(pieces) < usage.completion_tokens  # some steps delivered more than one token


@pytest.mark.parametrize("max_tokens", [1, 2, 5, 17])
def test_max_tokens_is_exact(http, max_tokens):
    same_cache(http, COPY_PROMPTS[1])
    answer = chat(http, COPY_PROMPTS[1], max_tokens=max_tokens)
    assert answer["usage"]["completion_tokens"] == max_tokens
    assert answer["choices"][0]["finish_reason"] == "length"
    assert text_of(answer) == text_of(chat(http, COPY_PROMPTS[1], max_tokens=max_tokens, speculative=False))


def test_stop_strings_cut_exactly(http):
    same_cache(http, COPY_PROMPTS[1])
    full = text_of(chat(http, COPY_PROMPTS[1], speculative=False))
    assert len(full) > 100
    for stop in (full[len(full) // 4:][:7], full[len(full) // 2:][:3], full[-20:-12]):  # cut inside steps
        answer = chat(http, COPY_PROMPTS[1], stop=[stop])
        assert text_of(answer) == full[:full.index(stop)]
        assert answer["choices"][0]["finish_reason"] == "stop"
        without = chat(http, COPY_PROMPTS[1], stop=[stop], speculative=False)
        assert answer["usage"]["completion_tokens"] == without["usage"]["completion_tokens"]


def test_seeded_sampling_penalties_grammar_and_logprobs_are_unchanged(http):
    """Each position is sampled by the same sampler state from the same logits, so even sampled output
    draws the same random numbers; a grammar and the penalties see only emitted tokens."""
    same_cache(http, COPY_PROMPTS[2])
    cases = [{"temperature": 0.8, "seed": 7}, {"temperature": 0, "repeat_penalty": 1.3, "frequency_penalty": 0.5},
             {"response_format": {"type": "json_object"}, "max_tokens": 60},
             {"logprobs": True, "top_logprobs": 2, "max_tokens": 40}]
    for fields in cases:
        with_drafts, without = chat(http, COPY_PROMPTS[2], **fields), chat(http, COPY_PROMPTS[2], speculative=False,
                                                                              **fields)
        assert text_of(with_drafts) == text_of(without), fields
        if "logprobs" in fields:
            ours, theirs = (a["choices"][0]["logprobs"]["content"] for a in (with_drafts, without))
            assert [t["token"] for t in ours] == [t["token"] for t in theirs]
            assert all(abs(a["logprob"] - b["logprob"]) < 1e-3 for a, b in zip(ours, theirs))


def test_the_cache_holds_exactly_the_accepted_tokens_after_each_step():
    """Rejected drafts leave no KV cells behind: each slot's cache ends where its token list does."""
    settings = BackendSettings(model_path=embedded_model_path(), context_length=1024, num_parallel=2,
                               num_threads=2, speculative="ngram")
    backend = LlamaCppBackend(settings)
    caps = backend.capabilities
    scheduler = Scheduler(num_parallel=2, max_waiting=4, max_batch_tokens=caps.max_batch_tokens,
                          max_prefill_tokens_while_decoding=caps.max_prefill_tokens_while_decoding,
                          admit=backend.admit, max_draft_tokens_per_step=caps.max_draft_tokens_per_step)
    outputs = []
    try:
        for i, prompt in enumerate([COPY_PROMPTS[0], OPEN_PROMPTS[0]]):
            text = backend.render_chat([{"role": "user", "content": prompt}])
            request = Request(f"r{i}", "m", text, backend.tokenize(text), SamplingParams(max_tokens=80, temperature=0))
            scheduler.add(Sequence(request, deliver=outputs.append))
        while scheduler.has_work:
            batch = scheduler.schedule()
            scheduler.postprocess(batch, backend.step(batch))
            for slot in backend._slots:
                assert ll.llama_memory_seq_pos_max(backend._memory, slot.seq_id) + 1 == len(slot.cached_tokens)
    finally:
        backend.close()
    assert max(output.num_new_tokens for output in outputs) > 1
    assert sum(output.num_accepted_tokens for output in outputs) > 0


def _run_in_process(backend: LlamaCppBackend, prompts: list[str], max_tokens: int) -> list:
    """Every prompt admitted at once (greedy, end-of-generation ignored, so all decode to the end together);
    returns every step output."""
    caps = backend.capabilities
    scheduler = Scheduler(num_parallel=caps.num_parallel, max_waiting=len(prompts),
                          max_batch_tokens=caps.max_batch_tokens,
                          max_prefill_tokens_while_decoding=caps.max_prefill_tokens_while_decoding,
                          admit=backend.admit, max_draft_tokens_per_step=caps.max_draft_tokens_per_step)
    outputs = []
    for i, prompt in enumerate(prompts):
        text = backend.render_chat([{"role": "user", "content": prompt}])
        params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
        scheduler.add(Sequence(Request(f"r{max_tokens}-{i}", "m", text, backend.tokenize(text), params),
                               deliver=outputs.append))
    while scheduler.has_work:
        batch = scheduler.schedule()
        scheduler.postprocess(batch, backend.step(batch))
    return outputs


def test_a_busy_step_drafts_only_what_pays_and_one_stream_drafts():
    """With 8 sequences decoding, a verified token costs nearly a decoded one (backends/draft_policy.py's
    measured table), more than a new sequence's prior acceptance rate: nobody drafts. The same copy
    request alone drafts, and its drafts are mostly accepted."""
    assert token_cost(8) > PRIOR_RATE > token_cost(1)  # the premise, from the measured table
    settings = BackendSettings(model_path=embedded_model_path(), context_length=1024, num_parallel=8,
                               num_threads=2, speculative="ngram")
    backend = LlamaCppBackend(settings)
    try:
        busy = _run_in_process(backend, [COPY_PROMPTS[i % 3] for i in range(8)], max_tokens=24)
        alone = _run_in_process(backend, [COPY_PROMPTS[0]], max_tokens=48)
    finally:
        backend.close()
    assert sum(output.num_new_tokens for output in busy) == 8 * 24
    assert sum(output.num_drafted_tokens for output in busy) == 0
    drafted = sum(output.num_drafted_tokens for output in alone)
    assert drafted > 0 and sum(output.num_accepted_tokens for output in alone) >= 0.5 * drafted
