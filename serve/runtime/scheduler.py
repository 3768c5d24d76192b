"""Which sequences run in the next step, and how much of each prompt gets computed.

- Admission: up to `num_parallel` sequences run; the rest wait in a FIFO bounded by `max_waiting`
  (past it, submit raises OverloadedError -> HTTP 429 with Retry-After).
- Budget: every step carries one decode token per running sequence first, so running streams never
  stall; prompt chunks fill the rest of `max_batch_tokens` (chunked prefill), but only
  `max_prefill_tokens_while_decoding` of it while streams are running. The backend states both (its
  Capabilities): a backend that batches internally (vLLM) states room for whole prompts, so the same code
  only admits and hands each prompt over in one piece.
- Fairness: the prefill budget is split evenly between all prefilling sequences (water-filling), so a
  long prompt advances alongside short ones instead of taking the whole budget as llama-server does.
- Speculative decoding: a backend that speculates (Capabilities.max_draft_tokens_per_step) may add draft
  tokens for its decoding sequences, within what the decode tokens and prompt chunks leave of the budget.
- Abort: a sequence whose client left is dropped from the queue, or released by the backend at the next
  step.

`add` and `abort` run on the event loop thread; everything else on the engine thread.
"""
from __future__ import annotations

import collections
import logging
import threading
from typing import Callable

from serve.errors import OverloadedError
from serve.sequence import Batch, FinishReason, PrefillChunk, Sequence, StepOutput

log = logging.getLogger("serve.runtime.scheduler")


class Scheduler:
    def __init__(self, *, num_parallel: int, max_waiting: int, max_batch_tokens: int,
                 max_prefill_tokens_while_decoding: int, admit: Callable[[Sequence], int],
                 max_draft_tokens_per_step: int = 0):
        self._num_parallel = num_parallel
        self._max_waiting = max_waiting
        self._max_batch_tokens = max_batch_tokens
        self._max_prefill_tokens_while_decoding = max_prefill_tokens_while_decoding
        self._max_draft_tokens_per_step = max_draft_tokens_per_step
        self._admit = admit
        self._lock = threading.Lock()  # guards `waiting`, shared with the event loop thread
        self.waiting: collections.deque[Sequence] = collections.deque()
        self.running: list[Sequence] = []

    # -- event loop side ---------------------------------------------------------------------------

    def add(self, sequence: Sequence) -> None:
        with self._lock:
            free_slots = self._num_parallel - len(self.running)
            if len(self.waiting) >= self._max_waiting + max(free_slots, 0):
                raise OverloadedError(
                    f"server busy: {len(self.running)} requests running and {len(self.waiting)} waiting "
                    f"(--max-queue {self._max_waiting}); retry shortly", retry_after=self._retry_after())
            self.waiting.append(sequence)

    def _retry_after(self) -> int:
        return max(1, len(self.waiting) // max(self._num_parallel, 1))

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # -- engine thread side --------------------------------------------------------------------------

    def schedule(self) -> Batch:
        batch = Batch()
        self._drop_aborted(batch)
        # The backend frees a released sequence's slot in this step: admitting into it now would find it busy.
        self._admit_waiting(num_releasing=len(batch.released))
        batch.decode = [s for s in self.running if not s.is_prefilling]
        prefilling = [s for s in self.running if s.is_prefilling]
        batch.prefill = self._prefill_chunks(prefilling, self._prefill_budget(len(batch.decode)))
        batch.num_draft_tokens = self._draft_budget(batch)
        return batch

    def _drop_aborted(self, batch: Batch) -> None:
        with self._lock:
            if any(s.is_aborted for s in self.waiting):
                self.waiting = collections.deque(s for s in self.waiting if not s.is_aborted)
        batch.released = [s for s in self.running if s.is_aborted]
        self.running = [s for s in self.running if not s.is_aborted]

    def _admit_waiting(self, num_releasing: int = 0) -> None:
        while len(self.running) + num_releasing < self._num_parallel:
            with self._lock:
                if not self.waiting:
                    return
                sequence = self.waiting.popleft()
            try:
                sequence.num_computed_tokens = self._admit(sequence)
            except Exception as exc:  # this request cannot run; the others can
                log.exception("could not start %s", sequence.request_id)
                sequence.deliver(StepOutput(sequence.request_id, finish_reason=FinishReason.ABORT,
                                            error=f"the backend could not start this request: {exc}"))
                continue
            self.running.append(sequence)

    def _prefill_budget(self, num_decoding: int) -> int:
        budget = self._max_batch_tokens - num_decoding
        if num_decoding:
            budget = min(budget, self._max_prefill_tokens_while_decoding)
        return max(budget, 0)

    def _draft_budget(self, batch: Batch) -> int:
        """Speculative drafts get only what decode tokens and prompt chunks leave of the step budget:
        prompts come first (time to first token), drafts are a bonus for the running streams."""
        if not batch.decode:
            return 0
        used = len(batch.decode) + sum(chunk.num_tokens for chunk in batch.prefill)
        return max(min(self._max_draft_tokens_per_step, self._max_batch_tokens - used), 0)

    @staticmethod
    def _prefill_chunks(prefilling: list[Sequence], budget: int) -> list[PrefillChunk]:
        """Split `budget` evenly; what a short prompt does not need goes to the others."""
        grants = {s.request_id: 0 for s in prefilling}
        pending = sorted(prefilling, key=lambda s: s.num_prompt_tokens_left)
        while pending and budget > 0:
            share = max(budget // len(pending), 1)
            sequence = pending.pop(0)
            grant = min(share, sequence.num_prompt_tokens_left, budget)
            grants[sequence.request_id] = grant
            budget -= grant
        return [PrefillChunk(s, s.num_computed_tokens, s.num_computed_tokens + grants[s.request_id])
                for s in prefilling if grants[s.request_id] > 0]

    def postprocess(self, batch: Batch, outputs: list[StepOutput]) -> None:
        """Advance prompt progress, deliver outputs, retire finished sequences."""
        for chunk in batch.prefill:
            chunk.sequence.num_computed_tokens = chunk.end
        by_id = {s.request_id: s for s in self.running}
        finished = set()
        for output in outputs:
            sequence = by_id.get(output.request_id)
            if sequence is None:
                continue
            sequence.num_output_tokens += output.num_new_tokens
            if output.num_cached_tokens is not None:
                sequence.num_cached_tokens = output.num_cached_tokens
            if output.finish_reason is not None:
                sequence.finish_reason = output.finish_reason
                finished.add(sequence.request_id)
            sequence.deliver(output)
        if finished:
            self.running = [s for s in self.running if s.request_id not in finished]

    def abort_all(self) -> list[Sequence]:
        """Take every sequence out (shutdown); the caller tells their clients."""
        with self._lock:
            everyone = list(self.waiting) + self.running
            self.waiting.clear()
        self.running = []
        return everyone
