"""Decode-step times of the llama.cpp backend under slot-choice policies, in-process (no HTTP).

A closed loop of N clients sends repeated short chat prompts (a handful of them, as classification jobs,
evals and retries do) to one LlamaCppBackend driven by the real Scheduler; every request generates
--max-tokens tokens on average (+-50%, so
requests end and start at different steps). Policies, run in interleaved rounds on the same backend (KV cleared between
rounds), so a busy machine slows them alike:

  min64     the old rule: reuse a prefix only from 64 tokens; otherwise the consecutive, least recently
            used slot, cleared whole
  scatter   the free slot with the longest cached prefix, whatever its id, cut partially (what the
            64-token rule was a workaround for)
  adjacent  a consecutive slot, cut partially to its own cached prefix (partial cuts, no scattering)
  new       backends/slot_choice.py: a consecutive slot, and the longest cached prefix of any slot copied
            into it (the default)

For each policy: the median time of full decode steps (every running sequence decodes one token, no
prompt in the step), the runs of consecutive sequence ids in those steps (one micro-batch each), prompt
tokens computed vs reused, and with --kv-debug the KV cells llama.cpp attends to (its used_max_p1 per
stream, from LLAMA_KV_CACHE_DEBUG's find_slot log; n_kv is that padded to 256).

    PYTHONPATH=. python -m benchmarks.prefix_cut_steps [--clients 8] [--slots 16] [--rounds 4] \
        [--requests 48] [--policies min64,scatter,adjacent,new] [--kv-debug]
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import re
import statistics
import time
from collections import defaultdict
from pathlib import Path

from backends import llamacpp, slot_choice
from backends.base import BackendSettings
from backends.slot_choice import SlotChoice, SlotState, num_runs, reusable_prefix
from serve.models.catalog import embedded_model_path
from serve.runtime.scheduler import Scheduler
from serve.sequence import Batch, Request, SamplingParams, Sequence

QUESTIONS = (
    "Classify the sentiment of this review as positive or negative: the soup was cold.",
    "Is this email spam? 'You won a free cruise, click here now.'",
    "Translate to French: good morning, how are you?",
    "What is the capital of Italy?",
    "Summarize in one line: the meeting moved to Thursday at noon.",
    "Name three primary colors.",
)


def _min64(slots: list[SlotState], prompt: list[int], **_) -> SlotChoice:
    free = [s for s in slots if not s.is_busy]
    best = max(free, key=lambda s: reusable_prefix(s, prompt))
    if reusable_prefix(best, prompt) >= 64:
        return SlotChoice(best.seq_id, reusable_prefix(best, prompt))
    busy = [s.seq_id for s in slots if s.is_busy]
    return SlotChoice(min(free, key=lambda s: (num_runs([*busy, s.seq_id]), s.last_used)).seq_id, 0)


def _scatter(slots: list[SlotState], prompt: list[int], **_) -> SlotChoice:
    free = [s for s in slots if not s.is_busy]
    best = max(free, key=lambda s: (reusable_prefix(s, prompt), -s.last_used))
    return SlotChoice(best.seq_id, reusable_prefix(best, prompt))


def _adjacent(slots: list[SlotState], prompt: list[int], **_) -> SlotChoice:
    return slot_choice.choose_slot(slots, prompt, can_copy=False)


POLICIES = {"min64": _min64, "scatter": _scatter, "adjacent": _adjacent, "new": slot_choice.choose_slot}
_FIND_SLOT = re.compile(rb"find_slot: stream\[(\d+)\], n = +(\d+)")


class KvLog:
    """llama.cpp's log lines of find_slot (LLAMA_KV_CACHE_DEBUG=1): the used range of each stream."""

    def __init__(self):
        self.used_ranges: list[int] = []
        self._callback = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)(self._on_log)
        llamacpp.ll.llama_log_set(self._callback, None)

    def _on_log(self, level, text, user_data) -> None:
        match = _FIND_SLOT.search(text or b"")
        if match:
            self.used_ranges.append(int(match.group(2)))


def _prompts(backend) -> list[list[int]]:
    return [backend.tokenize(backend.render_chat([{"role": "user", "content": q}])) for q in QUESTIONS]


def _clear(backend) -> None:
    llamacpp.ll.llama_memory_clear(backend._memory, True)
    for slot in backend._slots:
        slot.cached_tokens = []


def run_round(backend, policy: str, args, rng: random.Random, kv_log: KvLog | None) -> dict:
    llamacpp.choose_slot = POLICIES[policy]
    _clear(backend)
    caps = backend.capabilities
    scheduler = Scheduler(num_parallel=caps.num_parallel, max_waiting=1000, max_batch_tokens=caps.max_batch_tokens,
                          max_prefill_tokens_while_decoding=caps.max_prefill_tokens_while_decoding,
                          admit=backend.admit)
    prompts = _prompts(backend)
    stats = defaultdict(list)
    num_sent = num_done = 0
    done_ids: set[str] = set()

    def send() -> None:
        nonlocal num_sent
        prompt = rng.choice(prompts)
        # Lengths vary (max_tokens +-50%), so requests end and start at different steps, as clients do.
        num_tokens = rng.randint(args.max_tokens // 2, args.max_tokens * 3 // 2)
        params = SamplingParams(max_tokens=num_tokens, temperature=0, ignore_eos=True)
        request = Request(f"{policy}-{num_sent}", "m", "", prompt, params)
        scheduler.add(Sequence(request, deliver=lambda out: out.finish_reason and done_ids.add(out.request_id)))
        num_sent += 1

    for _ in range(args.clients):
        send()
    while num_done < args.requests:
        batch = scheduler.schedule()
        if batch.is_empty:
            raise RuntimeError(f"{policy}: no work left after {num_done} requests (a request failed to start?)")
        runs = num_runs([backend._slot_of[s.request_id].seq_id for s in batch.decode])
        if kv_log:
            kv_log.used_ranges.clear()
        start, cpu_start = time.perf_counter(), time.process_time()
        outputs = backend.step(batch)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        scheduler.postprocess(batch, outputs)
        if not batch.prefill and len(batch.decode) == args.clients:
            stats["decode_ms"].append(seconds * 1000)
            stats["decode_cpu_ms"].append(cpu_seconds * 1000)
            stats["runs"].append(runs)
            if kv_log:
                stats["used_range"].append(max(kv_log.used_ranges, default=0))
        stats["prefill_tokens"].append(sum(chunk.num_tokens for chunk in batch.prefill))
        for output in outputs:
            if output.finish_reason is not None:
                num_done += 1
                if num_sent < args.requests + args.clients:
                    send()
    backend.step(Batch(released=list(scheduler.running)))  # free the slots of what still runs
    return {"decode_ms": stats["decode_ms"], "decode_cpu_ms": stats["decode_cpu_ms"], "runs": stats["runs"], "used_range": stats["used_range"],
            "prompt_tokens_computed": sum(stats["prefill_tokens"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--ctx", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--requests", type=int, default=48, help="requests per round")
    parser.add_argument("--rounds", type=int, default=4, help="rounds of every policy, interleaved")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--kv-debug", action="store_true", help="record the attended KV range (adds logging)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "prefix_cut_steps.json")
    args = parser.parse_args()
    if args.kv_debug:
        os.environ["LLAMA_KV_CACHE_DEBUG"] = "1"
    backend = llamacpp.LlamaCppBackend(BackendSettings(
        model_path=embedded_model_path(), context_length=args.ctx, num_parallel=args.slots,
        num_threads=args.threads, max_batch_tokens=2048))
    kv_log = KvLog() if args.kv_debug else None
    policies = args.policies.split(",")
    rng = random.Random(0)
    run_round(backend, policies[0], args, rng, kv_log)  # warm-up: graphs, caches, page faults
    rounds: dict[str, list[dict]] = defaultdict(list)
    for index in range(args.rounds):
        for policy in policies[index % len(policies):] + policies[:index % len(policies)]:
            rounds[policy].append(run_round(backend, policy, args, random.Random(index), kv_log))
            last = rounds[policy][-1]
            print(f"round {index} {policy:9} median decode step {statistics.median(last['decode_ms']):6.1f} ms, "
                  f"CPU {statistics.median(last['decode_cpu_ms']):6.1f} ms, runs {statistics.mean(last['runs']):.2f}",
                  flush=True)
    summary = {}
    print(f"\n{'policy':9} {'decode step ms: wall (round medians min-max)':>46} {'CPU':>24} {'runs':>5} "
          f"{'prompt tok computed':>20}" + ("  attended cells (median, max)" if args.kv_debug else ""))
    for policy in policies:
        medians = [statistics.median(r["decode_ms"]) for r in rounds[policy]]
        cpu = [statistics.median(r["decode_cpu_ms"]) for r in rounds[policy]]
        runs = [x for r in rounds[policy] for x in r["runs"]]
        used = [x for r in rounds[policy] for x in r["used_range"]]
        computed = statistics.median(r["prompt_tokens_computed"] for r in rounds[policy])
        summary[policy] = {"decode_ms_round_medians": medians, "decode_ms_median": statistics.median(medians),
                           "decode_cpu_ms_round_medians": cpu, "decode_cpu_ms_median": statistics.median(cpu),
                           "runs_mean": statistics.mean(runs), "prompt_tokens_computed_per_round": computed,
                           "attended_cells_median": statistics.median(used) if used else None,
                           "attended_cells_max": max(used) if used else None}
        line = (f"{policy:9} {statistics.median(medians):>31.1f} ({min(medians):.1f}-{max(medians):.1f}) "
                f"{statistics.median(cpu):>10.1f} ({min(cpu):.1f}-{max(cpu):.1f}) "
                f"{statistics.mean(runs):>5.2f} {computed:>20.0f}")
        if used:
            line += f"  {statistics.median(used):.0f}, {max(used)}"
        print(line)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, "summary": summary}, indent=2) + "\n")
    backend.close()


if __name__ == "__main__":
    main()
