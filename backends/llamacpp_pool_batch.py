"""How the llama.cpp pooler lays its inputs into decodes: which inputs share a llama_decode, and the
llama_batch that carries them, filled a whole input at a time.

Packing. Every token of a pooling decode attends over the whole decode, not just its own input: a
non-causal model (BERT, rerankers) computes attention over all tokens of the micro-batch and masks the
other inputs' pairs, and a causal model attends over max(256, the used KV cells rounded up to 256), since
llama.cpp pads the KV window to 256. Packing inputs beyond 256 tokens into one decode therefore adds
attention that no input needs (quadratic in the decode's size), while the matrix products gain nothing
from more rows than that. Measured on this machine (one thread, CPU time): 32 query-document pairs of
~225 tokens on the tests' BERT reranker cost 155 ms packed into 17 decodes of up to 512 tokens (what
llama-server does) and 140 ms as 32 decodes of one pair; 32 sentences on SmolLM2-135M (mean pooling)
2.5% less in decodes of up to 256 tokens than of up to 512. So a decode holds at most PACK_TOKENS tokens,
or one input longer than that (mean and cls pooling need a whole input in one micro-batch).

The batch. llama_batch_init allocates one seq_id array per token, so filling it from Python costs five
ctypes stores per token (about 6 ms of a 7,000-token rerank request, 4% of its decode time). This batch
keeps its arrays in NumPy, with every token's seq_id pointer aimed into one contiguous array, so an
input is a few slice assignments. It is never passed to llama_batch_free: NumPy owns the memory.
"""
from __future__ import annotations

import ctypes
import itertools

import llama_cpp.llama_cpp as ll
import numpy as np

PACK_TOKENS = 256  # tokens per pooling decode, unless one input alone is longer (see the module docstring)


def pack(sizes: list[int], capacity: int, max_inputs: int, pack_tokens: int = PACK_TOKENS) -> list[range]:
    """Consecutive inputs (by their token counts) grouped into decodes, in order: a group holds at most
    `max_inputs` inputs and `pack_tokens` tokens, or one input alone of up to `capacity` tokens."""
    groups, start, num_tokens = [], 0, 0
    budget = min(pack_tokens, capacity)
    for index, size in enumerate(sizes):
        if index > start and (num_tokens + size > budget or index - start == max_inputs):
            groups.append(range(start, index))
            start, num_tokens = index, 0
        num_tokens += size
    if start < len(sizes):
        groups.append(range(start, len(sizes)))
    return groups


class PoolingBatch:
    """A llama_batch of up to `capacity` tokens whose arrays NumPy owns; every token is an output."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._tokens = np.zeros(capacity, dtype=np.int32)
        self._positions = np.zeros(capacity, dtype=np.int32)
        self._num_seq_ids = np.ones(capacity, dtype=np.int32)
        self._seq_ids = np.zeros(capacity, dtype=np.int32)
        self._outputs = np.ones(capacity, dtype=np.int8)  # pooling reads every token's output
        # token i's seq_id pointer points at _seq_ids[i]: one sequence per token
        self._seq_id_pointers = (self._seq_ids.ctypes.data
                                 + self._seq_ids.itemsize * np.arange(capacity, dtype=np.uintp))
        self._arange = np.arange(capacity, dtype=np.int32)
        self.batch = ll.llama_batch(
            n_tokens=0,
            token=self._tokens.ctypes.data_as(ctypes.POINTER(ll.llama_token)),
            embd=None,
            pos=self._positions.ctypes.data_as(ctypes.POINTER(ll.llama_pos)),
            n_seq_id=self._num_seq_ids.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)),
            seq_id=self._seq_id_pointers.ctypes.data_as(ctypes.POINTER(ctypes.POINTER(ll.llama_seq_id))),
            logits=self._outputs.ctypes.data_as(ctypes.POINTER(ctypes.c_int8)),
        )

    def fill(self, inputs: list[list[int]]) -> None:
        """Input k becomes sequence k, its tokens at positions 0, 1, ..."""
        num_tokens = sum(map(len, inputs))
        if num_tokens > self.capacity:
            raise ValueError(f"{num_tokens} tokens do not fit a batch of {self.capacity}")
        self._tokens[:num_tokens] = np.fromiter(itertools.chain.from_iterable(inputs), dtype=np.int32,
                                                count=num_tokens)
        start = 0
        for seq_id, tokens in enumerate(inputs):
            end = start + len(tokens)
            self._positions[start:end] = self._arange[:len(tokens)]
            self._seq_ids[start:end] = seq_id
            start = end
        self.batch.n_tokens = num_tokens

    def token_view(self) -> tuple[list[int], list[int], list[int]]:
        """(tokens, positions, sequence ids) of the filled batch, read through the llama_batch's own
        pointers, as llama.cpp reads them (for tests)."""
        batch, count = self.batch, self.batch.n_tokens
        return ([batch.token[i] for i in range(count)], [batch.pos[i] for i in range(count)],
                [batch.seq_id[i][0] for i in range(count)])
