"""The numpy greedy pick (backends/llamacpp_sampler.py) against llama.cpp's own chain, on the real model's
logits: the same token at every position, with biases, banned end tokens, ties, and where it must not apply."""
import llama_cpp.llama_cpp as ll
import numpy as np
import pytest

from backends.base import BackendSettings
from backends.llamacpp import LlamaCppBackend
from backends.llamacpp_sampler import GreedyPick, greedy_pick, make_sampler
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
    pick = greedy_pick(params, backend._num_vocab, backend._eog_tokens)
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


@pytest.mark.parametrize("params", [SamplingParams(temperature=0.7), SamplingParams(temperature=0, repeat_penalty=1.1),
                                    SamplingParams(temperature=0, presence_penalty=0.5),
                                    SamplingParams(temperature=0, frequency_penalty=0.5)],
                         ids=["sampled", "repeat", "presence", "frequency"])
def test_requests_with_state_or_randomness_keep_the_native_chain(params):
    assert greedy_pick(params, 100, frozenset({2})) is None


def test_biases_outside_the_vocabulary_are_skipped_as_llama_cpp_skips_them():
    pick = greedy_pick(SamplingParams(temperature=0, logit_bias={5: 1.0, 500: 9.0, -1: 9.0}), 100, frozenset())
    assert pick.token_ids.tolist() == [5]
