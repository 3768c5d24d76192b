"""KV cache types in-process: greedy outputs against f16, decode-step time, KV memory.

Every prompt of a fixed set runs greedily (end-of-generation banned) in one LlamaCppBackend per KV type,
all prompts decoding together (or `--sequences N` of them); the outputs are compared token by token with
the first type's (a token counts as identical until the two outputs part: after that they follow different
texts). Backends are built in turn and the timed rounds interleave the types, so a busy machine slows them
alike; besides wall time, the process CPU time of a step is reported (with `--threads 1` it is the step's
work, whatever else runs on the machine).

Flash attention: llama.cpp reads a quantized V cache only in flash attention, and its "auto" setting (what
f16 runs with) turns flash attention on for the CPU, so f16, q8_0 and q4_0 all run with it on: the
comparison is like for like. `f16-fa-off` (f16 with flash attention off, a benchmark-only variant) shows
how far plain float arithmetic differences move this model's greedy outputs.

    PYTHONPATH=. python -m benchmarks.kv_type_check [--types f16,q8_0,q4_0,f16-fa-off] [--max-tokens 64] [--rounds 3]
    PYTHONPATH=. python -m benchmarks.kv_type_check --sequences 1 --threads 1    # one stream's decode step
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import llama_cpp.llama_cpp as ll

from backends.base import BackendSettings
from backends.llamacpp import LlamaCppBackend
from serve.models.catalog import embedded_model_path
from serve.placement.footprint import KV_TYPE_BITS
from serve.sequence import Batch, PrefillChunk, Request, SamplingParams, Sequence

PROMPTS = (
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nName three primary colors.<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nTranslate to French: good morning.<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nWrite a haiku about the sea.<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nExplain photosynthesis to a child.<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nGive me a recipe for pancakes.<|im_end|>\n<|im_start|>assistant\n",
    "Once upon a time, in a small village by the sea,",
    "The three laws of motion are",
    "def fibonacci(n):",
    "The history of the Roman Empire begins",
    "Dear hiring manager, I am writing to apply for",
    "In 1969, the first humans landed on",
)


FLASH_ATTENTION_OFF = "-fa-off"  # a type suffix: that KV type with flash attention off (f16 only)


@contextlib.contextmanager
def flash_attention_off():
    """Contexts created inside get flash attention off (the backend has no such setting: it is a reference
    for this benchmark only, wrapping llama.cpp's default context parameters)."""
    default_params = ll.llama_context_default_params

    def params_without_flash_attention():
        params = default_params()
        params.flash_attn_type = ll.LLAMA_FLASH_ATTN_TYPE_DISABLED
        return params

    ll.llama_context_default_params = params_without_flash_attention
    try:
        yield
    finally:
        ll.llama_context_default_params = default_params


def make_backend(kv: str, args: argparse.Namespace) -> LlamaCppBackend:
    kv_type = kv.removesuffix(FLASH_ATTENTION_OFF)
    settings = BackendSettings(model_path=embedded_model_path(), context_length=args.ctx,
                               num_parallel=args.sequences, num_threads=args.threads, max_batch_tokens=2048,
                               kv_cache_dtype=kv_type)
    with flash_attention_off() if kv.endswith(FLASH_ATTENTION_OFF) else contextlib.nullcontext():
        return LlamaCppBackend(settings)


def generate(backend: LlamaCppBackend, max_tokens: int, tag: str,
             num_sequences: int) -> tuple[list[list[int]], list[float], list[float]]:
    """The first `num_sequences` PROMPTS together, greedy; their output token ids, and the wall and process
    CPU time of every full decode step."""
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    sequences = []
    for index, text in enumerate(PROMPTS[:num_sequences]):
        request = Request(f"{tag}-{index}", "m", text, backend.tokenize(text), params)
        sequences.append(Sequence(request, deliver=lambda output: None))
    chunks = []
    for sequence in sequences:
        start = backend.admit(sequence)
        chunks.append(PrefillChunk(sequence, start, sequence.num_prompt_tokens))
    outputs = backend.step(Batch(prefill=chunks))
    step_seconds, step_cpu_seconds = [], []
    while all(output.finish_reason is None for output in outputs):
        start, start_cpu = time.perf_counter(), time.process_time()
        outputs = backend.step(Batch(decode=sequences))
        step_seconds.append(time.perf_counter() - start)
        step_cpu_seconds.append(time.process_time() - start_cpu)
    tokens = [list(backend._slots[i].cached_tokens[len(backend.tokenize(PROMPTS[i])):])
              for i in range(num_sequences)]
    for slot in backend._slots:  # the next round computes its prompts again
        slot.cached_tokens = []
    return tokens, step_seconds, step_cpu_seconds


def teacher_forced_agreement(backend: LlamaCppBackend, reference: list[list[int]]) -> float:
    """Share of positions where this backend's most likely next token is the reference's, each position
    given the reference's own text before it (prompt + reference output, scored with prompt logprobs):
    per-token agreement, without the cascade that follows a first difference in free-running outputs."""
    params = SamplingParams(max_tokens=1, temperature=0, num_prompt_logprobs=1)
    chunks, starts = [], []
    for index, (text, output) in enumerate(zip(PROMPTS, reference)):  # as many prompts as the reference has
        prompt = backend.tokenize(text)
        sequence = Sequence(Request(f"forced-{index}", "m", text, prompt + output, params), deliver=lambda o: None)
        backend.admit(sequence)
        chunks.append(PrefillChunk(sequence, 0, sequence.num_prompt_tokens))
        starts.append(len(prompt))
    outputs = {o.request_id: o for o in backend.step(Batch(prefill=chunks))}
    num_same = num_all = 0
    for index, (chunk, start) in enumerate(zip(chunks, starts)):
        scored = outputs[f"forced-{index}"].prompt_logprobs
        tokens = chunk.sequence.request.prompt_token_ids
        for position in range(start, len(tokens)):
            num_same += scored[position].top[0][0] == tokens[position]
            num_all += 1
    for slot in backend._slots:
        slot.cached_tokens = []
    return num_same / num_all


def share_identical(reference: list[list[int]], other: list[list[int]]) -> tuple[float, int]:
    """Tokens equal until the outputs part, over all tokens; and how many outputs are identical."""
    same = sum(next((i for i, (a, b) in enumerate(zip(r, o)) if a != b), min(len(r), len(o)))
               for r, o in zip(reference, other))
    return same / sum(len(r) for r in reference), sum(r == o for r, o in zip(reference, other))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--types", default="f16,q8_0,q4_0,f16-fa-off",
                        help="the first is the reference; a -fa-off suffix: flash attention off")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sequences", type=int, default=len(PROMPTS), help=f"decoding together, 1..{len(PROMPTS)}")
    parser.add_argument("--ctx", type=int, default=2048)
    args = parser.parse_args()
    args.sequences = max(1, min(args.sequences, len(PROMPTS)))
    kv_types = args.types.split(",")
    backends = {kv: make_backend(kv, args) for kv in kv_types}
    outputs, steps, cpu_steps = {}, {kv: [] for kv in kv_types}, {kv: [] for kv in kv_types}
    for round_index in range(args.rounds):
        for kv in kv_types[round_index % len(kv_types):] + kv_types[:round_index % len(kv_types)]:
            for slot in backends[kv]._slots:
                slot.cached_tokens = []
            tokens, seconds, cpu_seconds = generate(backends[kv], args.max_tokens, f"{kv}-{round_index}",
                                                    args.sequences)
            outputs.setdefault(kv, tokens)
            steps[kv].append(statistics.median(seconds) * 1000)
            cpu_steps[kv].append(statistics.median(cpu_seconds) * 1000)
    reference = kv_types[0]
    print(f"{args.sequences} prompts decoding together, {args.max_tokens} greedy tokens each, {args.threads} threads, "
          f"median of {args.rounds} interleaved rounds; agreement against {reference}")
    print(f"{'KV type':12}{'bits':>6}{'flash attn':>11}{'step ms':>9}{'tok/s':>8}{'vs ref':>8}{'CPU ms':>8}"
          f"{'  round medians (ms)':22}{'identical':>10}{'outputs':>9}{'forced top-1':>14}")
    ref_ms = statistics.median(steps[reference])
    for kv in kv_types:
        share, num_same = share_identical(outputs[reference], outputs[kv])
        forced = teacher_forced_agreement(backends[kv], outputs[reference])
        step_ms = statistics.median(steps[kv])
        rounds = ", ".join(f"{ms:.1f}" for ms in steps[kv])
        bits = KV_TYPE_BITS[kv.removesuffix(FLASH_ATTENTION_OFF)]
        print(f"{kv:12}{bits:>6g}{'off' if kv.endswith(FLASH_ATTENTION_OFF) else 'on':>11}{step_ms:>9.1f}"
              f"{args.sequences * 1000 / step_ms:>8.1f}{ref_ms / step_ms:>7.2f}x{statistics.median(cpu_steps[kv]):>8.1f}"
              f"  {rounds:20}{share:>10.1%}{num_same:>5}/{args.sequences}{forced:>14.1%}")
    for backend in backends.values():
        backend.close()


if __name__ == "__main__":
    main()
