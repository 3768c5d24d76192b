"""Which llama.cpp sequence slot a new prompt runs in, and which cached prefix it reuses.

Two things matter, measured on this machine (benchmarks/prefix_cut_steps.py, numbers in its docstring):

- Running sequences must hold consecutive sequence ids. With one KV stream per sequence (kv_unified off),
  llama.cpp puts only consecutive ids into one micro-batch: every gap costs one more graph computation,
  and with it one more read of every weight, each decode step. A slot chosen for its cached prefix alone
  scatters the running sequences over the slots; that, not the partial KV cut, made 8-sequence decode
  steps slower after prefix reuse (the old workaround reused only prefixes of 64 tokens or more).
- Any cached prefix is worth reusing, an exact repeat included: copying a sequence's KV cells into another
  stream (llama_state_seq_get/set_data) costs well under a millisecond per hundred tokens, computing them
  again tens of milliseconds.

- A slot's cache is worth keeping for the prompt that filled it. Running a prompt in a slot cuts that
  slot's cache after their shared prefix; when that prefix is only a chat template's first tokens, the cut
  destroys another prompt's cache to save three tokens of compute. Taking the slot that shares the most
  tokens regardless did so at one client: every short prompt landed in the slot that last held another
  one, a handful of prompts sent in turn shared one slot, and each recomputed all but `<|im_start|>user`
  (TTFT 37 ms against llama-server's 19, benchmarks/prompt_reuse_check.py).

So the slot is one that keeps the running ids consecutive; of those, one whose cache the prompt mostly
reuses in place (its shared prefix is at least half of the prompt, or of that cache: an exact repeat, the
next turn of its conversation, a longer prompt that starts with the whole cache), else the least recently
used (an empty one first). When another slot, running or free, caches a longer prefix of the prompt, its
KV cells are copied into the chosen slot first. At least one prompt token is always left to compute: its
logits give the first output token (llama-server recomputes the last token of an exact repeat the same way).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence as Seq

# A copy serializes every cell of the source sequence; computing a token costs far more than copying one
# (measured: ~0.3 ms to copy 30 cells, ~1 ms a prompt token for a 135M model on 2 cores). A copy is taken
# when the prefix it adds is at least this share of the source's cells (its whole conversation).
MIN_COPY_GAIN_SHARE = 1 / 64
# A slot is reused in place when the prefix it shares with the prompt is at least this share of the prompt
# or of the slot's cache; below both, the cut would destroy most of a cache that another prompt filled.
MIN_IN_PLACE_SHARE = 0.5


@dataclass(frozen=True)
class SlotState:
    """What the choice needs to know of a slot."""

    seq_id: int
    cached_tokens: Seq[int]  # tokens whose KV this sequence id holds, in order
    is_busy: bool  # a running sequence holds it (it may still serve as a copy source)
    last_used: int  # admission counter of its last request; lower is older


@dataclass(frozen=True)
class SlotChoice:
    seq_id: int  # the slot the prompt runs in
    num_reused: int  # prompt tokens whose KV is reused (kept or copied)
    copy_from: int | None = None  # copy this sequence's KV into seq_id first; None: keep seq_id's own


def common_prefix_length(a: Seq[int], b: Seq[int]) -> int:
    return len(os.path.commonprefix([a, b]))


def num_runs(seq_ids: Seq[int]) -> int:
    """Runs of consecutive ids: [0, 1, 2, 5, 6] has 2. A step computes one micro-batch per run."""
    ordered = sorted(seq_ids)
    return 1 + sum(b != a + 1 for a, b in zip(ordered, ordered[1:])) if ordered else 0


def reusable_prefix(slot: SlotState, prompt: Seq[int]) -> int:
    """Prompt tokens `slot` could supply, leaving the prompt's last token to compute."""
    return max(min(common_prefix_length(slot.cached_tokens, prompt), len(prompt) - 1), 0)


def can_reuse_in_place(slot: SlotState, prompt: Seq[int]) -> bool:
    """The prompt reuses most of what `slot` caches, or its prefix in `slot` is most of the prompt."""
    num_shared = common_prefix_length(slot.cached_tokens, prompt)
    return num_shared > 0 and num_shared >= MIN_IN_PLACE_SHARE * min(len(prompt), len(slot.cached_tokens))


def is_copy_worth_it(num_gained: int, num_source_cells: int) -> bool:
    return num_gained > 0 and num_gained >= num_source_cells * MIN_COPY_GAIN_SHARE


def choose_slot(slots: Seq[SlotState], prompt: Seq[int], *, can_copy: bool = True) -> SlotChoice:
    """The slot for `prompt` and the prefix it reuses (see the module docstring). An empty prompt (or
    one whose every position must be computed, passed as []) reuses nothing."""
    free = [slot for slot in slots if not slot.is_busy]
    if not free:
        raise RuntimeError("no free slot; the scheduler must respect num_parallel")
    busy_ids = [slot.seq_id for slot in slots if slot.is_busy]
    fewest_runs = min(num_runs([*busy_ids, slot.seq_id]) for slot in free)
    candidates = [slot for slot in free if num_runs([*busy_ids, slot.seq_id]) == fewest_runs]
    in_place = [slot for slot in candidates if can_reuse_in_place(slot, prompt)]
    if in_place:  # the longest own prefix; among equals the least recently used
        target = max(in_place, key=lambda slot: (reusable_prefix(slot, prompt), -slot.last_used))
    else:  # an empty slot, else the least recently used: recent caches survive longest
        target = min(candidates, key=lambda slot: (bool(slot.cached_tokens), slot.last_used))
    num_kept = reusable_prefix(target, prompt)
    if can_copy:
        source = max(slots, key=lambda slot: (reusable_prefix(slot, prompt), -len(slot.cached_tokens)))
        num_copied = reusable_prefix(source, prompt)
        if source.seq_id != target.seq_id and is_copy_worth_it(num_copied - num_kept, len(source.cached_tokens)):
            return SlotChoice(target.seq_id, num_copied, copy_from=source.seq_id)
    return SlotChoice(target.seq_id, num_kept)
