"""The llama.cpp backend's slot choice (backends/slot_choice.py), a pure function: no model needed."""
import pytest

from backends.slot_choice import (SlotChoice, SlotState, can_reuse_in_place, choose_slot, is_copy_worth_it, num_runs,
                                  reusable_prefix)

PROMPT = [1, 10, 11, 12, 13, 14]


def _slots(*specs: tuple[list[int], bool, int]) -> list[SlotState]:
    """One SlotState per (cached tokens, busy, last used), seq ids in order."""
    return [SlotState(i, cached, busy, used) for i, (cached, busy, used) in enumerate(specs)]


def test_runs_of_consecutive_ids():
    assert num_runs([]) == 0
    assert num_runs([3]) == 1
    assert num_runs([2, 0, 1]) == 1
    assert num_runs([0, 1, 2, 5, 6]) == 2
    assert num_runs([0, 2, 4]) == 3


def test_the_last_prompt_token_is_always_left_to_compute():
    exact = SlotState(0, PROMPT + [99, 98], False, 0)
    assert reusable_prefix(exact, PROMPT) == len(PROMPT) - 1
    assert reusable_prefix(exact, []) == 0
    assert reusable_prefix(SlotState(0, [], False, 0), PROMPT) == 0


def test_an_exact_repeat_reuses_all_but_the_last_token_of_its_own_slot():
    slots = _slots((PROMPT, False, 5), ([], False, 1))
    assert choose_slot(slots, PROMPT) == SlotChoice(0, len(PROMPT) - 1)


def test_a_short_shared_prefix_is_reused():
    # Two tokens shared: the old rule wanted 64.
    slots = _slots(([1, 10, 77, 78], False, 3), ([], False, 1))
    assert choose_slot(slots, PROMPT) == SlotChoice(0, 2)


def test_without_any_prefix_the_least_recently_used_slot_is_taken():
    slots = _slots(([5, 6], False, 3), ([7, 8], False, 1), ([9], False, 2))
    assert choose_slot(slots, PROMPT) == SlotChoice(1, 0)


def test_running_ids_stay_consecutive_and_the_prefix_is_copied_in():
    # 0 and 1 run; slot 5 (free, far away) caches the prompt. Taking 5 would split every decode step
    # into two micro-batches: slot 2 is taken and 5's cache copied into it.
    slots = _slots(([], True, 1), ([], True, 2), ([3, 3], False, 0), ([], False, 0), ([], False, 0),
                   (PROMPT + [50], False, 9))
    assert choose_slot(slots, PROMPT) == SlotChoice(2, len(PROMPT) - 1, copy_from=5)


def test_a_running_sequence_can_be_the_copy_source():
    # Eight clients sending the same prompt: the first one's KV serves the others while it still runs.
    slots = _slots((PROMPT + [40, 41], True, 1), ([], False, 0))
    assert choose_slot(slots, PROMPT) == SlotChoice(1, len(PROMPT) - 1, copy_from=0)


def test_no_copy_when_the_adjacent_slot_already_holds_as_much():
    slots = _slots(([], True, 1), (PROMPT, False, 0), ([], False, 0), (PROMPT, False, 5))
    assert choose_slot(slots, PROMPT) == SlotChoice(1, len(PROMPT) - 1)


def test_no_copy_when_copying_is_not_allowed():
    slots = _slots(([], True, 1), ([], False, 0), ([], False, 0), (PROMPT, False, 5))
    assert choose_slot(slots, PROMPT, can_copy=False) == SlotChoice(1, 0)


def test_nothing_is_reused_for_an_empty_prompt():
    slots = _slots((PROMPT, False, 1), ([], False, 0))
    assert choose_slot(slots, []) == SlotChoice(1, 0)


def test_a_copy_must_pay_for_the_cells_it_moves():
    assert is_copy_worth_it(1, 10)
    assert not is_copy_worth_it(0, 10)
    assert not is_copy_worth_it(2, 4096)  # a whole long conversation serialized to gain two tokens
    assert is_copy_worth_it(64, 4096)


def test_an_exact_repeat_keeps_its_slot_however_long_the_answer_cached_after_it():
    slots = _slots(([], False, 0), (PROMPT + list(range(100, 164)), False, 4))
    assert choose_slot(slots, PROMPT) == SlotChoice(1, len(PROMPT) - 1)


def test_a_prompt_sharing_only_a_template_header_leaves_the_other_prompts_cache_alone():
    # Slot 0 holds another short chat prompt and its answer; they share [1, 10] (`<|im_start|>user`).
    # Cutting slot 0 after two tokens would destroy its cache: the prompt goes to the empty slot, and
    # the two shared tokens are copied there.
    other = [1, 10, 20, 21, 22, 23, 24, 25, 26, 27]
    slots = _slots((other, False, 5), ([], False, 0))
    assert not can_reuse_in_place(slots[0], PROMPT)
    assert choose_slot(slots, PROMPT) == SlotChoice(1, 2, copy_from=0)


def test_in_place_reuse_needs_half_of_the_prompt_or_half_of_the_cache():
    assert can_reuse_in_place(SlotState(0, [1, 10, 11, 99], False, 0), PROMPT)  # half of the prompt
    assert can_reuse_in_place(SlotState(0, [1, 10], False, 0), PROMPT)  # the whole cache: nothing lost
    assert not can_reuse_in_place(SlotState(0, [1, 10, 20, 21, 22], False, 0), PROMPT)
    assert not can_reuse_in_place(SlotState(0, [], False, 0), PROMPT)


def test_prompts_sent_in_turn_each_keep_a_slot_of_their_own():
    # One client cycling through three short chat prompts (the same first two tokens) with four slots:
    # after the first round every request is an exact repeat of its own slot's prompt.
    prompts = [[1, 10, 30 + i, 40 + i, 50 + i] for i in range(3)]
    cached: list[list[int]] = [[] for _ in range(4)]
    last_used = [0] * 4
    for turn in range(9):
        prompt = prompts[turn % 3]
        choice = choose_slot([SlotState(i, cached[i], False, last_used[i]) for i in range(4)], prompt)
        if turn >= 3:
            assert choice == SlotChoice(choice.seq_id, len(prompt) - 1)
        cached[choice.seq_id] = prompt + [90, 91, 92, 93, 94, 95]  # the prompt and its answer
        last_used[choice.seq_id] = turn + 1


def test_with_every_slot_holding_other_prompts_the_least_recently_used_is_replaced():
    slots = _slots(([1, 10, 20, 21, 22], False, 7), ([1, 10, 30, 31, 32], False, 2), ([1, 10, 40, 41, 42], False, 5))
    assert choose_slot(slots, PROMPT) == SlotChoice(1, 2)  # its own two shared tokens: no copy needed


def test_every_slot_busy_is_a_scheduler_bug():
    with pytest.raises(RuntimeError, match="num_parallel"):
        choose_slot(_slots(([], True, 1)), PROMPT)
