"""What the runtime tells Prometheus: per-model request latencies, token counts, loads and unloads.

The collectors live in one process-wide registry, `REGISTRY` (the server runs one pool per process);
GET /metrics (serve/api/metrics.py) exposes it together with the gauges read from the pool at scrape
time (`PoolGauges`). Names follow vLLM's metrics where they overlap (`vllm:num_requests_running` is
`quantserve_num_requests_running` here) with a `model` label; the README lists every one.

Requests are recorded on the event loop side, by the request's stream as its outputs arrive and when it
finishes (serve/runtime/engine.py), never on the engine thread between steps.
"""
from __future__ import annotations

import bisect
import itertools
from typing import Any, Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric

PREFIX = "quantserve"
REGISTRY = CollectorRegistry()

# vLLM's buckets, with finer ones at the low end: a small model on a CPU decodes a token in milliseconds.
_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
_REQUEST_BUCKETS = (0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
                    60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
_LOAD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)


def _histogram(name: str, documentation: str, buckets: tuple[float, ...]) -> Histogram:
    return Histogram(f"{PREFIX}_{name}", documentation, ["model"], buckets=buckets, registry=REGISTRY)


def _counter(name: str, documentation: str, labels: tuple[str, ...] = ("model",)) -> Counter:
    return Counter(f"{PREFIX}_{name}", documentation, list(labels), registry=REGISTRY)


class OutputGapHistogram:
    """A histogram observed once per output, so on the event loop's per-token path: a bisect into plain
    per-model lists instead of prometheus_client's locked Histogram (0.7 to 1.6 us a call against 5.5 to
    7.3 us, python -m timeit on a loaded 2-core machine). Only the event loop thread observes and scrapes,
    so no lock is needed."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]):
        self._name, self._documentation, self._bounds = name, documentation, buckets
        self._counts: dict[str, list[int]] = {}  # per model: one count per bucket, then +Inf
        self._sums: dict[str, list[float]] = {}

    def observer(self, model: str) -> Callable[[float], None]:
        counts = self._counts.setdefault(model, [0] * (len(self._bounds) + 1))
        total = self._sums.setdefault(model, [0.0])
        bounds = self._bounds

        def observe(seconds: float) -> None:
            counts[bisect.bisect_left(bounds, seconds)] += 1
            total[0] += seconds
        return observe

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=["model"])
        for model, counts in self._counts.items():
            cumulative = list(itertools.accumulate(counts))
            les = [repr(float(bound)) for bound in self._bounds] + ["+Inf"]
            family.add_metric([model], list(zip(les, cumulative)), sum_value=self._sums[model][0])
        yield family


QUEUE_TIME = _histogram("request_queue_time_seconds",
                        "Time a request waited for a free sequence slot (submitted until admitted)",
                        _REQUEST_BUCKETS)
TIME_TO_FIRST_TOKEN = _histogram("time_to_first_token_seconds",
                                 "Time from submission to the first generated token", _TTFT_BUCKETS)
INTER_TOKEN_LATENCY = OutputGapHistogram(f"{PREFIX}_inter_token_latency_seconds",
                                         "Time between two consecutive outputs of one request", _ITL_BUCKETS)
REGISTRY.register(INTER_TOKEN_LATENCY)
E2E_LATENCY = _histogram("e2e_request_latency_seconds",
                         "Time from submission to the last output (or the abort)", _REQUEST_BUCKETS)
PROMPT_TOKENS = _counter("prompt_tokens", "Prompt tokens of the requests that were admitted")
PROMPT_TOKENS_CACHED = _counter("prompt_tokens_cached",
                                "Of the prompt tokens, those reused from the KV cache (prefix cache hits)")
PREFIX_CACHE_HITS = _counter("prefix_cache_hits",
                             "Admitted requests that reused at least one prompt token from the KV cache")
PREFIX_CACHE_MISSES = _counter("prefix_cache_misses",
                               "Admitted requests whose whole prompt was computed (no cached prefix)")
GENERATION_TOKENS = _counter("generation_tokens", "Generated tokens delivered to the requests")
REQUEST_SUCCESS = _counter("request_success", "Requests that ended, by finish reason (stop, length, abort)",
                           ("model", "finished_reason"))
SPEC_DRAFT_TOKENS = _counter("spec_decode_num_draft_tokens",
                             "Speculative decoding: draft tokens verified by the model")
SPEC_ACCEPTED_TOKENS = _counter("spec_decode_num_accepted_tokens",
                                "Speculative decoding: of the draft tokens, those the model confirmed (emitted)")
POOLING_REQUESTS = _counter("pooling_requests", "Embedding and rerank requests computed, by task (embeddings, rerank)",
                            ("model", "task"))
POOLING_INPUTS = _counter("pooling_inputs", "Inputs of those requests (texts embedded, documents scored), by task",
                          ("model", "task"))
POOLING_TOKENS = _counter("pooling_tokens", "Tokens of those inputs (a rerank input: the query and one document)",
                          ("model", "task"))
POOLING_LATENCY = _histogram("pooling_request_latency_seconds",
                             "Time an embedding or rerank request waited for and spent in its model", _REQUEST_BUCKETS)
MODEL_LOADS = _counter("model_loads", "Models loaded (at start-up or on demand)")
MODEL_LOAD_TIME = _histogram("model_load_seconds", "Time to load a model's weights and start its engine",
                             _LOAD_BUCKETS)
MODEL_UNLOADS = _counter("model_unloads", "Models unloaded, by reason: evicted (to make room for another), "
                         "expired (idle past its keep-alive), requested (by a client)",
                         ("model", "reason"))


def record_request(model: str, *, finish_reason: str, num_prompt_tokens: int, num_cached_tokens: int,
                   num_output_tokens: int, queue_seconds: float | None, ttft_seconds: float | None,
                   e2e_seconds: float, num_drafted_tokens: int = 0, num_accepted_tokens: int = 0) -> None:
    """One ended request; the prompt counts only when it was admitted (its prompt was computed)."""
    if queue_seconds is not None:
        QUEUE_TIME.labels(model).observe(queue_seconds)
        PROMPT_TOKENS.labels(model).inc(num_prompt_tokens)
        PROMPT_TOKENS_CACHED.labels(model).inc(num_cached_tokens)
        (PREFIX_CACHE_HITS if num_cached_tokens > 0 else PREFIX_CACHE_MISSES).labels(model).inc()
    if ttft_seconds is not None:
        TIME_TO_FIRST_TOKEN.labels(model).observe(ttft_seconds)
    GENERATION_TOKENS.labels(model).inc(num_output_tokens)
    E2E_LATENCY.labels(model).observe(e2e_seconds)
    REQUEST_SUCCESS.labels(model, finish_reason).inc()
    if num_drafted_tokens:
        SPEC_DRAFT_TOKENS.labels(model).inc(num_drafted_tokens)
        SPEC_ACCEPTED_TOKENS.labels(model).inc(num_accepted_tokens)


def record_pooling(model: str, *, task: str, num_inputs: int, num_tokens: int, seconds: float) -> None:
    """One embedding or rerank request whose inputs were pooled."""
    POOLING_REQUESTS.labels(model, task).inc()
    POOLING_INPUTS.labels(model, task).inc(num_inputs)
    POOLING_TOKENS.labels(model, task).inc(num_tokens)
    POOLING_LATENCY.labels(model).observe(seconds)


def inter_token_latency(model: str) -> Callable[[float], None]:
    """The `observe` of one model's inter-token histogram, looked up once per request, not per token."""
    return INTER_TOKEN_LATENCY.observer(model)


def record_load(model: str, seconds: float | None) -> None:
    MODEL_LOADS.labels(model).inc()
    if seconds is not None:
        MODEL_LOAD_TIME.labels(model).observe(seconds)


def record_unload(model: str, reason: str) -> None:
    MODEL_UNLOADS.labels(model, reason).inc()


class PoolGauges:
    """Gauges read at scrape time from the pool's per-model stats (`ModelPool.stats()`): requests
    running and waiting, and the share of the KV cache held by running requests."""

    def __init__(self, stats: Callable[[], dict[str, dict[str, Any]]]):
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        running = GaugeMetricFamily(f"{PREFIX}_num_requests_running", "Requests being decoded", labels=["model"])
        waiting = GaugeMetricFamily(f"{PREFIX}_num_requests_waiting", "Requests queued for a free sequence slot",
                                    labels=["model"])
        kv_usage = GaugeMetricFamily(f"{PREFIX}_kv_cache_usage_perc",
                                     "KV cache used by running requests, 0 to 1 (1 = full)", labels=["model"])
        for model, stats in self._stats().items():
            running.add_metric([model], stats["running"])
            waiting.add_metric([model], stats["waiting"])
            kv_usage.add_metric([model], stats["kv_cache_usage"])
        yield from (running, waiting, kv_usage)
