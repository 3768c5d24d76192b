"""A ~1B-parameter target for draft-model speculation that computes what SmolLM2-135M computes.

A draft model pays when the target's decode costs many times the draft's. At 135M parameters it does not:
an F16 SmolLM2-135M decode costs about what its Q4_1 draft's does (the step's fixed costs, not weight
reads, dominate), so drafting loses (0.56x). No bigger model of the same family can be downloaded here, so
the target is made bigger without changing its function: each layer's MLP is widened from 1,536 units to
PADDED_FFN_LENGTH with zero units (their gate and up rows are zero, so silu(0) * 0 = 0; their down
columns are zero), tests/fixtures_gguf.py's widened_f16_gguf. That is ~1.01B parameters, every one read
and multiplied per token as in a real 1B model (llama.cpp does not skip zeros), and greedy outputs equal
the unpadded F16's up to the order of float sums (checked here: `--check`). The shipped Q4_1 SmolLM2-135M
drafts for it with the acceptance it has for the unpadded F16.

    python -m benchmarks.padded_target                  # build (once), print path and parameter count
    python -m benchmarks.padded_target --check 8        # + greedy outputs of 8 prompts against the F16's
    python -m benchmarks.padded_target --quant q8_0     # the same through llama.cpp's Q8_0 quantizer
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

CACHE_DIR = Path(__file__).resolve().parent / ".cache" / "draft"
PADDED_FFN_LENGTH = 18432  # 12 x 1,536: 30 layers x 3 x 576 x 18,432 + attention and embeddings = 1.01B
CHATML = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"  # SmolLM2-Instruct's turn format
CHECK_PROMPTS = (
    "Write a story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a refrigerator keeps food cold, step by step.",
    "What are the advantages and disadvantages of living in a big city?",
    "Explain why the sky is blue to a ten-year-old.",
    "Tell me about the history of bicycles and how they changed over time.",
    "List five uses of a paperclip.",
    "Translate to French: The weather is nice today and we are going to the beach.",
    "What is the capital of Australia, and why is it not Sydney?",
)


def padded_target(quant: str = "f16") -> Path:
    """The padded target GGUF, "f16" or "q8_0" (the F16 through llama.cpp's quantizer), built once."""
    from tests.fixtures_gguf import widened_f16_gguf

    f16 = widened_f16_gguf(PADDED_FFN_LENGTH, CACHE_DIR)
    if quant == "f16":
        return f16
    from serve.models.quantize import quantize_file

    out = f16.with_name(f16.name.replace("-F16", f"-{quant.upper()}"))
    if not out.exists():
        quantize_file(f16, quant, out, progress=False)
    return out


def parameter_count(path: Path) -> int:
    import gguf

    return sum(int(tensor.n_elements) for tensor in gguf.GGUFReader(path).tensors)


def greedy_outputs(path: Path, prompts, max_tokens: int, threads: int) -> tuple[list[list[int]], float]:
    """Each prompt's greedy output tokens (chat template, end of generation allowed) and the decode tok/s."""
    from llama_cpp import Llama

    model = Llama(str(path), n_ctx=1024, n_threads=threads, n_batch=512, verbose=False)
    outputs, decode_s, decoded = [], 0.0, 0
    try:
        for prompt in prompts:
            tokens = model.tokenize(CHATML.format(prompt).encode(), add_bos=False, special=True)
            model.reset()
            generated, first_at = [], None
            for token in model.generate(tokens, temp=0.0):
                if first_at is None:
                    first_at = time.perf_counter()  # the prompt is in; the rest is decoding
                if model.token_eos() == token or len(generated) >= max_tokens:
                    break
                generated.append(token)
            decode_s += time.perf_counter() - first_at
            decoded += len(generated) - 1
            outputs.append(generated)
    finally:
        model.close()
    return outputs, decoded / decode_s if decode_s else 0.0


def compare(reference: list[list[int]], candidate: list[list[int]]) -> dict:
    """The share of identical outputs and of tokens before the first difference."""
    same_prefix = 0
    for ref, cand in zip(reference, candidate):
        run = next((i for i, (a, b) in enumerate(zip(ref, cand)) if a != b), min(len(ref), len(cand)))
        same_prefix += run
    return {"identical_outputs": sum(a == b for a, b in zip(reference, candidate)) / len(reference),
            "tokens_before_first_difference": same_prefix / max(sum(len(r) for r in reference), 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quant", default="f16", choices=("f16", "q8_0"))
    parser.add_argument("--check", type=int, default=0, help="compare greedy outputs of this many prompts")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    path = padded_target(args.quant)
    print(f"{path} ({parameter_count(path) / 1e9:.2f}B parameters, {path.stat().st_size / 1e9:.2f} GB)")
    if args.check:
        from tests.fixtures_gguf import f16_gguf

        prompts = [CHECK_PROMPTS[i % len(CHECK_PROMPTS)] for i in range(args.check)]
        reference, reference_speed = greedy_outputs(f16_gguf(), prompts, args.max_tokens, args.threads)
        padded, padded_speed = greedy_outputs(path, prompts, args.max_tokens, args.threads)
        result = compare(reference, padded)
        print(f"greedy, {len(prompts)} prompts, up to {args.max_tokens} tokens: "
              f"{result['identical_outputs']:.0%} of outputs identical to the unpadded F16's, "
              f"{result['tokens_before_first_difference']:.0%} of tokens before a first difference; "
              f"decode {reference_speed:.1f} tok/s unpadded, {padded_speed:.1f} tok/s padded")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
