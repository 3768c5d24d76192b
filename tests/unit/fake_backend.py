"""A backend for engine and pool tests: it generates nothing until told to, like a model that takes as long
as the test wants. It plugs in where llama.cpp or vLLM would (the Backend protocol), so the real Engine and
Scheduler run around it."""
from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Callable

from backends.base import Capabilities
from serve.sequence import Batch, FinishReason, Request, SamplingParams, StepOutput

# How long a test waits for something that takes a few milliseconds before calling it a failure.
TIMEOUT_SECONDS = 5.0


class FakeBackend:
    """`finish(request_id)` ends a request at the next step (queued ones when they run); `fail_next_step`
    makes the next step raise. Both wake the engine through its notify, as vLLM's outputs do."""

    def __init__(self, *, num_parallel: int = 2, context_length: int = 64):
        self.capabilities = Capabilities(name="fake", context_length=context_length, num_parallel=num_parallel,
                                         max_batch_tokens=64, max_prefill_tokens_while_decoding=64)
        self._lock = threading.Lock()  # commands come from the test's thread, steps run on the engine's
        self._finishes: dict[str, FinishReason] = {}
        self._failure: str | None = None
        self._notify: Callable[[], None] = lambda: None
        self.admitted: list[str] = []
        self.released: list[str] = []
        self.num_steps = 0
        self.is_closed = False

    # -- commands from the test ----------------------------------------------------------------------

    def finish(self, *request_ids: str, reason: FinishReason = FinishReason.STOP) -> None:
        """End these requests at the next step (all in the same one, when they run together)."""
        with self._lock:
            self._finishes.update(dict.fromkeys(request_ids, reason))
        self._notify()

    def fail_next_step(self, message: str) -> None:
        with self._lock:
            self._failure = message
        self._notify()

    # -- the Backend protocol ------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        return list(range(len(text.split())))

    chat_template = "{{ messages }}"

    def render_chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str:
        return " ".join(message["content"] for message in messages)

    def set_notify(self, notify: Callable[[], None]) -> None:
        self._notify = notify

    def admit(self, sequence) -> int:
        self.admitted.append(sequence.request_id)
        return 0

    def step(self, batch: Batch) -> list[StepOutput]:
        self.num_steps += 1
        self.released += [s.request_id for s in batch.released]
        with self._lock:
            failure, self._failure = self._failure, None
            if failure is not None:
                raise RuntimeError(failure)
            running = [s.request_id for s in batch.decode] + [c.sequence.request_id for c in batch.prefill]
            ending = {r: self._finishes.pop(r) for r in running if r in self._finishes}
        return [StepOutput(r, text="done", num_new_tokens=1, finish_reason=reason) for r, reason in ending.items()]

    def close(self) -> None:
        self.is_closed = True


def make_request(request_id: str, model: str = "m") -> Request:
    return Request(request_id, model, "a short prompt", [1, 2, 3], SamplingParams(max_tokens=4))


async def collect(stream) -> list[StepOutput]:
    """Every output of a request stream, waiting at most TIMEOUT_SECONDS for it to end."""
    async def read() -> list[StepOutput]:
        return [output async for output in stream]
    return await asyncio.wait_for(read(), TIMEOUT_SECONDS)


async def until(predicate: Callable[[], bool], what: str) -> None:
    """Wait (a test may poll; the code under test may not) until `predicate()` holds."""
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.001)
