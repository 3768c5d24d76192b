"""Time to first token with and without prefix reuse, against a running quantserve.

Each round sends two chat requests whose prompts are ~N tokens long: a *cold* one whose long system
prompt was never seen (a random tag at its start defeats any cache), then a *warm* one with the same
system prompt as an earlier request and a new question (a chat's next turn, a shared system prompt).
The server reports how many prompt tokens it reused in its log; here we compare TTFT.

    python -m benchmarks.prefix_reuse --url http://127.0.0.1:8000 [--rounds 5] [--system-words 700]
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import httpx

NO_EOS = {"2": -100, "0": -100}  # SmolLM2 end-of-generation ids: always stream a first token


def ttft(client: httpx.Client, model: str, system: str, question: str) -> float:
    body = {"model": model, "max_tokens": 4, "temperature": 0, "stream": True, "logit_bias": NO_EOS,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}]}
    start = time.perf_counter()
    first = None
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if first is None and line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - start
    if first is None:
        raise RuntimeError("no token streamed")
    return first


def system_prompt(tag: str, num_words: int) -> str:
    words = " ".join(random.Random(tag).choice(["policy", "customer", "refund", "order", "shipping", "rules"])
                     for _ in range(num_words))
    return f"[{tag}] You are a support assistant. Follow these notes: {words}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--system-words", type=int, default=700)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "prefix_reuse.json")
    args = parser.parse_args()
    with httpx.Client(base_url=args.url, timeout=300) as client:
        model = client.get("/v1/models").json()["data"][0]["id"]
        cold, warm = [], []
        for round_index in range(args.rounds):
            system = system_prompt(f"round-{round_index}-{random.random()}", args.system_words)
            cold.append(ttft(client, model, system, "Where is my order?"))
            warm.append(ttft(client, model, system, "Can I get a refund instead?"))
    result = {"model": model, "rounds": args.rounds, "system_words": args.system_words,
              "ttft_cold_ms_median": statistics.median(cold) * 1000,
              "ttft_warm_ms_median": statistics.median(warm) * 1000,
              "speedup": statistics.median(cold) / statistics.median(warm)}
    print(f"{'':12}{'TTFT median':>14}\n{'cold prefix':12}{result['ttft_cold_ms_median']:>12.0f}ms\n"
          f"{'reused':12}{result['ttft_warm_ms_median']:>12.0f}ms\nspeed-up    {result['speedup']:>13.1f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
