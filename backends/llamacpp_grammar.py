"""Grammar-constrained sampling for the llama.cpp backend: llama.cpp's grammar sampler beside a sequence's
sampler chain, used the way llama-server uses it (common/sampling.cpp, `common_sampler_sample`).

The chain picks a token from the raw logits; the grammar checks only that one token. Only when the
grammar rejects it does the grammar mask every candidate of the vocabulary and the chain pick again.
Masking ~50k candidates (each token's text run through the grammar's stacks) is what constrained decoding
costs, and most tokens of a constrained answer pass the one-token check, so this is much cheaper than a
grammar at the head of the chain. The grammar and the chain then accept the token, as
`llama_sampler_sample` does for an unconstrained chain.

llama.cpp aborts the process when its grammar accepts a token it does not allow (GGML_ABORT): every token
is checked against the grammar before it is accepted.
"""
from __future__ import annotations

import ctypes
from typing import Any

import llama_cpp.llama_cpp as ll
import numpy as np

from serve.sequence import OutputConstraint

GRAMMAR_ROOT = b"root"


class GrammarInitError(ValueError):
    """llama.cpp refused the grammar (it logs why: a syntax error, an undefined rule, left recursion)."""


class GrammarRejectedError(RuntimeError):
    """The grammar allows no token the sampler chain can pick (e.g. logit_bias excluded all of them)."""


def init_grammar(vocab, constraint: OutputConstraint):
    """A llama.cpp grammar sampler for the constraint (lazy when it has trigger patterns); the caller frees
    it with llama_sampler_free. `vocab` may be None to only check that the grammar parses (a grammar
    naming tokens, `<|im_end|>` or `<[2]>`, needs the vocabulary)."""
    grammar = constraint.gbnf.encode("utf-8")
    if constraint.is_lazy:
        patterns = [pattern.encode("utf-8") for pattern in constraint.trigger_patterns]
        array = (ctypes.c_char_p * len(patterns))(*patterns)
        handle = ll.llama_sampler_init_grammar_lazy_patterns(vocab, grammar, GRAMMAR_ROOT, array, len(patterns),
                                                             None, 0)
    else:
        handle = ll.llama_sampler_init_grammar(vocab, grammar, GRAMMAR_ROOT)
    if not handle:
        raise GrammarInitError("llama.cpp could not parse the grammar (syntax error, undefined rule, "
                               "left recursion, or no `root` rule)")
    return handle


class Candidates:
    """One reusable llama_token_data_array over the whole vocabulary, refilled from a row of logits.
    Sampling runs on the engine thread only, so one buffer serves every sequence."""

    def __init__(self, num_vocab: int):
        self._num_vocab = num_vocab
        self._data = (ll.llama_token_data * num_vocab)()
        self._view = np.ctypeslib.as_array(self._data)
        self._token_ids = np.arange(num_vocab, dtype=np.int32)
        self.array = ll.llama_token_data_array(
            data=ctypes.cast(self._data, ctypes.POINTER(ll.llama_token_data)), size=num_vocab, selected=-1,
            sorted=False)
        self._single = ll.llama_token_data()
        self._single_array = ll.llama_token_data_array(data=ctypes.pointer(self._single), size=1, selected=-1,
                                                       sorted=False)

    def fill(self, ctx, index: int) -> ctypes.c_void_p:
        """Every token with its logit at batch position `index`; samplers sort and cut it, so it is
        rewritten whole each time."""
        logits = np.ctypeslib.as_array(ll.llama_get_logits_ith(ctx, index), shape=(self._num_vocab,))
        self._view["id"] = self._token_ids
        self._view["logit"] = logits
        self._view["p"] = 0.0
        self.array.size, self.array.selected, self.array.sorted = self._num_vocab, -1, False
        return ctypes.byref(self.array)

    def selected(self) -> int:
        return int(self._data[self.array.selected].id)

    def is_allowed(self, grammar, token: int) -> bool:
        """Whether the grammar allows `token` next (llama-server's one-token check)."""
        self._single.id, self._single.logit, self._single.p = token, 1.0, 0.0
        self._single_array.size, self._single_array.selected = 1, -1
        ll.llama_sampler_apply(grammar, ctypes.byref(self._single_array))
        return self._single.logit != float("-inf")


class GrammarSampling:
    """The backend's constrained sampling: a grammar sampler per constrained sequence, and the one
    candidate buffer they share (built with the first constrained request: unconstrained serving
    allocates nothing)."""

    def __init__(self, vocab, num_vocab: int):
        self._vocab = vocab
        self._num_vocab = num_vocab
        self._candidates: Candidates | None = None

    def create(self, constraint: OutputConstraint | None) -> tuple[Any, str | None]:
        """The grammar sampler for a sequence (None when unconstrained), or why it could not be built: the
        API checked the grammar before submitting, so this is a backstop that fails one request, never
        the step."""
        if constraint is None:
            return None, None
        try:
            grammar = init_grammar(self._vocab, constraint)
        except GrammarInitError as exc:
            return None, str(exc)
        if self._candidates is None:
            self._candidates = Candidates(self._num_vocab)
        return grammar, None

    def sample(self, grammar, chain, ctx, index: int) -> int:
        """The next token of a grammar-constrained sequence: the chain's pick if the grammar allows it,
        otherwise the chain's pick among the tokens the grammar allows. Both samplers accept it."""
        candidates = self._candidates
        ll.llama_sampler_apply(chain, candidates.fill(ctx, index))
        token = candidates.selected()
        if not candidates.is_allowed(grammar, token):
            pointer = candidates.fill(ctx, index)
            ll.llama_sampler_apply(grammar, pointer)
            ll.llama_sampler_apply(chain, pointer)
            token = candidates.selected() if candidates.array.selected >= 0 else -1
            if token < 0 or not candidates.is_allowed(grammar, token):
                raise GrammarRejectedError("no token the grammar allows could be sampled "
                                           "(does logit_bias exclude all of them?)")
        ll.llama_sampler_accept(grammar, token)
        ll.llama_sampler_accept(chain, token)
        return token
