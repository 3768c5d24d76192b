"""Slot choice of the llama.cpp backend (real model): sequences run in consecutive KV streams.

llama.cpp computes one micro-batch per run of consecutive sequence ids when each sequence has its own
KV stream, so a gap between running sequences costs a second graph computation every step."""
import pytest

from backends.base import BackendSettings
from backends.llamacpp import LlamaCppBackend, _num_runs
from serve.models.catalog import embedded_model_path
from serve.sequence import Batch, Request, SamplingParams, Sequence


@pytest.fixture
def backend():
    settings = BackendSettings(model_path=embedded_model_path(), context_length=512, num_parallel=4,
                               num_threads=1, max_batch_tokens=64)
    backend = LlamaCppBackend(settings)
    yield backend
    backend.close()


def _sequence(backend, request_id: str, text: str) -> Sequence:
    request = Request(request_id, "m", text, backend.tokenize(text), SamplingParams(max_tokens=4))
    return Sequence(request, deliver=lambda output: None)


def _seq_ids(backend) -> list[int]:
    return sorted(slot.seq_id for slot in backend._slots if slot.sequence is not None)


def test_runs_of_consecutive_ids():
    assert _num_runs([]) == 0
    assert _num_runs([3]) == 1
    assert _num_runs([2, 0, 1]) == 1
    assert _num_runs([0, 1, 2, 5, 6]) == 2
    assert _num_runs([0, 2, 4]) == 3


def test_a_freed_slot_in_the_middle_is_refilled_before_a_less_recently_used_one(backend):
    sequences = [_sequence(backend, f"r{i}", f"Request number {i} asks about rivers.") for i in range(3)]
    for sequence in sequences:
        backend.admit(sequence)
    assert _seq_ids(backend) == [0, 1, 2]
    backend.step(Batch(released=[sequences[1]]))  # the client of r1 went away
    assert _seq_ids(backend) == [0, 2]
    # slot 3 was never used (least recently used), but taking it would leave a gap at 1
    backend.admit(_sequence(backend, "r3", "Another request, about mountains."))
    assert _seq_ids(backend) == [0, 1, 2]


def test_the_batch_lists_sequences_in_ascending_id_order(backend):
    sequences = [_sequence(backend, f"r{i}", f"Request number {i} asks about rivers.") for i in range(3)]
    for sequence in sequences:
        backend.admit(sequence)
        backend._slot_of[sequence.request_id].pending_token = 42  # as if its prompt were done
    backend._fill_batch(Batch(decode=sequences[::-1]))  # the scheduler may list them in any order
    ids = [backend._batch.seq_id[i][0] for i in range(backend._batch.n_tokens)]
    assert ids == sorted(ids) == [0, 1, 2]
