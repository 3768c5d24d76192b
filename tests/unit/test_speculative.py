"""Speculative decoding's model-free half (backends/speculative.py): prompt-lookup drafts, the adaptive
draft length, the accepted run, the budget split; and the scheduler's draft budget."""
from backends.speculative import (DRAFT_MAX, DRAFT_START, FAILURES_BEFORE_PAUSE, NGRAM_MAX, PAUSE_STEPS_FIRST,
                                  DraftLength, PromptLookup, Speculation, accepted_run, share_budget)
from serve.runtime.scheduler import Scheduler
from serve.sequence import Request, SamplingParams, Sequence


def test_lookup_drafts_what_followed_the_earlier_occurrence_of_the_suffix():
    # ... 5 6 7 8 9 ... then the output reaches 5 6 7: the draft is what followed 5 6 7 before.
    lookup = PromptLookup([1, 2, 5, 6, 7, 8, 9, 10, 3, 4, 5, 6, 7])
    assert lookup.draft(3) == [8, 9, 10]
    assert lookup.draft(100) == [8, 9, 10, 3, 4, 5, 6, 7]  # up to the end of the history
    assert lookup.draft(0) == []


def test_lookup_prefers_the_longest_match_then_the_latest():
    # The suffix 2 3 occurs after 1 (followed by 40) and after 9 (followed by 50); the history ends 9 2 3.
    assert PromptLookup([1, 2, 3, 40, 9, 2, 3, 50, 7, 9, 2, 3]).draft(1) == [50]
    # Two equally long matches of 2 3: the latest one wins.
    assert PromptLookup([2, 3, 40, 2, 3, 50, 8, 2, 3]).draft(1) == [50]


def test_lookup_needs_a_match_of_two_tokens():
    assert PromptLookup([5, 1, 9, 5]).draft(4) == []  # only the last token matches
    assert PromptLookup([4, 5, 1, 9, 4, 5]).draft(4) == [1, 9, 4, 5]
    assert PromptLookup([7]).draft(4) == [] and PromptLookup([]).draft(4) == []


def test_lookup_grows_with_the_output():
    lookup = PromptLookup([10, 11, 12, 13, 14])
    assert lookup.draft(2) == []
    lookup.extend([20, 11, 12])
    assert lookup.draft(2) == [13, 14]


def test_lookup_caps_the_compared_suffix():
    history = list(range(20)) + [99] + list(range(20))
    assert PromptLookup(history).draft(1) == [99]  # a 20-token match, compared up to NGRAM_MAX
    assert NGRAM_MAX < 20


def test_draft_length_doubles_on_full_acceptance_and_falls_to_what_was_accepted():
    length = DraftLength()
    assert length.next_length() == DRAFT_START
    length.record(DRAFT_START, DRAFT_START)
    assert length.next_length() == DRAFT_START * 2
    for _ in range(10):
        length.record(length.current, length.current)
    assert length.next_length() == DRAFT_MAX
    length.record(DRAFT_MAX, 3)
    assert length.next_length() == 4


def test_draft_length_pauses_after_failures_and_the_pause_grows():
    length = DraftLength()
    for _ in range(FAILURES_BEFORE_PAUSE):
        length.record(length.next_length(), 0)
    assert [length.next_length() for _ in range(PAUSE_STEPS_FIRST)] == [0] * PAUSE_STEPS_FIRST
    assert length.next_length() == 1  # tries again, with one token
    length.record(1, 0)
    assert all(length.next_length() == 0 for _ in range(PAUSE_STEPS_FIRST * 2))
    length.record(0, 0)  # nothing drafted: no verdict
    assert length.num_failures == FAILURES_BEFORE_PAUSE + 1


def test_an_accepted_token_ends_the_failures():
    length = DraftLength()
    length.record(4, 0)
    length.record(2, 1)
    length.record(2, 0)
    assert length.num_paused_steps == 0 and length.next_length() == 1


def test_accepted_run_is_the_common_prefix():
    assert accepted_run([5, 6, 7], [5, 6, 9]) == 2  # 9: sampled where 7 was drafted
    assert accepted_run([5, 6], [5, 6, 8]) == 2  # all accepted, 8 sampled after them
    assert accepted_run([5], [4]) == 0
    assert accepted_run([], [4]) == 0


def test_speculation_feeds_every_emitted_token_into_the_lookup_and_counts():
    speculation = Speculation([1, 2, 3, 4, 1, 2])
    draft = speculation.propose(limit=2)
    assert draft == [3, 4]
    assert speculation.record(draft, [3, 9, ]) == 1
    assert speculation.num_drafted == 2 and speculation.num_accepted == 1
    assert speculation.propose(limit=0) == []


def test_budget_is_shared_evenly_and_what_one_leaves_goes_to_the_others():
    assert share_budget({0: 2, 1: 16, 2: 16}, 20) == {0: 2, 1: 9, 2: 9}
    assert share_budget({0: 4, 1: 0}, 20) == {0: 4, 1: 0}
    assert share_budget({0: 8, 1: 8}, 0) == {0: 0, 1: 0}
    assert sum(share_budget({i: 16 for i in range(8)}, 5).values()) == 5


def _running(scheduler: Scheduler, request_id: str, num_prompt: int) -> Sequence:
    sequence = Sequence(Request(request_id, "m", "p", list(range(num_prompt)), SamplingParams()), deliver=lambda o: None)
    scheduler.add(sequence)
    return sequence


def test_scheduler_gives_drafts_only_what_decode_and_prompts_leave():
    scheduler = Scheduler(num_parallel=4, max_waiting=4, max_batch_tokens=40, max_prefill_tokens_while_decoding=16,
                          admit=lambda sequence: 0, max_draft_tokens_per_step=32)
    _running(scheduler, "a", 4)
    first = scheduler.schedule()
    assert first.num_draft_tokens == 0  # nothing decodes yet
    scheduler.postprocess(first, [])
    assert scheduler.schedule().num_draft_tokens == 32  # one decode token; the cap binds
    _running(scheduler, "b", 100)
    batch = scheduler.schedule()
    assert sum(chunk.num_tokens for chunk in batch.prefill) == 16  # the prompt comes first
    assert batch.num_draft_tokens == 40 - 1 - 16


def test_a_backend_without_speculation_gets_no_draft_budget():
    scheduler = Scheduler(num_parallel=2, max_waiting=2, max_batch_tokens=64, max_prefill_tokens_while_decoding=16,
                          admit=lambda sequence: 0)
    _running(scheduler, "a", 4)
    scheduler.postprocess(scheduler.schedule(), [])
    assert scheduler.schedule().num_draft_tokens == 0
