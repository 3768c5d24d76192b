"""llama.cpp's pooling side: embeddings (mean, cls, last pooling) and rerank scores (rank pooling).

It runs on a llama_context of its own (`embeddings=True`, the pooling type of the GGUF or the one asked for)
and on a worker thread of its own, never on the generation engine's thread. llama.cpp contexts are not
thread-safe, but two contexts are independent: each has its own KV cache and compute buffers, and the
weights they read are not written after loading. So an embedding request neither waits for a generation
step nor delays one (the two compete only for CPU cores, as two processes would). Running pooling as jobs on
the engine thread would stall every running stream for the whole decode of a 32-input batch, and teach the
scheduler a second kind of work; a thread per pooling context keeps both loops simple.

Batching: the worker takes every job waiting (one request's inputs each), packs consecutive inputs into
llama_batches, each input its own sequence id, calls llama_decode once per batch and reads each sequence's
pooled output (`llama_get_embeddings_seq`). A batch holds at most PACK_TOKENS tokens (llama-server packs up to
n_batch; smaller decodes spend less on attention across inputs: backends/llamacpp_pool_batch.py) and at most
MAX_SEQUENCES inputs. Mean and cls pooling happen inside one micro-batch, so a sequence must never span two:
the context is built with n_ubatch = n_batch = the per-input context (llama-server forces the same for
`--embeddings`), and an input longer than PACK_TOKENS is decoded alone.

The model is loaded again from its file for this context: an embedding-only model has no generation side,
and a chat model that also embeds (`--pooling`) shares the mapped file's pages through the page cache.
"""
from __future__ import annotations

import concurrent.futures
import ctypes
import functools
import logging
import math
import queue
import threading
from dataclasses import dataclass

import llama_cpp
import llama_cpp._logger
import llama_cpp.llama_cpp as ll
import numpy as np

from backends.base import BackendSettings
from backends.llamacpp_context import free_native, load_model
from backends.llamacpp_pool_batch import PoolingBatch, pack
from backends.llamacpp_vocab import tokenize
from serve.errors import ModelLoadError

log = logging.getLogger(__name__)

MAX_SEQUENCES = 64  # inputs per llama_decode (llama.cpp allows up to 256 sequence ids)
POOLING_IDS = {"mean": ll.LLAMA_POOLING_TYPE_MEAN, "cls": ll.LLAMA_POOLING_TYPE_CLS,
               "last": ll.LLAMA_POOLING_TYPE_LAST, "rank": ll.LLAMA_POOLING_TYPE_RANK}
POOLING_NAMES = {value: name for name, value in POOLING_IDS.items()}


@dataclass
class _Job:
    inputs: list[list[int]]
    future: concurrent.futures.Future


def sigmoid(value: float) -> float:
    """A reranker's score (a logit) as a relevance between 0 and 1, as vLLM and Cohere report it."""
    return 1.0 / (1.0 + math.exp(-value)) if value >= 0 else math.exp(value) / (1.0 + math.exp(value))


class LlamaCppPooler:
    """Embeddings or rerank scores of token inputs, computed on a worker thread (see the module docstring)."""

    def __init__(self, settings: BackendSettings, pooling: str | None):
        llama_cpp._logger.set_verbose(log.isEnabledFor(logging.DEBUG))
        ll.llama_backend_init()
        self._model = load_model(settings.model_path, settings.n_gpu_layers)
        self._vocab = ll.llama_model_get_vocab(self._model)
        self.vocab_size = ll.llama_vocab_n_tokens(self._vocab)
        n_ctx_train = ll.llama_model_n_ctx_train(self._model)
        self.context_length = min(settings.context_length, n_ctx_train) if n_ctx_train > 0 else settings.context_length
        self._ctx = self._create_context(settings, pooling)
        self.pooling = POOLING_NAMES.get(ll.llama_pooling_type(self._ctx), "none")
        if self.pooling == "none":
            self.close()
            raise ModelLoadError(f"{settings.model_path} declares no pooling; start the server with --pooling "
                                 "mean, cls or last to embed with it")
        self.num_dimensions = (ll.llama_model_n_cls_out(self._model) if self.pooling == "rank"
                               else ll.llama_model_n_embd_out(self._model))
        self._memory = ll.llama_get_memory(self._ctx)  # None for encoder-only models (BERT): nothing to clear
        self._batch = PoolingBatch(self.context_length)  # NumPy owns its arrays: never llama_batch_free it
        template = ll.llama_model_chat_template(self._model, b"rerank")
        self._rerank_template = template.decode("utf-8") if template else None
        # A rerank request pairs one query with many documents: tokenize the query once, not per document.
        self._query_tokens = functools.lru_cache(maxsize=16)(
            lambda query: tuple(self.tokenize(query, add_special=False)))
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name="llamacpp-pooling", daemon=True)
        self._thread.start()

    def _create_context(self, settings: BackendSettings, pooling: str | None):
        params = ll.llama_context_default_params()
        params.embeddings = True
        params.n_ctx = params.n_batch = params.n_ubatch = self.context_length
        params.n_seq_max = MAX_SEQUENCES
        params.kv_unified = True  # the inputs of one decode share the cells: together they fill at most n_batch
        if pooling is not None:
            params.pooling_type = POOLING_IDS[pooling]
        if settings.num_threads > 0:
            params.n_threads = params.n_threads_batch = settings.num_threads
        ctx = ll.llama_init_from_model(self._model, params)
        if not ctx:
            ll.llama_model_free(self._model)
            raise ModelLoadError(f"llama.cpp could not create an embedding context of {self.context_length} "
                                 "tokens; lower --ctx")
        return ctx

    # -- tokens (any thread: the vocabulary is read-only) ----------------------------------------------

    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        """Token ids of `text` with the model's own special tokens (BOS, or BERT's [CLS] ... [SEP])."""
        return tokenize(self._vocab, text, add_special=add_special)

    def pair_tokens(self, query: str, document: str) -> list[int]:
        """A query and a document as a reranker reads them: the GGUF's own rerank template when it has one
        (Qwen3-Reranker), else [BOS] query [EOS] [SEP] document [EOS], as llama-server formats them."""
        if self._rerank_template:
            prompt = self._rerank_template.replace("{query}", query).replace("{document}", document)
            return self.tokenize(prompt, add_special=False)
        eos = ll.llama_vocab_eos(self._vocab)
        if eos < 0:
            eos = ll.llama_vocab_sep(self._vocab)
        tokens = [ll.llama_vocab_bos(self._vocab)] if ll.llama_vocab_get_add_bos(self._vocab) else []
        tokens += self._query_tokens(query)
        if ll.llama_vocab_get_add_eos(self._vocab):
            tokens.append(eos)
        if ll.llama_vocab_get_add_sep(self._vocab):
            tokens.append(ll.llama_vocab_sep(self._vocab))
        tokens += self.tokenize(document, add_special=False)
        if ll.llama_vocab_get_add_eos(self._vocab):
            tokens.append(eos)
        return tokens

    # -- pooling -----------------------------------------------------------------------------------------

    def pool(self, inputs: list[list[int]]) -> concurrent.futures.Future:
        """A future of one output per input: the pooled vector (not normalized), or for rank pooling the
        relevance score (0..1) as a list of one. Cancelling the future before its batch starts skips it."""
        for tokens in inputs:
            if not 0 < len(tokens) <= self.context_length:
                raise ValueError(f"an input of {len(tokens)} tokens does not fit the context of "
                                 f"{self.context_length}")
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put(_Job(inputs, future))
        return future

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            jobs = [job]
            while True:  # everything that arrived meanwhile joins this batch
                try:
                    more = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._jobs.put(None)  # stop after this batch
                    break
                jobs.append(more)
            self._run([j for j in jobs if j.future.set_running_or_notify_cancel()])

    def _run(self, jobs: list[_Job]) -> None:
        outputs = {id(job): [None] * len(job.inputs) for job in jobs}
        work = [(job, index, tokens) for job in jobs for index, tokens in enumerate(job.inputs)]
        try:
            for chunk in self._chunks(work):
                for (job, index, _), output in zip(chunk, self._decode([tokens for _, _, tokens in chunk])):
                    outputs[id(job)][index] = output
        except Exception as exc:  # noqa: BLE001 - every request in the batch learns of the failure
            log.exception("llama.cpp pooling failed")
            for job in jobs:
                job.future.set_exception(exc)
            return
        for job in jobs:
            job.future.set_result(outputs[id(job)])

    def _chunks(self, work: list) -> list[list]:
        """Consecutive inputs grouped into decodes (backends/llamacpp_pool_batch.py: pack)."""
        groups = pack([len(item[2]) for item in work], self.context_length, MAX_SEQUENCES)
        return [work[group.start:group.stop] for group in groups]

    def _decode(self, inputs: list[list[int]]) -> list[list[float]]:
        self._batch.fill(inputs)
        if self._memory:  # forget the last decode's cells; their data need not be zeroed (llama-server neither)
            ll.llama_memory_clear(self._memory, False)
        status = ll.llama_decode(self._ctx, self._batch.batch)
        if status != 0:
            raise RuntimeError(f"llama_decode failed with status {status}")
        return [self._pooled(seq_id) for seq_id in range(len(inputs))]

    def _pooled(self, seq_id: int) -> list[float]:
        pointer = ll.llama_get_embeddings_seq(self._ctx, seq_id)
        if not pointer:
            raise RuntimeError(f"llama.cpp returned no pooled output for sequence {seq_id}")
        values = np.ctypeslib.as_array(ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)),
                                       shape=(self.num_dimensions,))
        if self.pooling == "rank":
            return [sigmoid(float(values[0]))]
        return values.tolist()  # float32 values as Python floats (exact)

    def close(self) -> None:
        thread = getattr(self, "_thread", None)
        if thread is not None and thread.is_alive():
            self._jobs.put(None)
            thread.join(timeout=60)
        free_native(None, self._ctx, self._model)  # the PoolingBatch's memory is NumPy's
        self._batch = self._ctx = self._model = None


def create_pooler(settings: BackendSettings, pooling: str | None) -> LlamaCppPooler:
    return LlamaCppPooler(settings, pooling)
