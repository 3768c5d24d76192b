"""Token logprobs from logits (llama.cpp) and from vLLM's Logprob dicts, as the backends hand them over."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from backends.logprobs import log_softmax, most_likely, token_logprob
from backends.vllm import sampling_kwargs, token_logprobs
from serve.sequence import SamplingParams


def piece(token: int) -> bytes:
    return f"t{token}".encode()


def test_log_softmax_is_a_distribution_even_for_huge_logits():
    logprobs = log_softmax(np.array([1000.0, 999.0, -5.0], dtype=np.float32))
    assert math.isclose(float(np.sum(np.exp(logprobs))), 1.0, rel_tol=1e-9)
    assert all(value <= 0.0 for value in logprobs) and logprobs[0] > logprobs[1] > logprobs[2]


def test_most_likely_is_sorted_and_breaks_ties_by_id():
    logprobs = np.log(np.array([0.1, 0.3, 0.3, 0.2, 0.1]))
    assert most_likely(logprobs, 3) == [1, 2, 3]
    assert most_likely(logprobs, 0) == [] and most_likely(logprobs, 99) == [1, 2, 3, 0, 4]


def test_token_logprob_holds_the_chosen_token_and_the_top_n():
    logprobs = log_softmax(np.array([0.0, 2.0, 1.0]))
    entry = token_logprob(logprobs, 2, 2, piece)
    assert entry.token_id == 2 and entry.piece == b"t2" and entry.logprob == float(logprobs[2])
    assert [token for token, _, _ in entry.top] == [1, 2]
    assert entry.top[0][2] == max(logprobs)


@dataclass
class FakeLogprob:  # vLLM's Logprob: logprob, rank, decoded_token
    logprob: float
    rank: int | None
    decoded_token: str | None


def test_vllm_logprobs_keep_the_best_ranks_and_the_chosen_token_outside_them():
    positions = [None, {7: FakeLogprob(-3.0, 4, "x"), 5: FakeLogprob(-0.1, 1, "a"), 6: FakeLogprob(-2.5, 2, "b")}]
    converted = token_logprobs([1, 7], positions, 2, lambda token, entry: entry.decoded_token.encode())
    assert converted[0] is None
    assert converted[1].token_id == 7 and converted[1].logprob == -3.0 and converted[1].piece == b"x"
    assert converted[1].top == ((5, b"a", -0.1), (6, b"b", -2.5))


def test_vllm_is_asked_for_logprobs_only_when_the_request_wants_them():
    assert sampling_kwargs(SamplingParams())["logprobs"] is None
    assert sampling_kwargs(SamplingParams())["prompt_logprobs"] is None
    asked = sampling_kwargs(SamplingParams(num_logprobs=3, num_prompt_logprobs=1))
    assert asked["logprobs"] == 3 and asked["prompt_logprobs"] == 1
