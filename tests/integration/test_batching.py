"""Continuous batching against the real server: many clients at once, disconnects, backpressure.

Deterministic by construction: instead of sleeping, tests wait for observable states (/health counters,
first streamed tokens). Generation lengths are pinned by banning end-of-generation through logit_bias.
"""
from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from tests.integration.conftest import start_llamacpp_server

NUM_PARALLEL = 4
MAX_QUEUE = 4
NO_EOS = {"2": -100, "0": -100}  # SmolLM2's <|im_end|> and <|endoftext|>: generate exactly max_tokens
PROMPTS = [f"Write a short story about a {animal}." for animal in
           ("cat", "dog", "fox", "owl", "bee", "cow", "eel", "yak")]


@pytest.fixture(scope="module")
def batching_server(tmp_path_factory):
    args = ["--parallel", str(NUM_PARALLEL), "--max-queue", str(MAX_QUEUE), "--ctx", "1024"]
    with start_llamacpp_server(tmp_path_factory, "batching", args) as server:
        yield server


def chat_body(server, content: str, max_tokens: int, **extra) -> dict:
    return {"model": server.model, "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens, **extra}


def wait_for(http: httpx.Client, model: str, predicate, timeout: float = 60) -> dict:
    """Poll /health until predicate(stats of the model) holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = http.get("/health").json()["stats"][model]
        if predicate(stats):
            return stats
        time.sleep(0.05)
    raise AssertionError(f"/health never reached the expected state; last: {stats}")


async def complete(client: httpx.AsyncClient, body: dict) -> dict:
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_concurrent_greedy_outputs_equal_sequential_ones(batching_server):
    """Batched decoding must not change results. llama.cpp's batched kernels can differ from the
    single-sequence path by float rounding, which may flip a near-tie deep into a generation, so the
    first 8 tokens' worth of text is compared exactly and the lengths must match."""
    bodies = [chat_body(batching_server, p, 24, temperature=0, logit_bias=NO_EOS) for p in PROMPTS]

    async def run(concurrently: bool) -> list[dict]:
        async with httpx.AsyncClient(base_url=batching_server.base_url, timeout=120) as client:
            if concurrently:
                return await asyncio.gather(*(complete(client, b) for b in bodies))
            return [await complete(client, b) for b in bodies]

    sequential = asyncio.run(run(False))
    concurrent = asyncio.run(run(True))
    for one, many in zip(sequential, concurrent):
        # The second round reuses the first round's cached prompts, so only the cached share may differ.
        counts = ("prompt_tokens", "completion_tokens", "total_tokens")
        assert [one["usage"][k] for k in counts] == [many["usage"][k] for k in counts]
        text_one = one["choices"][0]["message"]["content"]
        text_many = many["choices"][0]["message"]["content"]
        assert text_many.split()[:8] == text_one.split()[:8]


def test_disconnected_streams_free_their_slots(batching_server):
    """K clients fill every slot and hang up; K new requests must then be admitted and complete."""
    with batching_server.http() as http:
        streams = []
        for prompt in PROMPTS[:NUM_PARALLEL]:
            request = http.build_request("POST", "/v1/chat/completions", json=chat_body(
                batching_server, prompt, 900, stream=True, logit_bias=NO_EOS))
            response = http.send(request, stream=True)
            lines = response.iter_lines()  # kept: a dropped iterator closes the connection
            next(lines)
            streams.append((response, lines))
        wait_for(http, batching_server.model, lambda s: s["running"] == NUM_PARALLEL)
        for response, _ in streams:
            response.close()
        wait_for(http, batching_server.model, lambda s: s["running"] == 0 and s["waiting"] == 0)

    async def refill() -> list[dict]:
        async with httpx.AsyncClient(base_url=batching_server.base_url, timeout=60) as client:
            return await asyncio.gather(*(complete(client, chat_body(batching_server, p, 8, logit_bias=NO_EOS))
                                          for p in PROMPTS[:NUM_PARALLEL]))

    assert all(r["usage"]["completion_tokens"] == 8 for r in asyncio.run(refill()))


def test_queue_full_gets_429_with_retry_after_and_server_stays_healthy(batching_server):
    with batching_server.http() as http:
        streams = []
        for prompt in PROMPTS[:NUM_PARALLEL + MAX_QUEUE]:
            request = http.build_request("POST", "/v1/chat/completions", json=chat_body(
                batching_server, prompt, 900, stream=True, logit_bias=NO_EOS))
            streams.append(http.send(request, stream=True))
        try:
            wait_for(http, batching_server.model,
                     lambda s: s["running"] == NUM_PARALLEL and s["waiting"] == MAX_QUEUE)
            refused = http.post("/v1/chat/completions", json=chat_body(batching_server, "hi", 4))
            assert refused.status_code == 429
            assert int(refused.headers["retry-after"]) >= 1
            error = refused.json()["error"]
            assert error["type"] == "rate_limit_error" and "--max-queue" in error["message"]
        finally:
            for response in streams:
                response.close()
        wait_for(http, batching_server.model, lambda s: s["running"] == 0 and s["waiting"] == 0)
        assert http.get("/health").status_code == 200
        ok = http.post("/v1/chat/completions", json=chat_body(batching_server, "hi", 4))
        assert ok.status_code == 200


def test_over_long_prompt_is_refused_while_other_streams_keep_going(batching_server):
    with batching_server.http() as http:
        streams = []
        for prompt in PROMPTS[:2]:
            request = http.build_request("POST", "/v1/chat/completions", json=chat_body(
                batching_server, prompt, 40, stream=True, logit_bias=NO_EOS,
                stream_options={"include_usage": True}))
            response = http.send(request, stream=True)
            streams.append((response, response.iter_lines()))
            next(streams[-1][1])
        too_long = http.post("/v1/chat/completions", json=chat_body(batching_server, "word " * 3000, 4))
        assert too_long.status_code == 400
        assert "1024" in too_long.json()["error"]["message"]
        for response, lines in streams:
            events = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
            response.close()
            assert events[-1]["usage"]["completion_tokens"] == 40
            assert any(e["choices"] and e["choices"][0]["finish_reason"] == "length" for e in events)


@pytest.fixture(scope="module")
def roomy_server(tmp_path_factory):
    """Default queue bound (64): 32 clients fit in the running slots plus the queue."""
    with start_llamacpp_server(tmp_path_factory, "roomy", ["--parallel", str(NUM_PARALLEL)]) as server:
        yield server


def test_32_concurrent_clients_all_complete_with_correct_usage(roomy_server):
    with roomy_server.http() as http:
        expected_prompt_tokens = http.post("/v1/chat/completions", json=chat_body(
            roomy_server, PROMPTS[0], 1)).json()["usage"]["prompt_tokens"]

    async def run() -> list[dict]:
        async with httpx.AsyncClient(base_url=roomy_server.base_url, timeout=300) as client:
            return await asyncio.gather(*(complete(client, chat_body(roomy_server, PROMPTS[i % 8], 12,
                                                                      logit_bias=NO_EOS))
                                          for i in range(32)))

    results = asyncio.run(run())
    assert len(results) == 32
    for i, result in enumerate(results):
        usage = result["usage"]
        assert usage["completion_tokens"] == 12
        assert usage["total_tokens"] == usage["prompt_tokens"] + 12
        if i % 8 == 0:
            assert usage["prompt_tokens"] == expected_prompt_tokens
