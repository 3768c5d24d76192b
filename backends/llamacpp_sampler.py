"""A request's native llama.cpp sampler chain: logit bias, penalties, then greedy or top-k/top-p/min-p,
temperature and a seeded draw (llama-server's order). The caller frees it with llama_sampler_free.

A greedy request with nothing but logit biases (no penalties, no grammar: the benchmarks' and most evals'
shape) also gets a GreedyPick, which makes the chain's choice from the logits with numpy: per token, the
native chain copies every logit into a candidate array (about 100 us for a 49k vocabulary on this machine,
8 times a step at 8 streams, on the engine thread between two llama_decode calls); an argmax takes 10-20 us.
"""
from __future__ import annotations

from dataclasses import dataclass

import llama_cpp.llama_cpp as ll
import numpy as np

from serve.sequence import SamplingParams

PENALTY_LAST_N = 64  # tokens the repetition/frequency/presence penalties look back on (llama.cpp default)


@dataclass(frozen=True)
class GreedyPick:
    """The token the chain [logit bias, greedy] picks: the biases added in float32 as llama.cpp adds them,
    then the first of the largest logits (llama.cpp's greedy keeps the first on ties, as argmax does). Both
    samplers keep no state, so skipping the chain's accept changes nothing."""

    token_ids: np.ndarray
    biases: np.ndarray

    def pick(self, logits: np.ndarray) -> int:
        if len(self.token_ids):
            logits = logits.copy()
            logits[self.token_ids] += self.biases
        return int(logits.argmax())


def greedy_pick(params: SamplingParams, num_vocab: int, eog_tokens: frozenset[int]) -> GreedyPick | None:
    """The numpy pick for a greedy request without penalties (the caller leaves grammars to the chain)."""
    if not params.is_greedy or params.repeat_penalty != 1.0 or params.frequency_penalty or params.presence_penalty:
        return None
    biases = {t: b for t, b in _biases(params, eog_tokens).items() if 0 <= t < num_vocab}  # llama.cpp skips others
    return GreedyPick(np.array(list(biases), dtype=np.int64), np.array(list(biases.values()), dtype=np.float32))


def _biases(params: SamplingParams, eog_tokens: frozenset[int]) -> dict[int, float]:
    biases = dict(params.logit_bias)
    if params.ignore_eos:
        biases.update({token: float("-inf") for token in eog_tokens})
    return biases


def make_sampler(params: SamplingParams, num_vocab: int, eog_tokens: frozenset[int]):
    chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
    biases = _biases(params, eog_tokens)
    if biases:
        array = (ll.llama_logit_bias * len(biases))(*(ll.llama_logit_bias(t, b) for t, b in biases.items()))
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_logit_bias(num_vocab, len(biases), array))
    if params.repeat_penalty != 1.0 or params.frequency_penalty or params.presence_penalty:
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_penalties(
            num_vocab, PENALTY_LAST_N, params.repeat_penalty, params.frequency_penalty, params.presence_penalty))
    if params.is_greedy:
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_greedy())
        return chain
    if params.top_k > 0:
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_top_k(params.top_k))
    if params.top_p < 1.0:
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_top_p(params.top_p, 1))
    if params.min_p > 0.0:
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_min_p(params.min_p, 1))
    ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_temp(params.temperature))
    seed = ll.LLAMA_DEFAULT_SEED if params.seed is None else params.seed & 0xFFFFFFFF
    ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_dist(seed))
    return chain
