"""A request's native llama.cpp sampler chain: logit bias, penalties, then greedy or top-k/top-p/min-p,
temperature and a seeded draw (llama-server's order). The caller frees it with llama_sampler_free.

A request with nothing but logit biases and a temperature (no penalties, no top-k/top-p/min-p, no grammar:
the benchmarks', most evals' and the OpenAI API's default shape) also gets a numpy pick (`numpy_pick`):
per token, the native chain copies every logit into a candidate array and, when sampling without a
truncating sampler, takes a softmax over all of them (about 100 us greedy and 400 us sampled for a 49k
vocabulary on this machine, 8 times a step at 8 streams, on the engine thread between two llama_decode
calls). With numpy: an argmax takes 10-20 us (GreedyPick, the chain's very token), a draw from the same
softmax about 100 us (SoftmaxDraw, the same distribution with numpy's random generator).
"""
from __future__ import annotations

from dataclasses import dataclass, field

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
        return int(self._biased(logits).argmax())

    def _biased(self, logits: np.ndarray) -> np.ndarray:
        """The logits with the biases added, in a copy: the model's own logits stay (logprobs read them)."""
        if not len(self.token_ids):
            return logits
        logits = logits.copy()
        logits[self.token_ids] += self.biases
        return logits


@dataclass(frozen=True)
class SoftmaxDraw(GreedyPick):
    """A draw from softmax((logits + bias) / T), the distribution of the chain [logit bias, temperature,
    dist], with the request's own seeded generator (so a seed repeats its answer, as with the chain).

    The draw finds where a uniform number falls in the cumulative probabilities, a block at a time: block
    sums, then a cumulative sum inside one block of BLOCK tokens (a float64 cumulative sum over the whole
    vocabulary costs more than the softmax)."""

    BLOCK = 256
    inverse_temperature: np.float32 = np.float32(1.0)
    rng: np.random.Generator = field(default_factory=np.random.default_rng)

    def pick(self, logits: np.ndarray) -> int:
        logits = self._biased(logits)
        top = logits.max()
        if not np.isfinite(top):  # every token banned (-inf): what the argmax makes of it, as greedy would
            return int(logits.argmax())
        weights = np.zeros(-(-len(logits) // self.BLOCK) * self.BLOCK, dtype=np.float32)  # padded with 0
        np.exp((logits - top) * self.inverse_temperature, out=weights[:len(logits)])  # the largest is 1
        block_ends = np.cumsum(weights.reshape(-1, self.BLOCK).sum(axis=1, dtype=np.float64))
        target = self.rng.random() * block_ends[-1]
        block = int(np.searchsorted(block_ends, target, side="right"))  # a block with weight: target < its end
        target -= block_ends[block - 1] if block else 0.0
        inside = np.cumsum(weights[block * self.BLOCK:(block + 1) * self.BLOCK], dtype=np.float64)
        token = block * self.BLOCK + min(int(np.searchsorted(inside, target, side="right")), self.BLOCK - 1)
        while weights[token] == 0.0:  # rounding past the block's last weighted token: step back to it
            token -= 1
        return token


def numpy_pick(params: SamplingParams, num_vocab: int, eog_tokens: frozenset[int]) -> GreedyPick | None:
    """The numpy pick for a request the chain would serve with [logit bias, greedy] or [logit bias,
    temperature, dist], None for any other (the caller leaves grammars to the chain)."""
    if not draws_from_the_whole_distribution(params):
        return None
    biases = {t: b for t, b in _biases(params, eog_tokens).items() if 0 <= t < num_vocab}  # llama.cpp skips others
    token_ids = np.array(list(biases), dtype=np.int64)
    bias_values = np.array(list(biases.values()), dtype=np.float32)
    if params.is_greedy:
        return GreedyPick(token_ids, bias_values)
    seed = None if params.seed is None else params.seed & 0xFFFFFFFF
    return SoftmaxDraw(token_ids, bias_values, np.float32(1.0 / params.temperature), np.random.default_rng(seed))


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


def draws_from_the_whole_distribution(params: SamplingParams) -> bool:
    """Whether the chain's pick is the argmax or a plain draw from softmax((logits + bias) / T), through
    samplers that keep no state (no penalties, which llama_sampler_sample would make remember the pick).

    Then a grammar may check the chain's pick first and mask only when it rejects it: a rejected draw,
    followed by a draw from the grammar-masked distribution, gives each allowed token p(t) + (1 - Z) p(t) / Z
    = p(t) / Z (Z the allowed tokens' share), exactly the masked distribution; greedy keeps the allowed
    argmax. Truncating samplers (top-k, top-p, min-p) cut the whole vocabulary differently from the allowed
    tokens alone, so with them the mask comes first."""
    if params.repeat_penalty != 1.0 or params.frequency_penalty or params.presence_penalty:
        return False
    return params.is_greedy or (params.top_k <= 0 and params.top_p >= 1.0 and params.min_p <= 0.0)

