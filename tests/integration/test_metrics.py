"""GET /metrics scraped from the real server after real requests, parsed with prometheus_client's parser:
token counters move by exactly what the responses' usage reported, the latency histograms count the
requests, 429s and the metrics key on a server with a one-slot queue, a load and an eviction with two
models and --max-models 1."""
from __future__ import annotations

import json
import shutil
from collections import defaultdict

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from serve.models.catalog import embedded_model_path
from tests.integration.conftest import start_llamacpp_server

NO_EOS = {"0": -100, "2": -100}
CHAT = [{"role": "user", "content": "Say hello."}]
METRICS_KEY = "scrape-key"


class Scrape:
    """One GET /metrics: sample values by name and labels."""

    def __init__(self, http: httpx.Client, **headers: str):
        response = http.get("/metrics", headers=headers)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/plain")
        self.samples: dict[str, dict[frozenset, float]] = defaultdict(dict)
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                self.samples[sample.name][frozenset(sample.labels.items())] = sample.value

    def value(self, name: str, **labels: str) -> float:
        return self.samples[name].get(frozenset(labels.items()), 0.0)

    def total(self, name: str, **labels: str) -> float:
        """The sum over every series whose labels include `labels`."""
        wanted = set(labels.items())
        return sum(value for key, value in self.samples[name].items() if wanted <= key)


def chat_usage(http: httpx.Client, model: str) -> dict:
    response = http.post("/v1/chat/completions", json={"model": model, "messages": CHAT, "max_tokens": 8,
                                                        "temperature": 0})
    assert response.status_code == 200, response.text
    return response.json()["usage"]


def streamed_usage(http: httpx.Client, model: str) -> dict:
    body = {"model": model, "prompt": "Once upon a time", "max_tokens": 12, "logit_bias": NO_EOS, "stream": True,
            "stream_options": {"include_usage": True}}
    with http.stream("POST", "/v1/completions", json=body) as response:
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: {")]
    return json.loads(events[-1])["usage"]


def test_counters_move_by_the_usage_the_responses_reported(server, http):
    model = server.model
    before = Scrape(http)
    usages = [chat_usage(http, model), streamed_usage(http, model), chat_usage(http, model)]
    after = Scrape(http)

    def delta(name: str, **labels: str) -> float:
        return after.total(name, model=model, **labels) - before.total(name, model=model, **labels)

    assert delta("quantserve_prompt_tokens_total") == sum(u["prompt_tokens"] for u in usages)
    assert delta("quantserve_generation_tokens_total") == sum(u["completion_tokens"] for u in usages)
    cached = [u.get("prompt_tokens_details", {}).get("cached_tokens", 0) for u in usages]
    assert delta("quantserve_prompt_tokens_cached_total") == sum(cached)
    if server.backend == "llamacpp":
        # The first chat again: its prefix is cached. vLLM reported 0 for this short prompt (it caches whole
        # blocks); its reuse is tested on a long prompt in test_openai_api.py.
        assert cached[2] > 0
    assert delta("quantserve_prefix_cache_hits_total") == sum(c > 0 for c in cached)
    assert delta("quantserve_prefix_cache_misses_total") == sum(c == 0 for c in cached)
    for histogram in ("time_to_first_token_seconds", "e2e_request_latency_seconds", "request_queue_time_seconds"):
        assert delta(f"quantserve_{histogram}_count") == 3, histogram
        assert delta(f"quantserve_{histogram}_sum") > 0, histogram
    num_gaps = sum(u["completion_tokens"] - 1 for u in usages)  # at least one output per gap, or fewer
    assert 0 < delta("quantserve_inter_token_latency_seconds_count") <= num_gaps
    assert delta("quantserve_request_success_total") == 3
    assert delta("quantserve_request_success_total", finished_reason="length") >= 1  # the NO_EOS stream
    assert after.value("quantserve_num_requests_running", model=model) == 0
    assert after.value("quantserve_num_requests_waiting", model=model) == 0
    assert 0 <= after.value("quantserve_kv_cache_usage_perc", model=model) <= 1
    assert after.value("quantserve_model_loads_total", model=model) == 1  # preloaded at start-up
    assert after.value("quantserve_model_load_seconds_count", model=model) == 1


@pytest.fixture(scope="module")
def one_slot_server(tmp_path_factory):
    args = ["--parallel", "1", "--max-queue", "0", "--metrics-key", METRICS_KEY]
    with start_llamacpp_server(tmp_path_factory, "one-slot", args) as server:
        yield server


def test_429s_are_counted(one_slot_server):
    server = one_slot_server
    key = {"Authorization": f"Bearer {METRICS_KEY}"}
    labels = {"model": server.model, "status": "429", "type": "rate_limit_error", "code": "queue_full"}
    with server.http() as http:
        before = Scrape(http, **key).value("quantserve_errors_total", **labels)
        body = {"model": server.model, "prompt": "Once upon a time", "max_tokens": 3000, "logit_bias": NO_EOS,
                "stream": True}
        with http.stream("POST", "/v1/completions", json=body) as running:
            next(running.iter_lines())  # the one slot is taken
            statuses = [http.post("/v1/completions", json={"model": server.model, "prompt": "Hi",
                                                           "max_tokens": 2}).status_code for _ in range(3)]
        assert statuses == [429, 429, 429]
        assert Scrape(http, **key).value("quantserve_errors_total", **labels) == before + 3


def test_errors_are_labelled_by_the_resolved_model_and_none_before_one_is(one_slot_server):
    """An unknown model's 404 is counted under model="none" (a client's made-up names never become
    labels); an error found once the model was resolved (a grammar llama.cpp refuses) is that model's
    (tests/unit/test_metrics.py covers a stream's error event)."""
    server = one_slot_server
    key = {"Authorization": f"Bearer {METRICS_KEY}"}
    not_found = {"model": "none", "status": "404", "type": "invalid_request_error", "code": "model_not_found"}
    bad_grammar = {"model": server.model, "status": "400", "type": "invalid_request_error", "code": ""}
    with server.http() as http:
        before = Scrape(http, **key)
        assert http.post("/v1/completions", json={"model": "made-up-7b", "prompt": "Hi"}).status_code == 404
        # a grammar llama.cpp refuses: a 400 found after the model was resolved
        refused = http.post("/v1/completions", json={"model": server.model, "prompt": "Hi", "max_tokens": 2,
                                                     "grammar": "root ::= undefined-rule"})
        assert refused.status_code == 400, refused.text
        after = Scrape(http, **key)
    errors = "quantserve_errors_total"
    assert after.value(errors, **not_found) == before.value(errors, **not_found) + 1
    assert not after.total(errors, model="made-up-7b")
    assert after.value(errors, **bad_grammar) == before.value(errors, **bad_grammar) + 1


def test_the_metrics_key_opens_metrics(one_slot_server):
    with one_slot_server.http() as http:
        assert http.get("/metrics").status_code == 401
        assert http.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        Scrape(http, Authorization=f"Bearer {METRICS_KEY}")
        assert http.get("/v1/models").status_code == 200  # no --api-key: the API stays open


def test_a_load_and_an_eviction_are_counted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("metrics-models")
    second = folder / "smol-second.gguf"
    shutil.copyfile(embedded_model_path(), second)
    args = ["--ctx", "512", "--parallel", "1", "--max-models", "1", "--switch-window", "0",
            "--models-dir", str(folder)]
    with start_llamacpp_server(tmp_path_factory, "evict", args) as server, server.http() as http:
        first = server.model
        assert chat_usage(http, str(second))["completion_tokens"] > 0  # loads smol-second, evicts the first
        scrape = Scrape(http)
        assert scrape.value("quantserve_model_loads_total", model="smol-second") == 1
        assert scrape.value("quantserve_model_load_seconds_count", model="smol-second") == 1
        assert scrape.value("quantserve_model_load_seconds_sum", model="smol-second") > 0
        assert scrape.value("quantserve_model_unloads_total", model=first, reason="evicted") == 1
        assert scrape.total("quantserve_num_requests_running", model=first) == 0  # gone: no series
        assert first not in {dict(key).get("model") for key in scrape.samples["quantserve_num_requests_running"]}
