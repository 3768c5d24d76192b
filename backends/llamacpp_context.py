"""Loading a llama.cpp model and creating its multi-sequence context: shared by the target model
(backends/llamacpp.py) and a draft model (backends/draft_model.py), which must lay out their sequences
alike (one KV stream per sequence) so that each request keeps the same sequence id in both."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import llama_cpp.llama_cpp as ll

from serve.errors import ConfigError, ModelLoadError

# llama_decode splits a step into micro-batches of this many tokens: llama-server's default, which bounds
# the compute buffers while a step may carry up to max_batch_tokens.
MICRO_BATCH_TOKENS = 512


@dataclass(frozen=True)
class ContextShape:
    """How a context is laid out: `num_parallel` sequences of `context_length` cells each."""

    context_length: int  # per sequence
    num_parallel: int
    batch_capacity: int  # tokens one llama_decode may carry
    kv_type: str = "f16"
    num_threads: int = 0  # 0: llama.cpp's default


def kv_ggml_type(kv_type: str) -> int:
    types = {"auto": ll.GGML_TYPE_F16, "f16": ll.GGML_TYPE_F16, "q8_0": ll.GGML_TYPE_Q8_0, "q4_0": ll.GGML_TYPE_Q4_0}
    if kv_type not in types:
        raise ConfigError(f"llama.cpp has no {kv_type} KV cache; choose one of f16, q8_0, q4_0")
    return types[kv_type]


def load_model(path: Path, n_gpu_layers: int, what: str = "model"):
    params = ll.llama_model_default_params()
    params.n_gpu_layers = n_gpu_layers
    model = ll.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        raise ModelLoadError(f"llama.cpp could not load the {what} {path}: not a valid GGUF model file?")
    return model


def trained_context(model, asked: int) -> int:
    """`asked` tokens per sequence, at most the model's training context."""
    n_ctx_train = ll.llama_model_n_ctx_train(model)
    return min(asked, n_ctx_train) if n_ctx_train > 0 else asked


def create_context(model, shape: ContextShape):
    params = ll.llama_context_default_params()
    params.n_ctx = shape.context_length * shape.num_parallel
    params.n_batch = shape.batch_capacity
    params.n_ubatch = min(shape.batch_capacity, MICRO_BATCH_TOKENS)
    params.n_seq_max = shape.num_parallel
    params.kv_unified = False  # one KV stream per sequence: each attends only to its own cells
    params.type_k = params.type_v = kv_ggml_type(shape.kv_type)
    if params.type_v != ll.GGML_TYPE_F16:  # llama.cpp reads a quantized V cache only in flash attention
        params.flash_attn_type = ll.LLAMA_FLASH_ATTN_TYPE_ENABLED
    if shape.num_threads > 0:
        params.n_threads = params.n_threads_batch = shape.num_threads
    ctx = ll.llama_init_from_model(model, params)
    if not ctx:
        raise ModelLoadError(f"llama.cpp could not create a context of {params.n_ctx} tokens "
                             f"({shape.num_parallel} x {shape.context_length}); lower --ctx or --parallel")
    return ctx


def free_native(batch, ctx, model) -> None:
    """Free what llama.cpp allocated for a model's use, each part that exists (None or NULL: skipped), in
    the order it needs: the batch, then the context, then the model the context was made from."""
    if batch is not None:
        ll.llama_batch_free(batch)
    if ctx:
        ll.llama_free(ctx)
    if model:
        ll.llama_model_free(model)
