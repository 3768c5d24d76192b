"""What packing pooling inputs into one llama_decode costs: the embeddings benchmark's inputs (32 rerank pairs on
the tests' BERT reranker, 32 sentences on SmolLM2 with mean pooling) decoded through quantserve's pooler with
decodes of at most 512 tokens (what llama-server packs with -b 512 -ub 512) and of at most 256 (quantserve's
PACK_TOKENS), interleaved, one thread, CPU time of the decoding thread (robust to other load, unlike wall time).

    python -m benchmarks.pooling_pack_check                  # both models, 5 rounds
    python -m benchmarks.pooling_pack_check --rounds 9 --task rerank
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

from backends.base import BackendSettings
from backends.llamacpp_embed import LlamaCppPooler
from backends.llamacpp_pool_batch import PACK_TOKENS, pack
from benchmarks.embeddings import _embedded_model, sentences

BUDGETS = (512, PACK_TOKENS)


def _inputs(task: str, threads: int) -> tuple[LlamaCppPooler, list[list[int]]]:
    texts = sentences(97)  # the embeddings benchmark's texts: query texts[0], documents texts[1:33]
    if task == "rerank":
        from tests.fixtures_reranker import reranker_gguf

        pooler = LlamaCppPooler(BackendSettings(model_path=reranker_gguf(), context_length=512, num_parallel=1,
                                                num_threads=threads), None)
        return pooler, [pooler.pair_tokens(texts[0], document) for document in texts[1:33]]
    pooler = LlamaCppPooler(BackendSettings(model_path=_embedded_model(), context_length=512, num_parallel=1,
                                            num_threads=threads), "mean")
    return pooler, [pooler.tokenize(text) for text in texts[:32]]


def measure(task: str, rounds: int, threads: int) -> dict[int, float]:
    """Median CPU milliseconds (this thread) to decode all inputs, per packing budget."""
    pooler, inputs = _inputs(task, threads)
    try:
        plans = {budget: [inputs[g.start:g.stop] for g in pack(list(map(len, inputs)), 512, 64, budget)]
                 for budget in BUDGETS}
        times: dict[int, list[float]] = {budget: [] for budget in BUDGETS}
        for round_index in range(rounds):
            for budget in (BUDGETS if round_index % 2 == 0 else BUDGETS[::-1]):
                started = time.thread_time()
                for group in plans[budget]:
                    pooler._decode(group)  # noqa: SLF001 - the decode alone, on this thread
                times[budget].append(time.thread_time() - started)
        for budget in BUDGETS:
            print(f"{task}: {sum(map(len, inputs))} tokens in {len(plans[budget])} decodes of <= {budget} tokens: "
                  f"{statistics.median(times[budget]) * 1000:.1f} ms CPU (median of {rounds})", flush=True)
        return {budget: statistics.median(times[budget]) * 1000 for budget in BUDGETS}
    finally:
        pooler.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["rerank", "embeddings", "both"], default="both")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="1: CPU time is the decode's whole cost")
    args = parser.parse_args()
    for task in (["rerank", "embeddings"] if args.task == "both" else [args.task]):
        result = measure(task, args.rounds, args.threads)
        print(f"{task}: <= {PACK_TOKENS} / <= 512: {result[PACK_TOKENS] / result[512]:.3f}", file=sys.stderr)


if __name__ == "__main__":
    main()
