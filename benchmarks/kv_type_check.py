"""KV cache types in-process: greedy outputs against f16, decode-step time, KV memory.

Every prompt of a fixed set runs greedily (end-of-generation banned) in one LlamaCppBackend per KV type,
all prompts decoding together; the outputs are compared token by token with f16's (a token counts as
identical until the two outputs part: after that they follow different texts). Backends are built in
turn and the timed rounds interleave the types, so a busy machine slows them alike.

    PYTHONPATH=. python -m benchmarks.kv_type_check [--types f16,q8_0,q4_0] [--max-tokens 64] [--rounds 3]
"""
from __future__ import annotations

import argparse
import statistics
import time

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


def generate(backend: LlamaCppBackend, max_tokens: int, tag: str) -> tuple[list[list[int]], list[float]]:
    """All PROMPTS together, greedy; their output token ids and the time of every full decode step."""
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    sequences = []
    for index, text in enumerate(PROMPTS):
        request = Request(f"{tag}-{index}", "m", text, backend.tokenize(text), params)
        sequences.append(Sequence(request, deliver=lambda output: None))
    chunks = []
    for sequence in sequences:
        start = backend.admit(sequence)
        chunks.append(PrefillChunk(sequence, start, sequence.num_prompt_tokens))
    outputs = backend.step(Batch(prefill=chunks))
    step_seconds = []
    while all(output.finish_reason is None for output in outputs):
        start = time.perf_counter()
        outputs = backend.step(Batch(decode=sequences))
        step_seconds.append(time.perf_counter() - start)
    tokens = [list(backend._slots[i].cached_tokens[len(backend.tokenize(PROMPTS[i])):]) for i in range(len(PROMPTS))]
    for slot in backend._slots:  # the next round computes its prompts again
        slot.cached_tokens = []
    return tokens, step_seconds


def teacher_forced_agreement(backend: LlamaCppBackend, reference: list[list[int]]) -> float:
    """Share of positions where this backend's most likely next token is the reference's, each position
    given the reference's own text before it (prompt + reference output, scored with prompt logprobs):
    per-token agreement, without the cascade that follows a first difference in free-running outputs."""
    params = SamplingParams(max_tokens=1, temperature=0, num_prompt_logprobs=1)
    chunks, starts = [], []
    for index, (text, output) in enumerate(zip(PROMPTS, reference)):
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
    parser.add_argument("--types", default="f16,q8_0,q4_0")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=2048)
    args = parser.parse_args()
    kv_types = args.types.split(",")
    backends = {kv: LlamaCppBackend(BackendSettings(
        model_path=embedded_model_path(), context_length=args.ctx, num_parallel=len(PROMPTS),
        num_threads=args.threads, max_batch_tokens=2048, kv_cache_dtype=kv)) for kv in kv_types}
    outputs, steps = {}, {kv: [] for kv in kv_types}
    for round_index in range(args.rounds):
        for kv in kv_types[round_index % len(kv_types):] + kv_types[:round_index % len(kv_types)]:
            for slot in backends[kv]._slots:
                slot.cached_tokens = []
            tokens, seconds = generate(backends[kv], args.max_tokens, f"{kv}-{round_index}")
            outputs.setdefault(kv, tokens)
            steps[kv].append(statistics.median(seconds) * 1000)
    print(f"{len(PROMPTS)} prompts decoding together, {args.max_tokens} greedy tokens each, {args.threads} threads")
    print(f"{'KV type':8}{'bits':>6}{'decode step ms (round medians)':>40}{'identical tokens':>18}{'outputs':>9}"
          f"{'top-1 agreement (forced)':>26}")
    for kv in kv_types:
        share, num_same = share_identical(outputs[kv_types[0]], outputs[kv])
        forced = teacher_forced_agreement(backends[kv], outputs[kv_types[0]])
        rounds = ", ".join(f"{ms:.1f}" for ms in steps[kv])
        print(f"{kv:8}{KV_TYPE_BITS[kv]:>6g}{statistics.median(steps[kv]):>14.1f} ({rounds}){share:>17.1%}"
              f"{num_same:>5}/{len(PROMPTS)}{forced:>25.1%}")
    for backend in backends.values():
        backend.close()


if __name__ == "__main__":
    main()
