"""How the llama.cpp pooler groups inputs into decodes, and the NumPy-backed llama_batch it fills (read back
through the llama_batch's own ctypes pointers, as llama.cpp reads it). No model needed."""
from __future__ import annotations

import pytest

from backends.llamacpp_pool_batch import PACK_TOKENS, PoolingBatch, pack


def test_inputs_share_a_decode_up_to_the_token_budget_in_order():
    assert pack([100, 100, 100, 30, 300], capacity=512, max_inputs=64, pack_tokens=256) == [
        range(0, 2), range(2, 4), range(4, 5)]


def test_an_input_longer_than_the_budget_is_decoded_alone():
    groups = pack([40, 400, 40, 40], capacity=512, max_inputs=64, pack_tokens=256)
    assert groups == [range(0, 1), range(1, 2), range(2, 4)]


def test_a_decode_holds_at_most_max_inputs_and_the_budget_never_exceeds_the_context():
    assert pack([1] * 10, capacity=512, max_inputs=4) == [range(0, 4), range(4, 8), range(8, 10)]
    assert pack([60, 60, 60], capacity=100, max_inputs=64) == [range(0, 1), range(1, 2), range(2, 3)]
    assert pack([], capacity=512, max_inputs=64) == []


def test_the_default_budget_packs_short_inputs_and_separates_long_ones():
    short = pack([20] * 32, capacity=512, max_inputs=64)
    assert all(sum(20 for _ in group) <= PACK_TOKENS for group in short) and len(short) < 32
    assert len(pack([226] * 32, capacity=512, max_inputs=64)) == 32  # rerank pairs: one per decode


def test_each_input_is_its_own_sequence_from_position_zero():
    batch = PoolingBatch(16)
    batch.fill([[5, 6, 7], [8], [9, 10]])
    assert batch.batch.n_tokens == 6
    assert batch.token_view() == ([5, 6, 7, 8, 9, 10], [0, 1, 2, 0, 0, 1], [0, 0, 0, 1, 2, 2])
    assert all(batch.batch.n_seq_id[i] == 1 and batch.batch.logits[i] == 1 for i in range(6))


def test_a_refill_replaces_the_previous_inputs():
    batch = PoolingBatch(16)
    batch.fill([[1, 2, 3, 4, 5, 6]])
    batch.fill([[7], [8, 9]])
    assert batch.token_view() == ([7, 8, 9], [0, 0, 1], [0, 1, 1])


def test_inputs_larger_than_the_batch_are_refused():
    with pytest.raises(ValueError, match="do not fit"):
        PoolingBatch(4).fill([[1, 2, 3], [4, 5]])
