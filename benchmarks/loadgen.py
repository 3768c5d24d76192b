"""Load generator: streaming /v1/completions clients in a closed loop, an open loop, or the mixed workload.

Metric definitions follow `vllm bench serve` (vllm/benchmarks/serve.py, calculate_metrics):
  duration        first request sent -> last request finished (the whole run, client side)
  output tok/s    total output tokens / duration; requests/s = completed requests / duration
  TTFT            request sent -> first streamed token
  ITL             gaps between consecutive streamed tokens of one request (pooled over all requests)
  TPOT            (e2e latency - TTFT) / (output tokens - 1), per request
  e2e latency     request sent -> last streamed chunk
Output tokens come from the stream's `usage` (stream_options.include_usage). A server that sends no
usage in streams (llama_cpp.server) is counted as max_tokens only when it reports
finish_reason="length", which with end-of-generation banned means exactly max_tokens were generated.
Unlike vLLM, a final chunk that carries only a finish_reason and no text is not counted as a token, so it
adds no spurious near-zero ITL.

    python -m benchmarks.loadgen --url http://127.0.0.1:8000 --concurrency 8 --num-requests 32
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import json
import random
import time
from typing import Any, Optional

import httpx
import numpy as np

from benchmarks.prompts import EOS_LOGIT_BIAS, PromptSpec, long_prompt, short_prompts


@dataclasses.dataclass
class RequestResult:
    """What one streamed request measured (times in seconds, perf_counter clock)."""

    label: str
    num_max_tokens: int
    num_prompt_tokens: int
    success: bool = False
    error: str = ""
    start_time: float = 0.0
    ttft: float = 0.0
    latency: float = 0.0
    token_times: list[float] = dataclasses.field(default_factory=list)
    num_output_tokens: int = 0
    output_token_source: str = ""
    finish_reason: Optional[str] = None
    text: str = ""  # the streamed output (a multi-turn chat sends it back)
    usage: dict[str, Any] = dataclasses.field(default_factory=dict)  # the stream's last usage object
    timings: dict[str, Any] = dataclasses.field(default_factory=dict)  # llama-server's, with draft_n

    @property
    def itl(self) -> list[float]:
        return [b - a for a, b in zip(self.token_times, self.token_times[1:])]


def completion_payload(model: str, spec: PromptSpec) -> dict[str, Any]:
    """The one request body every server gets: greedy, EOS banned, usage in the stream."""
    return {
        "model": model,
        "prompt": spec.text,
        "max_tokens": spec.num_max_tokens,
        "temperature": 0.0,
        "logit_bias": spec.logit_bias or EOS_LOGIT_BIAS,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def _record_chunk(result: RequestResult, chunk: dict[str, Any], now: float) -> Optional[int]:
    """Update `result` with one SSE chunk; return usage.completion_tokens when the chunk has it."""
    if "error" in chunk:
        result.error = json.dumps(chunk["error"])[:500]
    if chunk.get("timings"):
        result.timings = chunk["timings"]
    for choice in chunk.get("choices") or []:
        text = choice.get("text") or (choice.get("delta") or {}).get("content") or ""
        finish = choice.get("finish_reason")
        if text or (finish is None and "role" not in (choice.get("delta") or {})):
            result.token_times.append(now)  # a chat stream's opening role-only chunk carries no token
        result.text += text
        if finish:
            result.finish_reason = finish
        result.latency = now - result.start_time
    usage = chunk.get("usage")
    if usage:
        result.usage = usage
    return usage.get("completion_tokens") if usage else None


def _count_output_tokens(result: RequestResult, usage_tokens: Optional[int]) -> None:
    if usage_tokens is not None:
        result.num_output_tokens, result.output_token_source = usage_tokens, "usage"
    elif result.finish_reason == "length":
        result.num_output_tokens, result.output_token_source = result.num_max_tokens, "finish_reason=length"
    else:  # last resort, flagged in the results: chunks are not tokens
        result.num_output_tokens, result.output_token_source = len(result.token_times), "chunks"


async def stream_request(client: httpx.AsyncClient, base_url: str, model: str,
                         spec: PromptSpec) -> RequestResult:
    """Send one streaming completion and time every chunk as it arrives."""
    result = RequestResult(spec.label, spec.num_max_tokens, spec.num_prompt_tokens)
    return await stream_post(client, f"{base_url}/v1/completions", completion_payload(model, spec), result)


async def stream_post(client: httpx.AsyncClient, url: str, payload: dict[str, Any],
                      result: RequestResult) -> RequestResult:
    """POST a streaming request (completions or chat) and record its chunks' times into `result`."""
    usage_tokens = None
    result.start_time = time.perf_counter()
    try:
        async with client.stream("POST", url, json=payload) as response:
            if response.status_code != 200:
                result.error = f"HTTP {response.status_code}: {(await response.aread())[:300]!r}"
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue  # blank separators and SSE comments (pings)
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                usage_tokens = _record_chunk(result, json.loads(data), time.perf_counter()) or usage_tokens
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    if result.token_times:
        result.ttft = result.token_times[0] - result.start_time
        result.success = not result.error
    elif not result.error:
        result.error = "no token received"
    _count_output_tokens(result, usage_tokens)
    return result


def make_client(num_connections: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=num_connections + 4, max_keepalive_connections=num_connections + 4)
    return httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(900.0, connect=30.0))


async def run_closed_loop(base_url: str, model: str, specs: list[PromptSpec],
                          concurrency: int) -> tuple[list[RequestResult], float]:
    """`concurrency` clients each send their next request as soon as the previous one finishes."""
    pending = collections.deque(enumerate(specs))
    results: list[Optional[RequestResult]] = [None] * len(specs)
    async with make_client(concurrency) as client:
        async def client_loop() -> None:
            while pending:
                index, spec = pending.popleft()
                results[index] = await stream_request(client, base_url, model, spec)

        start = time.perf_counter()
        await asyncio.gather(*(client_loop() for _ in range(concurrency)))
        duration = time.perf_counter() - start
    return [r for r in results if r is not None], duration


async def run_open_loop(base_url: str, model: str, specs: list[PromptSpec], rate: float,
                        seed: int = 0) -> tuple[list[RequestResult], float]:
    """Poisson arrivals at `rate` requests/s (exponential gaps from a seeded generator), no cap."""
    rng = random.Random(seed)
    async with make_client(len(specs)) as client:
        start = time.perf_counter()
        tasks = []
        for spec in specs:
            tasks.append(asyncio.create_task(stream_request(client, base_url, model, spec)))
            await asyncio.sleep(rng.expovariate(rate))
        results = list(await asyncio.gather(*tasks))
        duration = time.perf_counter() - start
    return results, duration


async def run_mixed(base_url: str, model: str, stream_specs: list[PromptSpec], long_spec: PromptSpec,
                    long_delay_s: float = 1.5) -> tuple[list[RequestResult], RequestResult, float]:
    """All `stream_specs` start at once; `long_spec` arrives `long_delay_s` later."""
    async with make_client(len(stream_specs) + 1) as client:
        async def delayed_long() -> RequestResult:
            await asyncio.sleep(long_delay_s)
            return await stream_request(client, base_url, model, long_spec)

        start = time.perf_counter()
        stream_tasks = [stream_request(client, base_url, model, spec) for spec in stream_specs]
        *streams, long_result = await asyncio.gather(*stream_tasks, delayed_long())
        duration = time.perf_counter() - start
    return list(streams), long_result, duration


def _stats(values: list[float], prefix: str, scale: float = 1000.0) -> dict[str, float]:
    if not values:
        values = [0.0]
    array = np.asarray(values) * scale
    return {
        f"mean_{prefix}": float(np.mean(array)),
        f"p50_{prefix}": float(np.percentile(array, 50)),
        f"p99_{prefix}": float(np.percentile(array, 99)),
        f"max_{prefix}": float(np.max(array)),
    }


def summarize(results: list[RequestResult], duration_s: float) -> dict[str, Any]:
    """vLLM-style aggregate metrics (times in ms) over the successful requests of one run."""
    done = [r for r in results if r.success]
    num_output = sum(r.num_output_tokens for r in done)
    num_input = sum(r.num_prompt_tokens for r in done)
    tpots = [(r.latency - r.ttft) / (r.num_output_tokens - 1) for r in done if r.num_output_tokens > 1]
    summary: dict[str, Any] = {
        "completed": len(done),
        "failed": len(results) - len(done),
        "errors": sorted({r.error for r in results if r.error})[:5],
        "num_short_of_max_tokens": sum(r.num_output_tokens != r.num_max_tokens for r in done),
        "output_token_sources": sorted({r.output_token_source for r in done}),
        "duration_s": duration_s,
        "total_input_tokens": num_input,
        "total_output_tokens": num_output,
        "request_throughput": len(done) / duration_s,
        "output_throughput": num_output / duration_s,
        "total_token_throughput": (num_input + num_output) / duration_s,
    }
    summary.update(_stats([r.ttft for r in done], "ttft_ms"))
    summary.update(_stats(tpots, "tpot_ms"))
    summary.update(_stats([gap for r in done for gap in r.itl], "itl_ms"))
    summary.update(_stats([r.latency for r in done], "e2el_ms"))
    summary.update(_draft_counts(done))
    return summary


def _draft_counts(done: list[RequestResult]) -> dict[str, Any]:
    """Speculative drafts where responses report them: llama-server's `timings.draft_n` and
    `draft_n_accepted`, or OpenAI's `usage.completion_tokens_details.accepted/rejected_prediction_tokens`."""
    drafted = accepted = 0
    reported = False
    for r in done:
        details = (r.usage.get("completion_tokens_details") or {}) if r.usage else {}
        if "draft_n" in r.timings:
            reported = True
            drafted += r.timings["draft_n"]
            accepted += r.timings.get("draft_n_accepted", 0)
        elif "accepted_prediction_tokens" in details:
            reported = True
            accepted += details["accepted_prediction_tokens"] or 0
            drafted += (details["accepted_prediction_tokens"] or 0) + (details.get("rejected_prediction_tokens") or 0)
    if not reported:
        return {}
    return {"draft_tokens": drafted, "draft_tokens_accepted": accepted}


# Fields of a run summary that count things: repeated runs add them up, so a failure in any run shows.
COUNT_FIELDS = ("completed", "failed", "num_short_of_max_tokens", "total_input_tokens", "total_output_tokens",
                "num_attempts", "draft_tokens", "draft_tokens_accepted")


def median_of_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One summary for repeated runs of a workload: the median of every other number (each metric on its
    own), the sum of every count (COUNT_FIELDS), every run's errors, the other fields of the first run,
    and every run's output tok/s under `runs_output_throughput`.
    On a shared VM one run can be off by +-5%; the median of interleaved repeats is what we compare."""
    combined = dict(runs[0])
    for key, value in runs[0].items():
        if key in COUNT_FIELDS:
            combined[key] = sum(run.get(key, 0) for run in runs)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            median = float(np.median([run[key] for run in runs]))
            combined[key] = median if isinstance(value, float) else round(median)
    combined["errors"] = sorted({error for run in runs for error in run.get("errors", [])})[:5]
    combined["num_runs"] = len(runs)
    combined["runs_output_throughput"] = [round(run["output_throughput"], 2) for run in runs]
    return combined


def summarize_mixed(streams: list[RequestResult], long_result: RequestResult,
                    duration_s: float) -> dict[str, Any]:
    """The mixed workload: running streams' ITL p99 and max, the long prompt's latency, aggregate tok/s."""
    everything = summarize([*streams, long_result], duration_s)
    stream_gaps = [gap for r in streams if r.success for gap in r.itl]
    prefill_end = long_result.start_time + long_result.ttft if long_result.success else float("inf")
    stalls = [b - a for r in streams for a, b in zip(r.token_times, r.token_times[1:])
              if b > long_result.start_time and a < prefill_end]
    return {
        "duration_s": duration_s,
        "output_throughput": everything["output_throughput"],
        "total_output_tokens": everything["total_output_tokens"],
        "completed": everything["completed"],
        "failed": everything["failed"],
        "errors": everything["errors"],
        "num_short_of_max_tokens": everything["num_short_of_max_tokens"],
        "streams_p50_itl_ms": float(np.percentile(stream_gaps or [0.0], 50)) * 1000,
        "streams_p99_itl_ms": float(np.percentile(stream_gaps or [0.0], 99)) * 1000,
        "streams_max_itl_ms": max(stream_gaps or [0.0]) * 1000,
        "streams_max_itl_during_long_prefill_ms": max(stalls or [0.0]) * 1000,
        "num_streams_running_at_long_arrival": sum(
            r.start_time + r.latency > long_result.start_time for r in streams),
        "long_prompt_tokens": long_result.num_prompt_tokens,
        "long_success": long_result.success,
        "long_ttft_ms": long_result.ttft * 1000,
        "long_e2el_ms": long_result.latency * 1000,
    }


async def first_model_id(base_url: str) -> str:
    async with httpx.AsyncClient(timeout=30.0) as client:
        response = await client.get(f"{base_url}/v1/models")
        response.raise_for_status()
        return response.json()["data"][0]["id"]


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--model-path", help="GGUF whose tokenizer counts prompt tokens (default: embedded)")
    parser.add_argument("--concurrency", type=int, default=8, help="closed loop: concurrent clients")
    parser.add_argument("--rate", type=float, help="open loop: Poisson arrivals per second (overrides closed loop)")
    parser.add_argument("--num-requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--mixed", action="store_true", help="run the mixed workload instead")
    parser.add_argument("--prompt-set", type=int, default=1,
                        help="which deterministic prompt set; change it between runs against one server, "
                             "or its prefix cache serves the repeated prompts")
    return parser.parse_args()


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    if args.model_path is None:
        from serve.models.catalog import embedded_model_path
        args.model_path = str(embedded_model_path())
    model = await first_model_id(args.url)
    if args.mixed:
        streams = short_prompts(args.model_path, 2_000_000 + 1_000 * args.prompt_set, 8, 128)
        long_spec = long_prompt(args.model_path, 1500, args.max_tokens, variant=1_000 + args.prompt_set)
        return summarize_mixed(*await run_mixed(args.url, model, streams, long_spec))
    specs = short_prompts(args.model_path, 1_000_000 + 10_000 * args.prompt_set, args.num_requests, args.max_tokens)
    if args.rate:
        return summarize(*await run_open_loop(args.url, model, specs, args.rate))
    return summarize(*await run_closed_loop(args.url, model, specs, args.concurrency))


if __name__ == "__main__":
    print(json.dumps(asyncio.run(_main(_parse_args())), indent=2))
