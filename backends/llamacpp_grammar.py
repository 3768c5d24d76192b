"""Grammar-constrained sampling for the llama.cpp backend, beside each constrained sequence's sampler chain.

Two engines, one grammar (the GBNF of the request's OutputConstraint):

- llguidance (`GuidanceGrammar`), for every grammar that holds from the first token: it computes the
  set of allowed tokens in tens of microseconds (a lexer over a token trie), and the chain samples among
  them as it would over the whole vocabulary with the others at -inf (`Candidates.fill_allowed`: only
  the allowed tokens where they are few). Where most tokens are allowed (inside a string), the chain's
  native pick is checked first and the mask computed only if the grammar rejects it. The GBNF goes over
  through llguidance's own GBNF -> Lark converter, so exactly the grammar the API checked is enforced. Its tokenizer is built while the model
  loads (backends/llguidance_tokenizer.py).
- llama.cpp's grammar sampler (`LlamaGrammar`), for lazy grammars (trigger patterns: llguidance has no
  such start) and any GBNF llguidance's converter cannot take, used as llama-server uses it
  (common/sampling.cpp, `common_sampler_sample`): the chain's pick is checked against the grammar; only
  on rejection are all ~50k candidates masked (each token's text run through the grammar's stacks) and
  the chain picks again.

Measured on SmolLM2's 49,152-token vocabulary and the benchmark's schema (benchmarks/README.md): a full
llama.cpp grammar mask took 9 ms per token (median, a loaded 2-core machine), llguidance's 0.03 ms.

llama.cpp aborts the process when its grammar accepts a token it does not allow (GGML_ABORT): every token
is checked against the grammar before it is accepted.
"""
from __future__ import annotations

import ctypes
from typing import Any

import functools
import logging

import llama_cpp.llama_cpp as ll
import numpy as np

from backends.llguidance_tokenizer import TokenizerBuild
from serve.sequence import OutputConstraint

log = logging.getLogger(__name__)

GRAMMAR_ROOT = b"root"
# Above this many tokens allowed (by the 32-token words of llguidance's mask that have any), a masked copy
# of the whole vocabulary is cheaper to write than the list of allowed tokens.
COMPACT_MAX_TOKENS = 8192
MAX_CACHED_MATCHERS = 64  # compiled llguidance grammars kept per backend (a deep copy serves each sequence)
# Ordinary text that any wide grammar state allows (string contents, free text) and structure (JSON keys,
# punctuation, numbers) does not: where both are allowed, GuidanceGrammar checks the chain's pick first.
PROBE_TEXTS = (" the", "ing")


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
        self._bit_offsets = np.arange(32, dtype=np.int32)
        self.array = ll.llama_token_data_array(
            data=ctypes.cast(self._data, ctypes.POINTER(ll.llama_token_data)), size=num_vocab, selected=-1,
            sorted=False)
        self._single = ll.llama_token_data()
        self._single_array = ll.llama_token_data_array(data=ctypes.pointer(self._single), size=1, selected=-1,
                                                       sorted=False)

    def fill(self, ctx, index: int, allowed: np.ndarray | None = None) -> ctypes.c_void_p:
        """Every token with its logit at batch position `index` (-inf where `allowed` is 0); samplers sort
        and cut it, so it is rewritten whole each time."""
        logits = np.ctypeslib.as_array(ll.llama_get_logits_ith(ctx, index), shape=(self._num_vocab,))
        self._view["id"] = self._token_ids
        self._view["logit"] = logits if allowed is None else np.where(allowed, logits, -np.inf)
        self._view["p"] = 0.0
        self.array.size, self.array.selected, self.array.sorted = self._num_vocab, -1, False
        return ctypes.byref(self.array)

    def fill_allowed(self, ctx, index: int, bitmask: np.ndarray) -> ctypes.c_void_p:
        """Only the tokens `bitmask` allows (llguidance's mask: bit t of word t // 32), in ascending id order.

        Where a grammar allows few tokens (JSON's punctuation, keys, digits: most tokens of a JSON answer),
        this skips writing ~50k candidates and the chain's softmax over them: about 0.4 ms per token on
        SmolLM2's vocabulary. The pick is the same as over the whole vocabulary with the rest at -inf:
        llama.cpp's samplers give -inf a probability of exactly 0 and keep the others' order, so the
        softmax sums, the cumulative sums and the random draw are the same (only an exact tie of logits
        in a sorting sampler, top-k or top-p, might order differently). Where it allows many (inside a
        string), compacting costs more than masking: the whole vocabulary is written."""
        words = np.flatnonzero(bitmask)
        if len(words) * 32 > COMPACT_MAX_TOKENS:
            allowed = np.unpackbits(bitmask.view(np.uint8), bitorder="little")[:self._num_vocab]
            return self.fill(ctx, index, allowed)
        bits = np.unpackbits(bitmask[words].view(np.uint8), bitorder="little").reshape(len(words), 32)
        token_ids = (words[:, None] * 32 + self._bit_offsets)[bits.astype(bool)]
        token_ids = token_ids[token_ids < self._num_vocab]
        logits = np.ctypeslib.as_array(ll.llama_get_logits_ith(ctx, index), shape=(self._num_vocab,))
        count = len(token_ids)
        view = self._view[:count]
        view["id"] = token_ids
        view["logit"] = logits[token_ids]
        view["p"] = 0.0
        self.array.size, self.array.selected, self.array.sorted = count, -1, False
        return ctypes.byref(self.array)

    def selected(self) -> int:
        return int(self._data[self.array.selected].id)

    def is_allowed(self, grammar, token: int) -> bool:
        """Whether the grammar allows `token` next (llama-server's one-token check)."""
        self._single.id, self._single.logit, self._single.p = token, 1.0, 0.0
        self._single_array.size, self._single_array.selected = 1, -1
        ll.llama_sampler_apply(grammar, ctypes.byref(self._single_array))
        return self._single.logit != float("-inf")


class LlamaGrammar:
    """llama.cpp's grammar sampler: rejection sampling as llama-server does it."""

    def __init__(self, vocab, constraint: OutputConstraint, candidates: Candidates):
        self._handle = init_grammar(vocab, constraint)
        self._candidates = candidates

    def sample(self, chain, ctx, index: int, pick=None) -> int:
        """The chain's pick if the grammar allows it, otherwise the chain's pick among the tokens the
        grammar allows. Both samplers accept it. (`pick` is for GuidanceGrammar's check-first.)"""
        candidates, grammar = self._candidates, self._handle
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

    def valid_prefix(self, tokens: list[int]) -> list[int]:
        return tokens  # checking past the first token would advance the grammar: drafts stay as they are

    def free(self) -> None:
        ll.llama_sampler_free(self._handle)


class GuidanceGrammar:
    """llguidance's matcher: the allowed tokens as a mask on the logits before the chain samples; or, where
    the grammar allows most of the vocabulary (inside a JSON string), the chain's own pick checked first.

    Why both (measured along a workload answer, benchmarks/README.md): where few tokens are allowed
    (punctuation, keys, digits: about 3 in 4 positions of a JSON answer) the mask and the chain over those
    few take about 0.03 ms, a tenth of a free token's native llama_sampler_sample (0.45 ms). Where almost
    every token is allowed, the mask alone takes about 0.4 ms (llguidance walks its whole token trie) and
    the chain still softmaxes the whole vocabulary: about 1 ms. There the native sample comes first, its
    token is checked with the matcher, and the mask is computed only when the check fails (llama-server's
    order, common_sampler_sample). A state counts as wide when `probe_tokens` (ordinary words) are all
    allowed, a check of about a microsecond each. Checking first is used only for chains where it keeps
    the distribution exactly (llamacpp_sampler.draws_from_the_whole_distribution); `probe_tokens` is
    empty otherwise."""

    def __init__(self, matcher, candidates: Candidates, num_vocab: int, probe_tokens: tuple[int, ...] = ()):
        import llguidance.numpy

        self._matcher = matcher
        self._candidates = candidates
        self._num_vocab = num_vocab
        self._fill_mask = llguidance.numpy.fill_next_token_bitmask
        self._bitmask = llguidance.numpy.allocate_token_bitmask(1, num_vocab)
        self._probe_tokens = probe_tokens
        self.num_checked = self.num_rejected = 0  # picks checked first, and those the grammar rejected

    def sample(self, chain, ctx, index: int, pick=None) -> int:
        """`pick`, the request's numpy pick (llamacpp_sampler.numpy_pick) where it has one, makes the first
        pick of a wide state in place of the chain: the same token or distribution, at a quarter of the cost."""
        if self._probe_tokens and self._is_wide():
            # The chain keeps no state that llama_sampler_sample's accept of a rejected pick could change.
            if pick is None:
                token = ll.llama_sampler_sample(chain, ctx, index)
            else:
                token = pick.pick(np.ctypeslib.as_array(ll.llama_get_logits_ith(ctx, index), shape=(self._num_vocab,)))
            self.num_checked += 1
            if self._matcher.try_consume_tokens([token]) == 1:
                return token
            self.num_rejected += 1
        return self._sample_masked(chain, ctx, index)

    def valid_prefix(self, tokens: list[int]) -> list[int]:
        """The longest prefix of `tokens` (a draft after the sampled token) the grammar allows."""
        return tokens[:self._matcher.validate_tokens(tokens)]

    def _is_wide(self) -> bool:
        return all(self._matcher.validate_tokens([token]) == 1 for token in self._probe_tokens)

    def _sample_masked(self, chain, ctx, index: int) -> int:
        try:
            self._fill_mask(self._matcher, self._bitmask, 0)
        except Exception as exc:  # llguidance raises on a matcher in error: fail this request only
            raise GrammarRejectedError(f"the grammar failed: {exc}") from None
        mask = self._bitmask[0]
        ll.llama_sampler_apply(chain, self._candidates.fill_allowed(ctx, index, mask))
        token = self._candidates.selected() if self._candidates.array.selected >= 0 else -1
        if token < 0 or not _is_set(mask, token) or not self._matcher.consume_token(token):
            raise GrammarRejectedError("no token the grammar allows could be sampled "
                                       "(does logit_bias exclude all of them?)")
        ll.llama_sampler_accept(chain, token)
        return token

    def free(self) -> None:
        pass


def _is_set(mask: np.ndarray, token: int) -> bool:
    return bool((int(mask[token // 32]) >> (token % 32)) & 1)


@functools.lru_cache(maxsize=MAX_CACHED_MATCHERS)
def _lark(gbnf: str) -> str:
    from llguidance.gbnf_to_lark import gbnf_to_lark

    return gbnf_to_lark(gbnf)


class GrammarSampling:
    """The backend's constrained sampling: a grammar per constrained sequence, and what they share: the
    candidate buffer and compiled matchers, built with the first constrained request, and llguidance's
    tokenizer, built in the background from the start (backends/llguidance_tokenizer.py)."""

    def __init__(self, vocab, num_vocab: int):
        self._vocab = vocab
        self._num_vocab = num_vocab
        self._candidates: Candidates | None = None
        self._tokenizer_build = TokenizerBuild(vocab)
        self._matchers: dict[str, Any] = {}  # gbnf -> compiled matcher, least recently used first
        self._probes: tuple[int, ...] | None = None  # GuidanceGrammar's probe tokens, once known

    def create(self, constraint: OutputConstraint | None, can_check_first: bool = False) -> tuple[Any, str | None]:
        """The grammar for a sequence (None when unconstrained), or why it could not be built: the API
        checked the grammar before submitting, so this is a backstop that fails one request, never the
        step. `can_check_first`: the sequence's chain allows checking its pick before masking
        (llamacpp_sampler.draws_from_the_whole_distribution)."""
        if constraint is None:
            return None, None
        if self._candidates is None:
            self._candidates = Candidates(self._num_vocab)
        if not constraint.is_lazy:
            try:
                probes = self._probe_tokens() if can_check_first else ()
                return GuidanceGrammar(self._matcher(constraint.gbnf), self._candidates, self._num_vocab,
                                       probes), None
            except Exception as exc:  # a GBNF construct llguidance's converter lacks: llama.cpp's sampler
                log.info("llguidance cannot take this grammar (%s); using llama.cpp's grammar sampler", exc)
        try:
            return LlamaGrammar(self._vocab, constraint, self._candidates), None
        except GrammarInitError as exc:
            return None, str(exc)

    def _matcher(self, gbnf: str):
        """A fresh matcher for the grammar: a copy of the compiled one (compiling takes milliseconds)."""
        import llguidance

        compiled = self._matchers.pop(gbnf, None)
        if compiled is None:
            compiled = llguidance.LLMatcher(self._tokenizer_build.result(), llguidance.LLMatcher.grammar_from_lark(_lark(gbnf)),
                                            log_level=0)
            if compiled.is_error():
                raise ValueError(f"llguidance could not compile the grammar: {compiled.get_error()}")
        self._matchers[gbnf] = compiled
        while len(self._matchers) > MAX_CACHED_MATCHERS:
            self._matchers.pop(next(iter(self._matchers)))
        return compiled.deep_copy()

    def _probe_tokens(self) -> tuple[int, ...]:
        """The first token of each probe text (none if one is missing: a state is then never wide)."""
        if self._probes is None:
            tokenizer = self._tokenizer_build.result()
            probes = tuple(tokens[0] for tokens in map(tokenizer.tokenize_str, PROBE_TEXTS) if tokens)
            self._probes = probes if len(probes) == len(PROBE_TEXTS) else ()
        return self._probes

    @staticmethod
    def sample(grammar, chain, ctx, index: int, pick=None) -> int:
        return grammar.sample(chain, ctx, index, pick)

    @staticmethod
    def valid_prefix(grammar, tokens: list[int]) -> list[int]:
        """The part of a speculative draft that the sequence's grammar allows (at most all of it)."""
        return grammar.valid_prefix(tokens)

    @staticmethod
    def free(grammar) -> None:
        grammar.free()

    def close(self) -> None:
        """Before the model (and its vocabulary) is freed."""
        self._tokenizer_build.cancel()
