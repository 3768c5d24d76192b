"""Scheduler admission, budget, fairness and abort, without a model."""
import pytest

from serve.errors import OverloadedError
from serve.runtime.scheduler import Scheduler
from serve.sequence import Request, SamplingParams, Sequence, StepOutput, FinishReason


def make_sequence(request_id: str, num_prompt_tokens: int, delivered: list | None = None) -> Sequence:
    request = Request(request_id, "m", "p", list(range(num_prompt_tokens)), SamplingParams())
    return Sequence(request, deliver=(delivered.append if delivered is not None else lambda output: None))


PREFILL_TOKENS_WHILE_DECODING = 256


def make_scheduler(num_parallel=4, max_waiting=2, max_batch_tokens=64, cached=0, admit=None) -> Scheduler:
    return Scheduler(num_parallel=num_parallel, max_waiting=max_waiting, max_batch_tokens=max_batch_tokens,
                     max_prefill_tokens_while_decoding=PREFILL_TOKENS_WHILE_DECODING,
                     admit=admit or (lambda sequence: cached))


def test_admits_up_to_num_parallel_and_queues_the_rest():
    scheduler = make_scheduler(num_parallel=2, max_waiting=5)
    for i in range(4):
        scheduler.add(make_sequence(f"r{i}", 4))
    batch = scheduler.schedule()
    assert [c.sequence.request_id for c in batch.prefill] == ["r0", "r1"]
    assert scheduler.num_waiting == 2


def test_queue_bound_raises_overloaded_with_retry_after():
    scheduler = make_scheduler(num_parallel=1, max_waiting=1)
    scheduler.add(make_sequence("a", 4))
    scheduler.add(make_sequence("b", 4))
    with pytest.raises(OverloadedError) as raised:
        scheduler.add(make_sequence("c", 4))
    assert raised.value.status_code == 429 and raised.value.retry_after >= 1


def test_decode_tokens_first_then_prefill_within_budget():
    scheduler = make_scheduler(num_parallel=4, max_batch_tokens=64)
    running = make_sequence("running", 4)
    scheduler.add(running)
    scheduler.postprocess(scheduler.schedule(), [])  # its whole prompt fits: now decoding
    scheduler.add(make_sequence("long", 1000))
    batch = scheduler.schedule()
    assert batch.decode == [running]
    prefill_tokens = sum(c.num_tokens for c in batch.prefill)
    assert 0 < prefill_tokens and len(batch.decode) + prefill_tokens <= 64


def test_prefill_budget_is_shared_fairly_between_long_and_short_prompts():
    scheduler = make_scheduler(num_parallel=4, max_batch_tokens=100)
    scheduler.add(make_sequence("long", 5000))
    scheduler.add(make_sequence("short", 10))
    scheduler.add(make_sequence("medium", 80))
    grants = {c.sequence.request_id: c.num_tokens for c in scheduler.schedule().prefill}
    assert grants["short"] == 10  # gets all it needs
    assert grants["medium"] == 45 and grants["long"] == 45  # the rest is split evenly
    assert sum(grants.values()) == 100


def test_chunks_continue_where_the_previous_step_stopped_and_reuse_cached_tokens():
    scheduler = make_scheduler(num_parallel=1, max_batch_tokens=50, cached=30)
    sequence = make_sequence("a", 100)
    scheduler.add(sequence)
    first = scheduler.schedule()
    assert (first.prefill[0].start, first.prefill[0].end) == (30, 80)
    scheduler.postprocess(first, [])
    second = scheduler.schedule()
    assert (second.prefill[0].start, second.prefill[0].end) == (80, 100) and second.prefill[0].is_last


def test_aborted_running_sequence_is_released_and_its_slot_reused():
    scheduler = make_scheduler(num_parallel=1, max_waiting=1)
    first, second = make_sequence("a", 4), make_sequence("b", 4)
    scheduler.add(first)
    scheduler.add(second)
    scheduler.postprocess(scheduler.schedule(), [])
    first.is_aborted = True
    batch = scheduler.schedule()
    assert batch.released == [first] and first not in scheduler.running
    assert batch.prefill == []  # the backend frees the slot in this step (admitting now found it busy)
    scheduler.postprocess(batch, [])
    assert [c.sequence for c in scheduler.schedule().prefill] == [second]


def test_aborted_waiting_sequence_is_dropped_without_running():
    admitted: list[str] = []
    scheduler = make_scheduler(num_parallel=1, max_waiting=2,
                               admit=lambda sequence: admitted.append(sequence.request_id) or 0)
    scheduler.add(make_sequence("a", 4))
    waiting = make_sequence("b", 4)
    scheduler.add(waiting)
    scheduler.schedule()
    waiting.is_aborted = True
    scheduler.postprocess(scheduler.schedule(), [StepOutput("a", finish_reason=FinishReason.STOP)])
    scheduler.schedule()  # the slot is free again, and nobody takes it
    assert scheduler.num_waiting == 0 and admitted == ["a"] and not scheduler.has_work


def test_postprocess_delivers_outputs_and_retires_finished_sequences():
    delivered: list = []
    scheduler = make_scheduler()
    sequence = make_sequence("a", 4, delivered)
    scheduler.add(sequence)
    batch = scheduler.schedule()
    scheduler.postprocess(batch, [StepOutput("a", text="hi", num_new_tokens=1)])
    scheduler.postprocess(scheduler.schedule(), [StepOutput("a", num_new_tokens=1, finish_reason=FinishReason.STOP)])
    assert [o.text for o in delivered] == ["hi", ""]
    assert sequence.num_output_tokens == 2 and sequence.finish_reason is FinishReason.STOP
    assert scheduler.num_running == 0


def test_internal_batching_backend_gets_whole_prompts():
    # vLLM states a step budget with room for every running prompt whole (num_parallel x context).
    whole_prompts = 2 * 1024
    scheduler = Scheduler(num_parallel=2, max_waiting=2, max_batch_tokens=whole_prompts,
                          max_prefill_tokens_while_decoding=whole_prompts, admit=lambda s: 0)
    scheduler.add(make_sequence("a", 500))
    first = scheduler.schedule()
    chunk = first.prefill[0]
    assert (chunk.start, chunk.end) == (0, 500)
    scheduler.postprocess(first, [])
    scheduler.add(make_sequence("b", 1000))  # while "a" decodes: still whole
    batch = scheduler.schedule()
    assert [s.request_id for s in batch.decode] == ["a"]
    assert [(c.start, c.end) for c in batch.prefill] == [(0, 1000)]


def test_a_sequence_the_backend_cannot_start_fails_alone():
    delivered: list = []

    def admit(sequence):
        if sequence.request_id == "bad":
            raise ValueError("sampler refused")
        return 0

    scheduler = make_scheduler(num_parallel=2, max_batch_tokens=16, admit=admit)
    scheduler.add(make_sequence("bad", 4, delivered))
    scheduler.add(make_sequence("good", 4))
    batch = scheduler.schedule()
    assert [c.sequence.request_id for c in batch.prefill] == ["good"]
    assert delivered[0].finish_reason is FinishReason.ABORT and "sampler refused" in delivered[0].error


def test_prefill_is_capped_while_streams_decode_but_takes_the_whole_step_when_idle():
    scheduler = make_scheduler(num_parallel=4, max_batch_tokens=2048)
    scheduler.add(make_sequence("burst-1", 900))
    scheduler.add(make_sequence("burst-2", 900))
    first = scheduler.schedule()
    assert sum(c.num_tokens for c in first.prefill) == 1800  # nothing decoding: one step for both
    scheduler.postprocess(first, [])
    scheduler.add(make_sequence("late", 5000))
    second = scheduler.schedule()
    assert len(second.decode) == 2
    assert sum(c.num_tokens for c in second.prefill) == PREFILL_TOKENS_WHILE_DECODING
