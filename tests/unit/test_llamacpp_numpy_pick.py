"""The numpy picks (backends/llamacpp_sampler.py) against llama.cpp's own chain, on the real model's logits:
greedy, the same token at every position, with biases, banned end tokens, ties; sampled, the same
distribution (softmax at the temperature), seeded draws that repeat; and where neither may apply."""
import llama_cpp.llama_cpp as ll
import numpy as np
import pytest

from backends.base import BackendSettings
from backends.llamacpp import LlamaCppBackend
from backends.llamacpp_sampler import GreedyPick, SoftmaxDraw, make_sampler, numpy_pick
from serve.models.catalog import embedded_model_path
from serve.sequence import Batch, PrefillChunk, Request, SamplingParams, Sequence

PROMPT = "The lighthouse keeper climbed the stairs every evening, and the sea below"


@pytest.fixture(scope="module")
def scored_prompt():
    """A backend whose last step computed logits at every prompt position (echo): (backend, positions)."""
    settings = BackendSettings(model_path=embedded_model_path(), context_length=256, num_parallel=1,
                               num_threads=1, max_batch_tokens=64)
    backend = LlamaCppBackend(settings)
    prompt = backend.tokenize(PROMPT)
    params = SamplingParams(max_tokens=1, temperature=0, num_prompt_logprobs=0)
    sequence = Sequence(Request("r", "m", PROMPT, prompt, params), deliver=lambda output: None)
    backend.admit(sequence)
    backend.step(Batch(prefill=[PrefillChunk(sequence, 0, len(prompt))]))
    yield backend, range(len(prompt))
    backend.close()


def _native(backend, params: SamplingParams, index: int) -> int:
    chain = make_sampler(params, backend._num_vocab, backend._eog_tokens)
    try:
        return ll.llama_sampler_sample(chain, backend._ctx, index)
    finally:
        ll.llama_sampler_free(chain)


def _numpy(backend, params: SamplingParams, index: int) -> int:
    pick = numpy_pick(params, backend._num_vocab, backend._eog_tokens)
    return pick.pick(backend._logits_at(index))


def test_the_pick_is_the_chains_token_at_every_position(scored_prompt):
    backend, positions = scored_prompt
    plain = SamplingParams(temperature=0)
    winners = [_native(backend, plain, i) for i in positions]
    biased = SamplingParams(temperature=0, logit_bias={winners[0]: -100.0, winners[1]: -0.5, 17: 30.0},
                            ignore_eos=True)
    for params in (plain, biased):
        native = [_native(backend, params, i) for i in positions]
        assert [_numpy(backend, params, i) for i in positions] == native
    assert [_native(backend, biased, i) for i in positions] != winners  # the biases changed some picks


def test_ties_go_to_the_first_token_as_in_llama_cpp():
    pick = GreedyPick(np.array([7], dtype=np.int64), np.array([1.0], dtype=np.float32))
    logits = np.zeros(10, dtype=np.float32)
    logits[[3, 7]] = [2.0, 1.0]  # 7 reaches 2.0 with its bias, after 3
    assert pick.pick(logits) == 3
    assert logits[7] == 1.0  # the model's logits stay as they are (logprobs read them)


@pytest.mark.parametrize("params", [SamplingParams(temperature=0.7, top_k=40), SamplingParams(temperature=0.7, top_p=0.9),
                                    SamplingParams(temperature=0.7, min_p=0.05),
                                    SamplingParams(temperature=0.7, repeat_penalty=1.1),
                                    SamplingParams(temperature=0, repeat_penalty=1.1),
                                    SamplingParams(temperature=0, presence_penalty=0.5),
                                    SamplingParams(temperature=0, frequency_penalty=0.5)],
                         ids=["top-k", "top-p", "min-p", "sampled-repeat", "repeat", "presence", "frequency"])
def test_requests_with_state_or_truncation_keep_the_native_chain(params):
    assert numpy_pick(params, 100, frozenset({2})) is None


def test_biases_outside_the_vocabulary_are_skipped_as_llama_cpp_skips_them():
    pick = numpy_pick(SamplingParams(temperature=0, logit_bias={5: 1.0, 500: 9.0, -1: 9.0}), 100, frozenset())
    assert pick.token_ids.tolist() == [5]


def _softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    weights = np.exp((logits.astype(np.float64) - logits.max()) / temperature)
    return weights / weights.sum()


def test_the_draw_follows_the_chains_distribution_on_the_real_model(scored_prompt):
    """Both samplers draw from softmax(logits / T): the frequencies of the likeliest tokens over many draws
    of each agree with those probabilities (and so with each other) within sampling error."""
    backend, positions = scored_prompt
    index, temperature, draws = positions[-1], 1.5, 4000
    logits = backend._logits_at(index).copy()
    expected = _softmax(logits, temperature)
    likeliest = np.argsort(expected)[::-1][:5]
    draw = numpy_pick(SamplingParams(temperature=temperature, seed=11), backend._num_vocab, frozenset())
    assert isinstance(draw, SoftmaxDraw)
    ours = np.bincount([draw.pick(logits) for _ in range(draws)], minlength=len(logits)) / draws
    native = np.bincount([_native(backend, SamplingParams(temperature=temperature, seed=seed), index)
                          for seed in range(draws)], minlength=len(logits)) / draws
    for frequencies in (ours, native):
        error = np.sqrt(expected[likeliest] * (1 - expected[likeliest]) / draws)
        assert np.all(np.abs(frequencies[likeliest] - expected[likeliest]) < 5 * error + 1e-3), (frequencies[likeliest], expected[likeliest])


def test_a_seed_repeats_its_draws_and_banned_tokens_are_never_drawn():
    logits = np.zeros(1000, dtype=np.float32)  # 1000: not a whole number of blocks
    logits[[3, 998]] = 2.0
    params = SamplingParams(temperature=1.0, seed=5, logit_bias={3: float("-inf")})
    first, second = (numpy_pick(params, 1000, frozenset()) for _ in range(2))
    picks = [first.pick(logits) for _ in range(3000)]
    assert picks == [second.pick(logits) for _ in range(3000)]
    assert 3 not in picks and 998 in picks and 999 in picks  # the banned one never, the last ones too
    assert picks.count(998) > 3 * max(picks.count(t) for t in range(10))  # e^2 times as likely as a 0 logit


def test_every_token_banned_picks_like_greedy_instead_of_failing():
    draw = numpy_pick(SamplingParams(temperature=0.8, seed=1), 4, frozenset())
    assert draw.pick(np.full(4, -np.inf, dtype=np.float32)) == 0
