"""The engine thread's own work per decode step of the llama.cpp backend, in-process (no HTTP): everything
but llama_decode, i.e. the scheduler, batch building, drafting decisions, sampling, detokenization and
bookkeeping that run between two llama_decode calls while the model's threads wait.

N sequences (greedy, end-of-generation banned through logit_bias as in benchmarks/run.py) decode together
for --steps steps through the real Scheduler and LlamaCppBackend; reported: the engine thread's CPU time
per step outside llama_decode (time.thread_time, which a busy machine disturbs far less than wall time),
the wall time per step, and that overhead as a share of the step. --sampled uses temperature 0.8 instead
(the native sampler chain); --profile adds cProfile's top functions.

    PYTHONPATH=. python -m benchmarks.step_overhead [--sequences 8] [--steps 64] [--threads 2] \
        [--speculative ngram|off] [--sampled] [--profile]
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import llama_cpp.llama_cpp as ll

from backends import llamacpp
from backends.base import BackendSettings
from serve.models.catalog import embedded_model_path
from serve.runtime.scheduler import Scheduler
from serve.sequence import Request, SamplingParams, Sequence

NO_EOS = {0: -100.0, 1: -100.0, 2: -100.0}  # SmolLM2's end tokens, as benchmarks/prompts.py bans them


class _DecodeClock:
    """Wraps llama_decode to add up the engine thread's CPU time inside it."""

    def __init__(self) -> None:
        self.inside = 0.0
        self._decode = ll.llama_decode

    def __call__(self, ctx, batch):
        started = time.thread_time()
        try:
            return self._decode(ctx, batch)
        finally:
            self.inside += time.thread_time() - started


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequences", type=int, default=8)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--speculative", default="ngram", choices=("ngram", "off"))
    parser.add_argument("--sampled", action="store_true", help="temperature 0.8 instead of greedy")
    parser.add_argument("--profile", action="store_true")
    return parser.parse_args()


def main() -> None:
    args = _parse_args()
    clock = _DecodeClock()
    llamacpp.ll.llama_decode = clock  # the backend calls it through the module
    settings = BackendSettings(model_path=embedded_model_path(), context_length=4096, num_parallel=args.sequences,
                               num_threads=args.threads, max_batch_tokens=2048, speculative=args.speculative)
    backend = llamacpp.LlamaCppBackend(settings)
    caps = backend.capabilities
    scheduler = Scheduler(num_parallel=args.sequences, max_waiting=args.sequences, max_batch_tokens=caps.max_batch_tokens,
                          max_prefill_tokens_while_decoding=caps.max_prefill_tokens_while_decoding,
                          admit=backend.admit, max_draft_tokens_per_step=caps.max_draft_tokens_per_step)
    params = SamplingParams(max_tokens=args.steps + 16, temperature=0.8 if args.sampled else 0.0, logit_bias=NO_EOS)
    for i in range(args.sequences):
        prompt = backend.tokenize(f"Story {i}: the lighthouse keeper climbed the stairs, and the sea below was")
        scheduler.add(Sequence(Request(f"r{i}", "m", "", prompt, params), deliver=lambda output: None))

    def step() -> int:
        batch = scheduler.schedule()
        scheduler.postprocess(batch, backend.step(batch))
        return len(batch.decode)

    while step() < args.sequences:  # prompts, until every sequence decodes
        pass
    profile = cProfile.Profile() if args.profile else None
    clock.inside, cpu_started, wall_started = 0.0, time.thread_time(), time.perf_counter()
    if profile:
        profile.enable()
    for _ in range(args.steps):
        step()
    if profile:
        profile.disable()
    overhead = (time.thread_time() - cpu_started - clock.inside) / args.steps
    wall = (time.perf_counter() - wall_started) / args.steps
    print(f"{args.sequences} sequences, {'sampled' if args.sampled else 'greedy'}, speculative {args.speculative}: "
          f"engine thread outside llama_decode {overhead * 1e6:.0f} us CPU per step; step {wall * 1000:.1f} ms wall "
          f"({100 * overhead / wall:.1f}% of it)")
    if profile:
        pstats.Stats(profile).sort_stats("tottime").print_stats(15)
    backend.close()


if __name__ == "__main__":
    main()
