"""What verifying draft tokens costs a decode step of the llama.cpp backend, in-process (no HTTP).

N sequences hold a prompt each (--prompt-tokens, so attention has some context); each measured step puts
every sequence's one decode token into a llama_batch plus D draft tokens (logits at every one of them, as
speculation needs), calls llama_decode, samples every position with a greedy sampler (as verification
does at worst, when the whole draft is accepted), then drops the added KV cells so that every step sees the
same cache. The first step after a change of shape is reported apart (llama.cpp then builds a new
graph instead of reusing the last one; drafts of varying length change the shape nearly every step).
The D draft tokens go to one sequence ("one": a single stream drafting) or are spread evenly
over all N ("spread"). Configurations run in interleaved rounds, so a busy machine slows them alike;
reported per (N, D): the median wall and process-CPU time of the step, and the cost of the D drafts in
"decode tokens": (T(N, D) - T(N, 0)) / (T(N, 0) / N), i.e. how many of the step's own decode tokens the
drafts cost (from wall time, and from CPU time, which a busy machine disturbs less). A draft pays when its expected accepted tokens exceed that cost (backends/draft_policy.py).

    PYTHONPATH=. python -m benchmarks.draft_step_cost [--sequences 1,2,4,8,16] [--drafts 0,1,2,4,8,16] \
        [--rounds 5] [--steps 8] [--placement one|spread|both] [--model padded-1b|PATH]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from pathlib import Path

import llama_cpp.llama_cpp as ll

from backends import llamacpp
from backends.base import BackendSettings
from serve.models.catalog import embedded_model_path

RESULTS = Path(__file__).parent / "results" / "draft_step_cost.json"


def _prefill(backend, num_sequences: int, num_prompt_tokens: int) -> None:
    """Give each sequence `num_prompt_tokens` cached tokens (and a pending token to decode)."""
    text = " ".join(f"word{i}" for i in range(num_prompt_tokens))
    tokens = backend.tokenize(text)[:num_prompt_tokens]
    for slot in backend._slots[:num_sequences]:  # one sequence a batch: the batch holds 2,048 tokens
        backend._batch.n_tokens = 0
        for token in tokens:
            backend._add_token(slot, token, wants_logits=False)
        slot.pending_token = tokens[-1]
        if ll.llama_decode(backend._ctx, backend._batch) != 0:
            raise RuntimeError("prefill failed")


def _draft_counts(num_sequences: int, num_drafts: int, spread: bool) -> list[int]:
    if not spread:
        return [num_drafts] + [0] * (num_sequences - 1)
    return [num_drafts // num_sequences + (i < num_drafts % num_sequences) for i in range(num_sequences)]


def time_step(backend, sampler, num_sequences: int, counts: list[int]) -> tuple[float, float]:
    """One decode step (each sequence's token and its drafts), sampled at every position; then undone."""
    slots = backend._slots[:num_sequences]
    start, cpu_start = time.perf_counter(), time.process_time()
    backend._batch.n_tokens = 0
    for slot, count in zip(slots, counts):
        backend._add_token(slot, slot.pending_token, wants_logits=True)
        for _ in range(count):
            backend._add_token(slot, slot.pending_token, wants_logits=True)
    if ll.llama_decode(backend._ctx, backend._batch) != 0:
        raise RuntimeError("decode failed")
    for index in range(backend._batch.n_tokens):
        ll.llama_sampler_sample(sampler, backend._ctx, index)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    for slot, count in zip(slots, counts):
        backend._drop_cached_after(slot, len(slot.cached_tokens) - 1 - count)
    return seconds * 1000, cpu * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", default="1,2,4,8,16")
    parser.add_argument("--drafts", default="0,1,2,4,8,16", help="draft tokens per step, in total")
    parser.add_argument("--placement", choices=("one", "spread", "both"), default="both",
                        help="drafts on one sequence, spread over all, or both")
    parser.add_argument("--prompt-tokens", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per configuration and round")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--model", default=None, help="the GGUF (default: the shipped SmolLM2-135M Q4_1); "
                        "padded-1b: benchmarks/padded_target.py's ~1B F16 target")
    args = parser.parse_args()
    sequence_counts = [int(x) for x in args.sequences.split(",")]
    draft_counts = [int(x) for x in args.drafts.split(",")]
    model_path = embedded_model_path() if args.model is None else Path(args.model)
    if args.model == "padded-1b":
        from benchmarks.padded_target import padded_target

        model_path = padded_target("f16")
    backend = llamacpp.LlamaCppBackend(BackendSettings(
        model_path=model_path, context_length=1024, num_parallel=max(sequence_counts),
        num_threads=args.threads, max_batch_tokens=2048))
    sampler = ll.llama_sampler_init_greedy()
    times: dict[tuple, list[float]] = defaultdict(list)
    cpu_times: dict[tuple, list[float]] = defaultdict(list)
    first_times: dict[tuple, list[float]] = defaultdict(list)
    placements = {"one": (False,), "spread": (True,), "both": (False, True)}[args.placement]
    configs = [(n, d, spread) for n in sequence_counts for d in draft_counts
               for spread in (placements if n > 1 and d > 0 else (False,))]
    try:
        for round_index in range(args.rounds + 1):  # round 0 warms up (graphs, caches, page faults)
            for n in sequence_counts:
                llamacpp.ll.llama_memory_clear(backend._memory, True)
                for slot in backend._slots:
                    slot.cached_tokens = []
                _prefill(backend, n, args.prompt_tokens)
                for _, d, spread in [c for c in configs if c[0] == n][round_index % 3:] + \
                        [c for c in configs if c[0] == n][:round_index % 3]:
                    for step in range(args.steps + 1 if round_index else 1):  # warm-up: build each graph once
                        wall, cpu = time_step(backend, sampler, n, _draft_counts(n, d, spread))
                        if round_index and step == 0:  # the shape changed: llama.cpp builds a new graph
                            first_times[(n, d, spread)].append(wall)
                        elif round_index:
                            times[(n, d, spread)].append(wall)
                            cpu_times[(n, d, spread)].append(cpu)
            print(f"round {round_index} done", flush=True)
    finally:
        ll.llama_sampler_free(sampler)
        backend.close()
    rows = []
    print(f"{'N':>3} {'D':>3} {'drafts':>7} {'wall ms':>8} {'CPU ms':>8} {'cost (decode tokens)':>21} {'CPU cost':>9} "
          f"{'new-shape step ms':>18}")
    for n, d, spread in configs:
        wall, cpu = statistics.median(times[(n, d, spread)]), statistics.median(cpu_times[(n, d, spread)])
        base = statistics.median(times[(n, 0, False)])
        cost = (wall - base) / (base / n)
        cpu_base = statistics.median(cpu_times[(n, 0, False)])
        cpu_cost = (cpu - cpu_base) / (cpu_base / n)
        first = statistics.median(first_times[(n, d, spread)])
        rows.append({"sequences": n, "drafts": d, "spread": spread, "wall_ms": wall, "cpu_ms": cpu,
                     "cost_in_decode_tokens": cost, "cpu_cost_in_decode_tokens": cpu_cost,
                     "new_shape_wall_ms": first})
        print(f"{n:>3} {d:>3} {'spread' if spread else 'one':>7} {wall:8.2f} {cpu:8.2f} {cost:21.2f} {cpu_cost:9.2f} {first:18.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
