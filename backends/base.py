"""The Backend protocol: what an inference engine must offer quantserve.

The engine thread drives a backend with one call per step:

    outputs = backend.step(batch)

`batch.prefill` holds prompt chunks to put into the KV cache, `batch.decode` the running sequences that
need one more token (or several, when the backend speculates within `batch.num_draft_tokens`),
`batch.released` aborted sequences whose resources must be freed. The scheduler fills
each batch within the budget the backend states in its Capabilities. A backend that batches internally
(vLLM) states room for every prompt whole, treats a sequence's prefill chunk as "start generating", returns
at once whatever its own scheduler produced since the last step, and calls the engine's `notify` when more
is ready, so the engine sleeps between its outputs instead of polling.

A model that embeds or reranks also has a Pooler (`load_pooler`): its pooling side, on a context or engine
of its own, which turns whole token inputs into pooled vectors or relevance scores without going through
the generation steps. A model that only pools gets a PoolingOnlyBackend as its generation side.

Concrete backends are imported lazily by name (`load_backend`), so `import vllm` never runs on a machine
that does not use it.
"""
from __future__ import annotations

import concurrent.futures
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from serve.sequence import Batch, Sequence, StepOutput

BACKEND_NAMES = ("llamacpp", "vllm")
# The data type of the KV cache (`--kv-type`), one vocabulary for both backends; "auto" is each backend's
# default (f16 on llama.cpp, the model's own 16-bit type on vLLM). llama.cpp stores K and V as f16 or in its
# block formats q8_0 (8.5 bits) and q4_0 (4.5 bits); vLLM's quantized cache is fp8 (e4m3 or e5m2).
LLAMACPP_KV_TYPES = ("auto", "f16", "q8_0", "q4_0")
VLLM_KV_TYPES = ("auto", "f16", "fp8", "fp8_e4m3", "fp8_e5m2")
KV_TYPES = tuple(dict.fromkeys(LLAMACPP_KV_TYPES + VLLM_KV_TYPES))
# llama.cpp's speculative decoding: "ngram" drafts from the sequence's own prompt and output (prompt lookup),
# "draft" from a draft model (BackendSettings.draft_model_path: backends/draft_model.py).
SPECULATIVE_MODES = ("ngram", "draft", "off")
DRAFT_MAX_TOKENS = 8  # the default of --draft-max: each drafted token costs a decode of the draft model
POOLING_TYPES = ("mean", "cls", "last", "rank")  # llama.cpp's --pooling values (rank: a reranker's head)


@dataclass(frozen=True, kw_only=True)
class BackendSettings:
    """Everything a backend needs to load one model; chosen by the plan (serve/placement/plan.py), which
    leaves `model_path` to the loader: the file is known only once it is fetched."""

    model_path: Path | None = None
    context_length: int  # per sequence, never split between sequences
    num_parallel: int  # sequences decoded together
    num_threads: int = 0  # 0: backend default
    n_gpu_layers: int = 0  # llama.cpp offload; -1 offloads all
    max_batch_tokens: int = 512  # token budget of one step (decode + prefill)
    seed: int = 0
    # One of KV_TYPES, checked against the backend by the plan. One setting for both backends: it is the
    # same choice (how K and V are stored), each backend maps it to its own type (llama.cpp's type_k and
    # type_v, vLLM's kv_cache_dtype), and the plan refuses what the chosen backend lacks.
    kv_cache_dtype: str = "auto"
    speculative: str = "off"  # llama.cpp: one of SPECULATIVE_MODES
    draft_model_path: Path | None = None  # speculative "draft": the draft model's GGUF (left to the loader)
    draft_max_tokens: int = DRAFT_MAX_TOKENS  # speculative "draft": tokens a sequence drafts in one step at most
    # speculative "draft": draft whatever a draft decode costs (--speculative draft asked, as llama-server
    # does); False: only where the measured cost pays (backends/draft_policy.py's DraftModelCost)
    draft_always: bool = False
    # vLLM only
    gpu_memory_utilization: float = 0.9
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    distributed_executor_backend: str | None = None  # "ray" for multi-node
    ray_address: str | None = None  # the Ray cluster to join (head node address)
    quantization: str | None = None
    enable_prefix_caching: bool = True


@dataclass(frozen=True)
class Capabilities:
    name: str  # "llamacpp" or "vllm"
    context_length: int  # per sequence
    num_parallel: int  # sequences running at once
    # The budget of one step: the scheduler puts one decode token per running sequence, then prompt chunks,
    # max_batch_tokens in all, and at most max_prefill_tokens_while_decoding prompt tokens while sequences
    # decode (it bounds their inter-token latency). A backend that batches and chunks prompts itself (vLLM)
    # states room for every running prompt whole: then the scheduler only admits.
    max_batch_tokens: int
    max_prefill_tokens_while_decoding: int
    vocab_size: int = 0  # for validating logit_bias token ids; 0: unknown
    # Lazy grammars (OutputConstraint.trigger_patterns: free text until a trigger, then the grammar), which
    # tool_choice auto uses; without them auto calls are parsed but not held to their schemas.
    can_start_grammar_on_trigger: bool = False
    # Speculative decoding: draft tokens a step may verify besides its decode tokens and prompt chunks,
    # from the budget they leave (Batch.num_draft_tokens); 0: the backend does not speculate.
    max_draft_tokens_per_step: int = 0
    # The same as an xgrammar structural tag (OutputConstraint.structural_tag: vLLM), for the formats that
    # have one.
    can_start_tagged_grammar: bool = False


class Backend(Protocol):
    """One loaded model. All methods but `tokenize` and `render_chat` run on the engine thread."""

    capabilities: Capabilities
    chat_template: str  # the Jinja source render_chat applies (the API reads tool markup from it)

    def tokenize(self, text: str) -> list[int]:
        """Token ids of an already-templated prompt (BOS handled as the model expects)."""

    def render_chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str:
        """The model's own chat template applied to OpenAI-style messages, ready for generation; `tools`
        (OpenAI's tool shape) reach the template as `tools`, as Hugging Face's apply_chat_template does."""

    def set_notify(self, notify: Callable[[], None]) -> None:
        """`notify` (thread-safe, never blocks) wakes the engine loop: a backend that produces output
        between steps, on threads of its own (vLLM), calls it whenever an output is ready for `step`."""

    def admit(self, sequence: Sequence) -> int:
        """Prepare a newly scheduled sequence; return how many prompt tokens are already cached."""

    def step(self, batch: Batch) -> list[StepOutput]:
        """Run one step; a finished sequence's output carries its finish_reason and its resources
        are freed by the backend before returning."""

    def close(self) -> None:
        """Free the model and everything it holds."""


class Pooler(Protocol):
    """A model's pooling side: embeddings (mean, cls or last pooling) or rerank scores (rank pooling) of
    whole inputs, computed apart from the generation steps (on a thread or engine of its own). Any thread
    may call it."""

    pooling: str  # what it computes: mean, cls, last or rank
    context_length: int  # tokens per input
    num_dimensions: int  # the length of an embedding (rank: of the classifier's output)
    vocab_size: int  # token ids are below this

    def tokenize(self, text: str) -> list[int]:
        """Token ids of one input, with the special tokens the model expects around it."""

    def pair_tokens(self, query: str, document: str) -> list[int]:
        """A query and a document as one reranker input, formatted as the model expects."""

    def pool(self, inputs: list[list[int]]) -> concurrent.futures.Future:
        """A future of one output per input (each fits the context): the pooled vector, not normalized, or
        for rank pooling the relevance score (0..1) as a list of one. Cancelling it skips work not started."""

    def close(self) -> None:
        """Free the context (or engine) and its model."""


class PoolingOnlyBackend:
    """The generation side of a model that only embeds or reranks: it tokenizes with the pooler, and never
    generates (the API refuses generation requests for the model before they reach the engine)."""

    chat_template = ""

    def __init__(self, name: str, pooler: Pooler):
        self._pooler = pooler
        self.capabilities = Capabilities(name=name, context_length=pooler.context_length, num_parallel=1,
                                         max_batch_tokens=pooler.context_length,
                                         max_prefill_tokens_while_decoding=pooler.context_length)

    def tokenize(self, text: str) -> list[int]:
        return self._pooler.tokenize(text)

    def render_chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str:
        raise ValueError("this model does not generate text: it has no chat template")

    def set_notify(self, notify: Callable[[], None]) -> None:
        pass

    def admit(self, sequence: Sequence) -> int:
        raise RuntimeError("a pooling-only model was given a generation request")

    def step(self, batch: Batch) -> list[StepOutput]:
        return []  # nothing is ever admitted

    def close(self) -> None:
        pass  # the engine closes the pooler


def load_backend(name: str, settings: BackendSettings) -> Backend:
    """Import `backends.<name>` only now and build its backend."""
    if name not in BACKEND_NAMES:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}")
    module = importlib.import_module(f"backends.{name}")
    return module.create_backend(settings)


def load_pooler(name: str, settings: BackendSettings, pooling: str | None) -> Pooler:
    """Import `backends.<name>_embed` only now and build the model's pooling side; `pooling` overrides
    what the model declares (None: the model's own)."""
    if name not in BACKEND_NAMES:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}")
    if pooling is not None and pooling not in POOLING_TYPES:
        raise ValueError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLING_TYPES)}")
    module = importlib.import_module(f"backends.{name}_embed")
    return module.create_pooler(settings, pooling)
