"""Repeated short prompts: quantserve against llama-server with its default prompt reuse.

The workload of issue 16's first finding: streaming requests that reuse a handful of short chat prompts
(the same instruction or question sent again, as classification jobs, evals and retries do), 64 output
tokens each (end-of-generation banned, so every server writes the same amount), 16 slots, closed loop at
1, 8 and 16 clients. The prompts are ChatML text sent to /v1/completions, so both servers compute the same
tokens (their chat templates would add different system prompts). Both servers start once and stay up;
every concurrency level runs on each server in turn, `--repeats` times, alternating which goes first, and
the median of the runs is reported: tok/s, TTFT p50, ITL p50, and quantserve's prefix-cache hits and
misses (its /metrics).

    python -m benchmarks.prompt_reuse_check                     # 1, 8, 16 clients, 3 repeats (~10 min quiet)
    python -m benchmarks.prompt_reuse_check --concurrency 8 --repeats 1 --requests-per-client 2   # a check
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
from pathlib import Path
from typing import Any

import httpx

from benchmarks import loadgen, peers
from benchmarks.machine import describe_machine, wait_for_quiet
from benchmarks.prompts import PromptSpec, count_tokens

RESULTS_DIR = Path(__file__).resolve().parent / "results"
QUESTIONS = (
    "Classify the sentiment of this review as positive or negative: the soup was cold and the waiter rude.",
    "Is this email spam? 'You have won a free cruise, click here to claim it now.'",
    "Translate to French: good morning, how are you today?",
    "What is the capital of Italy?",
    "Summarize in one line: the meeting moved from Tuesday to Thursday at noon.",
    "Name three primary colors.",
)


def chat_text(question: str) -> str:
    return f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


def workload(model_path: str, num_requests: int, max_tokens: int, seed: int) -> list[PromptSpec]:
    """`num_requests` prompts drawn (seeded) from the handful of QUESTIONS."""
    rng = random.Random(seed)
    texts = [chat_text(q) for q in QUESTIONS]
    counts = {text: count_tokens(model_path, text) for text in texts}
    return [PromptSpec(text, counts[text], max_tokens, "repeated") for text in (rng.choice(texts)
                                                                                for _ in range(num_requests))]


def prefix_counts(base_url: str) -> dict[str, float]:
    """quantserve's prefix-cache counters (0 for a server without them)."""
    try:
        text = httpx.get(f"{base_url}/metrics", timeout=10).text
    except httpx.HTTPError:
        return {}
    counts = {"hits": 0.0, "misses": 0.0}
    for line in text.splitlines():
        for key in counts:
            if line.startswith(f"quantserve_prefix_cache_{key}_total{{"):
                counts[key] += float(line.rsplit(" ", 1)[1])
    return counts


def run_level(server: peers.RunningServer, model_path: str, concurrency: int, args, seed: int) -> dict[str, Any]:
    num_requests = max(concurrency * args.requests_per_client, args.min_requests)
    specs = workload(model_path, num_requests, args.max_tokens, seed)
    model = asyncio.run(loadgen.first_model_id(server.base_url))
    before = prefix_counts(server.base_url)
    results, duration = asyncio.run(loadgen.run_closed_loop(server.base_url, model, specs, concurrency))
    summary = loadgen.summarize(results, duration)
    after = prefix_counts(server.base_url)
    if after:
        summary["prefix_cache_hits"] = after["hits"] - before.get("hits", 0)
        summary["prefix_cache_misses"] = after["misses"] - before.get("misses", 0)
    return summary


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default="quantserve,llama-server")
    parser.add_argument("--concurrency", default="1,8,16")
    parser.add_argument("--requests-per-client", type=int, default=4)
    parser.add_argument("--min-requests", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--parallel", type=int, default=16, help="slots: quantserve --parallel, llama-server -np")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=4096, help="context per sequence")
    parser.add_argument("--model-path", help="GGUF to serve (default: the embedded SmolLM2-135M Q4_1)")
    parser.add_argument("--quantserve-args", default="", help="extra `serve up` flags, e.g. '--kv-type q8_0'")
    parser.add_argument("--quiet-wait-s", type=float, default=60.0, help="wait up to this long for an idle machine")
    parser.add_argument("--name", default="prompt_reuse")
    return parser.parse_args()


def main() -> None:
    args = _parse_args()
    from serve.models.catalog import embedded_model_path

    model_path = args.model_path or str(embedded_model_path())
    settings = peers.ServerSettings(model_path, args.threads, args.parallel, args.ctx,
                                    tuple(args.quantserve_args.split()))
    names = [name.strip() for name in args.servers.split(",") if name.strip()]
    levels = [int(c) for c in args.concurrency.split(",")]
    wait_for_quiet(args.quiet_wait_s)
    servers = {}
    try:
        for name in names:
            servers[name] = peers.start_server(name, settings, peers.CACHE_DIR / "logs" / args.name)
            run_level(servers[name], model_path, 2, argparse.Namespace(**{**vars(args), "requests_per_client": 2,
                                                                             "min_requests": 4}), seed=-1)  # warm-up
        runs: dict[str, dict[int, list[dict]]] = {name: {c: [] for c in levels} for name in names}
        for repeat in range(args.repeats):
            order = names if repeat % 2 == 0 else names[::-1]
            for concurrency in levels:
                for name in order:
                    summary = run_level(servers[name], model_path, concurrency, args, seed=repeat * 100 + concurrency)
                    runs[name][concurrency].append(summary)
                    print(f"[repeat {repeat}] {name:13} c={concurrency:<3} {summary['output_throughput']:7.1f} tok/s "
                          f"TTFT p50 {summary['p50_ttft_ms']:7.1f} ms  ITL p50 {summary['p50_itl_ms']:6.1f} ms "
                          f"failed {summary['failed']}", file=sys.stderr, flush=True)
    finally:
        for server in servers.values():
            server.stop()
    report(runs, names, levels, args, model_path)


def report(runs, names, levels, args, model_path: str) -> None:
    medians = {name: {c: loadgen.median_of_runs(runs[name][c]) for c in levels} for name in names}
    print(f"\nRepeated short prompts ({len(QUESTIONS)} chat prompts, {args.max_tokens} output tokens, "
          f"{args.parallel} slots), median of {args.repeats} interleaved runs")
    print(f"{'server':14}{'clients':>8}{'tok/s':>9}{'TTFT p50':>11}{'ITL p50':>10}{'prefix hits/misses':>21}")
    for concurrency in levels:
        for name in names:
            m = medians[name][concurrency]
            hits = (f"{m['prefix_cache_hits']:.0f}/{m['prefix_cache_misses']:.0f}" if "prefix_cache_hits" in m else "-")
            print(f"{name:14}{concurrency:>8}{m['output_throughput']:>9.1f}{m['p50_ttft_ms']:>9.1f}ms"
                  f"{m['p50_itl_ms']:>8.1f}ms{hits:>21}")
        if {"quantserve", "llama-server"} <= set(names):
            q, l = medians["quantserve"][concurrency], medians["llama-server"][concurrency]
            print(f"{'  quantserve / llama-server':34} tok/s {q['output_throughput'] / l['output_throughput']:.2f}x, "
                  f"TTFT p50 {q['p50_ttft_ms'] / max(l['p50_ttft_ms'], 1e-9):.2f}x")
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"{args.name}.json"
    out.write_text(json.dumps({"machine": describe_machine(peers.build_llama_server()), "args": vars(args),
                               "model_path": model_path, "runs": runs,
                               "medians": {n: {str(c): m for c, m in v.items()} for n, v in medians.items()}},
                              indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
