"""Where a constrained step's time goes, in-process (no HTTP): the llama.cpp backend driven by the real
Scheduler, the structured benchmark's workload (benchmarks/structured.py: its chat prompt and schema,
temperature 0.8, a seed per request, at most --max-tokens tokens) free and constrained, in interleaved
rounds so a busy machine slows both alike. A closed loop of --clients clients: a request that ends is
followed by the next, until --requests have ended.

For each mode: the median wall and CPU time of a full decode step (every client decodes one token, no
prompt in the step), split into llama_decode and the rest (sampling, grammar, text), and tok/s over the
round. Answers differ in length between the modes (free ones are longer), and a round's tok/s includes
the prompts' prefill, so the per-step split is the cleaner comparison of what a constrained token costs.

    PYTHONPATH=. python -m benchmarks.structured_steps [--clients 1,8] [--rounds 4] [--requests 16]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from pathlib import Path

from backends import llamacpp
from backends.base import BackendSettings
from benchmarks.structured import ASK, TEMPERATURE, WORKLOAD_SCHEMA
from serve.grammar import schema_constraint
from serve.models.catalog import embedded_model_path
from serve.runtime.scheduler import Scheduler
from serve.sequence import Batch, Request, SamplingParams, Sequence

RESULTS = Path(__file__).resolve().parent / "results"


class DecodeTimer:
    """Wall time spent inside llama_decode (the model), wrapped around the backend module's binding."""

    def __init__(self):
        self.seconds = 0.0
        self._decode = llamacpp.ll.llama_decode
        llamacpp.ll.llama_decode = self._timed

    def _timed(self, ctx, batch):
        start = time.perf_counter()
        try:
            return self._decode(ctx, batch)
        finally:
            self.seconds += time.perf_counter() - start


def run_round(backend, decode_timer: DecodeTimer, constrained: bool, clients: int, num_requests: int,
              max_tokens: int, seed_base: int) -> dict:
    llamacpp.ll.llama_memory_clear(backend._memory, True)
    for slot in backend._slots:
        slot.cached_tokens = []
    caps = backend.capabilities
    scheduler = Scheduler(num_parallel=caps.num_parallel, max_waiting=1000, max_batch_tokens=caps.max_batch_tokens,
                          max_prefill_tokens_while_decoding=caps.max_prefill_tokens_while_decoding,
                          admit=backend.admit)
    prompt = backend.tokenize(backend.render_chat(ASK))
    constraint = schema_constraint(WORKLOAD_SCHEMA, "bench") if constrained else None
    steps, outputs_by_id = defaultdict(list), defaultdict(str)
    num_sent = num_done = num_tokens = 0

    def send() -> None:
        nonlocal num_sent
        params = SamplingParams(max_tokens=max_tokens, temperature=TEMPERATURE, seed=seed_base + num_sent,
                                constraint=constraint)
        scheduler.add(Sequence(Request(f"r{num_sent}", "m", "", prompt, params), deliver=lambda out: None))
        num_sent += 1

    for _ in range(clients):
        send()
    start = time.perf_counter()
    while num_done < num_requests:
        batch = scheduler.schedule()
        if batch.is_empty:
            raise RuntimeError("no work left (a request failed to start?)")
        decode_before = decode_timer.seconds
        step_start, cpu_start = time.perf_counter(), time.process_time()
        outputs = backend.step(batch)
        seconds, cpu_seconds = time.perf_counter() - step_start, time.process_time() - cpu_start
        scheduler.postprocess(batch, outputs)
        if not batch.prefill and len(batch.decode) == clients:
            decode = decode_timer.seconds - decode_before
            steps["step_ms"].append(seconds * 1000)
            steps["cpu_ms"].append(cpu_seconds * 1000)
            steps["decode_ms"].append(decode * 1000)
            steps["rest_ms"].append((seconds - decode) * 1000)
        for output in outputs:
            num_tokens += output.num_new_tokens
            outputs_by_id[output.request_id] += output.text
            if output.error:
                raise RuntimeError(f"{output.request_id}: {output.error}")
            if output.finish_reason is not None:
                num_done += 1
                if num_sent < num_requests:
                    send()
    duration = time.perf_counter() - start
    backend.step(Batch(released=list(scheduler.running)))
    return {"tok_s": num_tokens / duration, "num_tokens": num_tokens,
            **{name: statistics.median(values) for name, values in steps.items()},
            "texts": dict(outputs_by_id)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1,8", type=lambda s: [int(c) for c in s.split(",")])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--requests", type=int, default=8, help="requests per round and client count")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="structured_steps")
    args = parser.parse_args()
    backend = llamacpp.LlamaCppBackend(BackendSettings(
        model_path=embedded_model_path(), context_length=1024, num_parallel=8, num_threads=args.threads,
        max_batch_tokens=512))
    decode_timer = DecodeTimer()
    for constrained in (False, True):  # warm-up: graphs, page faults, llguidance's tokenizer
        run_round(backend, decode_timer, constrained, 1, 1, 16, 0)
    results = defaultdict(list)
    for index in range(args.rounds):
        for clients in args.clients:
            modes = (False, True) if index % 2 == 0 else (True, False)
            for constrained in modes:
                row = run_round(backend, decode_timer, constrained, clients, max(args.requests, clients),
                                args.max_tokens, 1000 * index)
                row.pop("texts")
                results[clients, constrained].append(row)
                print(f"round {index} c={clients} {'schema' if constrained else 'free  '} {row['tok_s']:6.1f} tok/s, "
                      f"step {row['step_ms']:5.1f} ms (decode {row['decode_ms']:5.1f}, rest {row['rest_ms']:5.2f}), "
                      f"CPU {row['cpu_ms']:5.1f} ms", flush=True)
    summary = {}
    for clients in args.clients:
        free, schema = results[clients, False], results[clients, True]
        ratios = [s["tok_s"] / f["tok_s"] for f, s in zip(free, schema)]
        summary[clients] = {"ratio_round_medians": ratios, "ratio_median": statistics.median(ratios),
                            **{f"{mode}_{key}": statistics.median(r[key] for r in rows)
                               for mode, rows in (("free", free), ("schema", schema))
                               for key in ("tok_s", "step_ms", "decode_ms", "rest_ms", "cpu_ms")}}
        s = summary[clients]
        print(f"c={clients}: constrained/free tok/s {s['ratio_median']:.2f}x (rounds {min(ratios):.2f}-{max(ratios):.2f}); "
              f"rest of a step (sampling, grammar, text) free {s['free_rest_ms']:.2f} ms, "
              f"schema {s['schema_rest_ms']:.2f} ms; decode {s['free_decode_ms']:.1f} / {s['schema_decode_ms']:.1f} ms")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps({"args": vars(args), "summary": summary}, indent=2) + "\n")
    backend.close()


if __name__ == "__main__":
    main()
