"""Slot choice of the llama.cpp backend (real model): sequences run in consecutive KV streams.

llama.cpp computes one micro-batch per run of consecutive sequence ids when each sequence has its own
KV stream, so a gap between running sequences costs a second graph computation every step."""
import pytest

from backends.base import BackendSettings
from backends.llamacpp import LlamaCppBackend
from serve.models.catalog import embedded_model_path
from serve.sequence import Batch, PrefillChunk, Request, SamplingParams, Sequence


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


def _generate(backend, request_id: str, prompt: list[int], max_tokens: int = 8) -> tuple[int, int, str]:
    """Admit, prefill and decode greedily to the end; (seq id, prompt tokens reused, text)."""
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    sequence = Sequence(Request(request_id, "m", "", prompt, params), deliver=lambda output: None)
    num_cached = backend.admit(sequence)
    seq_id = backend._slot_of[request_id].seq_id
    outputs = backend.step(Batch(prefill=[PrefillChunk(sequence, num_cached, len(prompt))]))
    text = [outputs[0].text]
    while outputs[0].finish_reason is None:
        outputs = backend.step(Batch(decode=[sequence]))
        text.append(outputs[0].text)
    return seq_id, num_cached, "".join(text)


CHAT = "<|im_start|>user\nIs this review positive or negative? The soup was cold.<|im_end|>\n<|im_start|>assistant\n"


def test_an_exact_repeat_reuses_all_but_its_last_token_and_answers_the_same(backend):
    prompt = backend.tokenize(CHAT)
    first = _generate(backend, "a", prompt)
    again = _generate(backend, "b", prompt)
    assert first[1] == 0 and again[1] == len(prompt) - 1
    assert again[0] == first[0]  # its own slot: nothing to copy
    assert again[2] == first[2]


def test_a_prefix_cached_in_a_far_slot_is_copied_next_to_the_running_ones():
    settings = BackendSettings(model_path=embedded_model_path(), context_length=256, num_parallel=6,
                               num_threads=1, max_batch_tokens=64)
    backend = LlamaCppBackend(settings)
    try:
        prompt = backend.tokenize(CHAT)
        cold = _generate(backend, "cold", prompt)
        assert cold[0] == 0  # slot 0 now caches the prompt
        others = [_sequence(backend, f"r{i}", text) for i, text in enumerate(("Rivers.", "Mountains?", "Lakes!", "Seas"))]
        for sequence in others:
            backend.admit(sequence)
        assert _seq_ids(backend) == [1, 2, 3, 4]
        backend.step(Batch(released=[others[0]]))  # 2, 3, 4 run; 0 (the cache), 1 and 5 are free
        seq_id, num_cached, text = _generate(backend, "warm", prompt)
        # Slot 0 would split the running ids into two runs: slot 5 takes the prompt, slot 0's cache copied in.
        assert (seq_id, num_cached) == (5, len(prompt) - 1)
        assert text == cold[2]
        assert backend._slots[0].cached_tokens[:len(prompt)] == prompt  # the source keeps its cache
    finally:
        backend.close()
