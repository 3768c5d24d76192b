"""Drive the vLLM backend as the engine does, without the server: load, one greedy answer, timings.

    python scripts/vllm_smoke.py HF_DIR

A quick check that vLLM loads a model and generates on this machine, apart from HTTP and the scheduler.
"""
from __future__ import annotations

import logging
import sys
import threading
import time
from pathlib import Path

from backends.base import BackendSettings
from backends.vllm import create_backend
from serve.sequence import Batch, PrefillChunk, Request, SamplingParams, Sequence

PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


def smoke(model_dir: Path) -> None:
    """Load, answer PROMPT greedily, print the answer and the decode speed."""
    started = time.perf_counter()
    backend = create_backend(BackendSettings(model_path=model_dir, context_length=2048, num_parallel=4,
                                             gpu_memory_utilization=0.2))
    print(f"loaded in {time.perf_counter() - started:.1f} s: {backend.capabilities}")
    ready = threading.Event()  # set by the backend whenever an output is ready, as the engine's wake-up
    backend.set_notify(ready.set)
    request = Request("smoke", "smoke", PROMPT, backend.tokenize(PROMPT), SamplingParams(temperature=0.0))
    sequence = Sequence(request, deliver=lambda output: None)
    batch = Batch(prefill=[PrefillChunk(sequence, 0, sequence.num_prompt_tokens)])
    started, text, num_tokens, finish = time.perf_counter(), "", 0, None
    while True:
        for output in backend.step(batch):
            text, num_tokens, finish = text + output.text, num_tokens + output.num_new_tokens, output.finish_reason
        if finish is not None:
            break
        batch = Batch(decode=[sequence])
        ready.wait()
        ready.clear()
    elapsed = time.perf_counter() - started
    print(f"{text!r}: {num_tokens} tokens, finish {finish.value}, {num_tokens / elapsed:.1f} tok/s")
    backend.close()


if __name__ == "__main__":  # vLLM starts processes: keep this guard
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/vllm_smoke.py HF_DIR")
    logging.basicConfig(level=logging.INFO)
    smoke(Path(sys.argv[1]))
