"""A request's native llama.cpp sampler chain: logit bias, penalties, then greedy or top-k/top-p/min-p,
temperature and a seeded draw (llama-server's order). The caller frees it with llama_sampler_free."""
from __future__ import annotations

import llama_cpp.llama_cpp as ll

from serve.sequence import SamplingParams

PENALTY_LAST_N = 64  # tokens the repetition/frequency/presence penalties look back on (llama.cpp default)


def make_sampler(params: SamplingParams, num_vocab: int, eog_tokens: frozenset[int]):
    chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
    biases = dict(params.logit_bias)
    if params.ignore_eos:
        biases.update({token: float("-inf") for token in eog_tokens})
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
