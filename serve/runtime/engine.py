"""One model's engine: a loop thread that drives the scheduler and the backend.

    HTTP route -> Engine.submit(request) -> loop thread: schedule -> backend.step -> postprocess
         ^                                                  |
         +------------- per-request asyncio queue <---------+

The loop thread is the only one touching the backend and the running sequences. Outputs cross back to
the event loop into one asyncio queue per request: a step's outputs are collected (`_Outbox`) and handed
over with one `loop.call_soon_threadsafe` after the step, not one per output, so a step of 16 streams wakes
the event loop once (each wake-up is a syscall on this thread and a pass of the loop, on cores the model's
threads need).

A step that produced nothing and computed no prompt (nothing to do, or a backend generating on threads of
its own, like vLLM, with nothing new yet) puts the loop to sleep on one wake-up event: set by a new request,
an abort, a stop, or the backend itself when output is ready. No timeout, no polling.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Callable

from backends.base import Backend, Capabilities, Pooler
from serve.errors import ContextLengthError, InvalidRequestError, OverloadedError, ServerStoppingError
from serve.runtime import metrics
from serve.runtime.scheduler import Scheduler
from serve.sequence import Batch, FinishReason, Request, Sequence, StepOutput

log = logging.getLogger("serve.runtime.engine")


class RequestStream:
    """Async iterator of StepOutput for one request; ends after the output carrying finish_reason.
    It logs the request's line and records its metrics, on the event loop, as the outputs arrive."""

    def __init__(self, engine: "Engine", sequence: Sequence, queue: asyncio.Queue):
        self._engine = engine
        self._sequence = sequence
        self._queue = queue
        self._submitted_at = time.perf_counter()
        self._first_token_at: float | None = None
        self._last_token_at = 0.0
        self._num_output_tokens = 0  # delivered to the client: what its usage reports
        self._num_drafted_tokens = self._num_accepted_tokens = 0  # speculative decoding
        self._observe_inter_token = metrics.inter_token_latency(engine.model_name)
        self._done = False

    @property
    def request_id(self) -> str:
        return self._sequence.request_id

    @property
    def num_prompt_tokens(self) -> int:
        return self._sequence.num_prompt_tokens

    @property
    def num_cached_tokens(self) -> int:
        """Prompt tokens reused from the KV cache (prefix reuse), known once the request is admitted."""
        return self._sequence.num_cached_tokens

    def __aiter__(self) -> "RequestStream":
        return self

    async def __anext__(self) -> StepOutput:
        if self._done:
            raise StopAsyncIteration
        output: StepOutput = await self._queue.get()
        if output.num_new_tokens:
            now = time.perf_counter()
            if self._first_token_at is None:
                self._first_token_at = now
            else:
                self._observe_inter_token(now - self._last_token_at)
            self._last_token_at = now
            self._num_output_tokens += output.num_new_tokens
            self._num_drafted_tokens += output.num_drafted_tokens
            self._num_accepted_tokens += output.num_accepted_tokens
        if output.finish_reason is not None:
            self._done = True
            self._finished(output.finish_reason)
        return output

    def abort(self) -> None:
        """The client went away: free the slot and its KV cache at the next step. Idempotent."""
        if not self._done:
            self._done = True
            self._sequence.is_aborted = True
            self._engine.wake()
            self._finished(FinishReason.ABORT)

    def _finished(self, reason: FinishReason) -> None:
        now = time.perf_counter()
        ttft = self._first_token_at - self._submitted_at if self._first_token_at else None
        admitted_at = self._sequence.admitted_at
        metrics.record_request(
            self._engine.model_name, finish_reason=reason.value, num_prompt_tokens=self.num_prompt_tokens,
            num_cached_tokens=self.num_cached_tokens, num_output_tokens=self._num_output_tokens,
            queue_seconds=None if admitted_at is None else admitted_at - self._submitted_at,
            ttft_seconds=ttft, e2e_seconds=now - self._submitted_at, num_drafted_tokens=self._num_drafted_tokens,
            num_accepted_tokens=self._num_accepted_tokens)
        log.info("%s model=%s prompt=%d cached=%d output=%d ttft=%s duration=%.0fms finish=%s%s",
                 self.request_id, self._sequence.request.model, self.num_prompt_tokens,
                 self.num_cached_tokens, self._sequence.num_output_tokens,
                 "-" if ttft is None else f"{ttft * 1000:.0f}ms", (now - self._submitted_at) * 1000, reason.value,
                 self._speculation_words())

    def _speculation_words(self) -> str:
        """The request's draft acceptance for its log line (nothing when it drafted nothing)."""
        drafted, accepted = self._num_drafted_tokens, self._num_accepted_tokens
        return f" drafted={drafted} accepted={accepted} ({accepted / drafted:.0%})" if drafted else ""


class _Outbox:
    """The outputs of one engine step, per event loop, until `send` hands each loop its share in one call.
    Filled and sent on the engine thread only."""

    def __init__(self) -> None:
        self._pending: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, StepOutput]]] = {}

    def for_queue(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> Callable[[StepOutput], None]:
        """A sequence's `deliver`: its outputs go to `queue` on `loop` at the next `send`."""
        return lambda output: self._pending.setdefault(loop, []).append((queue, output))

    def send(self) -> None:
        pending, self._pending = self._pending, {}
        for loop, items in pending.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:  # the event loop is already closed: nobody is listening
                pass


def _put_all(items: list[tuple[asyncio.Queue, StepOutput]]) -> None:
    for queue, output in items:
        queue.put_nowait(output)


class Engine:
    """Serves one loaded model; `submit` is called on the event loop thread."""

    def __init__(self, model_name: str, backend: Backend, *, max_queue: int, model_path: Path | None = None,
                 tool_format: str | None = None, reasoning_format: str | None = None,
                 supported_tasks: frozenset[str] = frozenset({"chat"}), pooler: Pooler | None = None,
                 matryoshka: bool = False):
        self.model_name = model_name
        self.supported_tasks = supported_tasks  # chat, embeddings, rerank, ... (serve/models/tasks.py)
        self.pooler = pooler  # the pooling side: embeddings or rerank scores, on a thread of its own
        self.matryoshka = matryoshka  # embeddings: a leading part of the vector is an embedding too
        self._num_pooling = 0  # pooling requests in flight (counted on the event loop)
        self._max_pooling = max_queue + 1
        self.model_path = model_path  # the GGUF file or Hugging Face directory the weights came from
        self.tool_format = tool_format  # the catalog's; None: the API recognises it from the chat template
        self.reasoning_format = reasoning_format  # the catalog's; None: the model does not reason (or is unlisted)
        self.backend = backend
        caps: Capabilities = backend.capabilities
        self.capabilities = caps
        self.scheduler = Scheduler(
            num_parallel=caps.num_parallel, max_waiting=max_queue, max_batch_tokens=caps.max_batch_tokens,
            max_prefill_tokens_while_decoding=caps.max_prefill_tokens_while_decoding, admit=self._admit,
            max_draft_tokens_per_step=caps.max_draft_tokens_per_step)
        self._wakeup = threading.Event()
        self._outbox = _Outbox()
        self._stopping = False
        self._is_admitting = True
        self._on_idle: Callable[[], None] = lambda: None
        backend.set_notify(self.wake)
        self._thread = threading.Thread(target=self._run, name=f"engine-{model_name}", daemon=True)
        self._thread.start()

    # -- event loop side -------------------------------------------------------------------------------

    @property
    def chat_template(self) -> str:
        return self.backend.chat_template

    def render_chat(self, messages: list[dict], tools: list[dict] | None = None, **template_kwargs) -> str:
        try:
            return self.backend.render_chat(messages, tools, **template_kwargs)
        except ValueError as exc:  # the template's raise_exception, e.g. roles out of order
            raise InvalidRequestError(str(exc), param="messages") from None

    def tokenize(self, text: str) -> list[int]:
        return self.backend.tokenize(text)

    def submit(self, request: Request) -> RequestStream:
        """Queue a request; raises at once when it cannot be served (too long, queue full)."""
        if self._stopping or not self._is_admitting:
            raise ServerStoppingError("the server is shutting down; retry against another instance")
        self._validate(request)
        queue: asyncio.Queue = asyncio.Queue()
        sequence = Sequence(request, deliver=self._outbox.for_queue(asyncio.get_running_loop(), queue))
        stream = RequestStream(self, sequence, queue)
        self.scheduler.add(sequence)
        self.wake()
        return stream

    def _validate(self, request: Request) -> None:
        num_prompt = len(request.prompt_token_ids)
        limit = self.capabilities.context_length
        if num_prompt == 0:
            raise InvalidRequestError("the prompt is empty", param="prompt")
        if num_prompt >= limit:
            raise ContextLengthError(
                f"the prompt has {num_prompt} tokens, but this model's context is {limit} tokens per request "
                f"(prompt plus output); shorten the prompt or start the server with a larger --ctx",
                param="messages" if request.messages is not None else "prompt")
        vocab_size = self.capabilities.vocab_size
        bad = [t for t in request.params.logit_bias if vocab_size and not 0 <= t < vocab_size]
        if bad:
            raise InvalidRequestError(f"logit_bias token ids {bad} are outside the vocabulary (0..{vocab_size - 1})",
                                      param="logit_bias")

    def wake(self) -> None:
        self._wakeup.set()

    async def pool(self, request_id: str, inputs: list[list[int]]) -> list[list[float]]:
        """The pooler's output for each input (an embedding, not normalized, or a rerank score as a list of
        one). It runs on the pooler's own thread (or vLLM engine), not on this engine's loop: see
        backends/llamacpp_embed.py. A request cancelled before its batch starts is skipped."""
        if self._stopping or not self._is_admitting:
            raise ServerStoppingError("the server is shutting down; retry against another instance")
        if self.pooler is None:
            raise InvalidRequestError(f"model {self.model_name} does not pool (no embeddings, no rerank)")
        if self._num_pooling >= self._max_pooling:
            raise OverloadedError(f"{self._num_pooling} embedding or rerank requests are already running for "
                                  f"{self.model_name}; retry shortly")
        started = time.perf_counter()
        self._num_pooling += 1
        try:
            outputs = await asyncio.wrap_future(self.pooler.pool(inputs))
        finally:
            self._num_pooling -= 1
            if not self.is_busy:
                self._on_idle()
        seconds, num_tokens = time.perf_counter() - started, sum(map(len, inputs))
        task = "rerank" if self.pooler.pooling == "rank" else "embeddings"
        metrics.record_pooling(self.model_name, task=task, num_inputs=len(inputs), num_tokens=num_tokens,
                               seconds=seconds)
        log.info("%s model=%s inputs=%d tokens=%d duration=%.0fms", request_id, self.model_name, len(inputs),
                 num_tokens, seconds * 1000)
        return outputs

    def stats(self) -> dict:
        """Load and capacity for /health and /metrics: each request gets the whole `context_length` (never
        a share of it split between the `num_parallel` sequences); `kv_cache_usage` is the share of the
        `num_parallel` x `context_length` KV cache that running requests hold (0 to 1)."""
        caps = self.capabilities
        num_tokens_held = sum(s.num_computed_tokens + s.num_output_tokens for s in self.scheduler.running)
        return {"running": self.scheduler.num_running + self._num_pooling, "waiting": self.scheduler.num_waiting,
                "num_parallel": caps.num_parallel, "context_length": caps.context_length,
                "kv_cache_usage": round(num_tokens_held / max(caps.num_parallel * caps.context_length, 1), 4)}

    @property
    def is_busy(self) -> bool:
        return self.scheduler.has_work or self._num_pooling > 0

    def notify_when_idle(self, callback: Callable[[], None]) -> None:
        """Call `callback` on the engine thread whenever the engine runs out of work (the pool drains and
        expires models on it); it must only hand over to another thread, never block."""
        self._on_idle = callback

    # -- engine thread -------------------------------------------------------------------------------

    def _admit(self, sequence: Sequence) -> int:
        sequence.admitted_at = time.perf_counter()
        num_cached = self.backend.admit(sequence)
        sequence.num_cached_tokens = num_cached
        return num_cached

    def _run(self) -> None:
        while not self._stopping:
            try:
                self._step()
            except Exception as exc:  # the loop must outlive any failure, or every later request hangs
                log.exception("engine step failed; aborting the running requests")
                self._abort_everything(f"the engine failed: {exc}")
        self._abort_everything("the server is shutting down", is_server_stopping=True)
        self._on_idle()

    def _step(self) -> None:
        batch = self.scheduler.schedule()
        try:
            outputs = self.backend.step(batch)
            self.scheduler.postprocess(batch, outputs)
        finally:
            self._outbox.send()  # also what admission failures delivered before a failed step
        if not outputs and not batch.prefill and not batch.released:  # released: the freed slots take work next
            self._sleep_until_woken()

    def _sleep_until_woken(self) -> None:
        if not self.scheduler.has_work:
            self._on_idle()
        self._wakeup.wait()
        # Cleared after waking, before the next schedule and step: whatever set it (a request added, an
        # output queued) happened before the set, so the next step sees it; later news sets it again.
        self._wakeup.clear()

    def _abort_everything(self, reason: str, *, is_server_stopping: bool = False) -> None:
        sequences = self.scheduler.abort_all()
        try:
            self.backend.step(Batch(released=sequences))  # free their slots
        except Exception:
            log.exception("could not release the aborted sequences")
        for sequence in sequences:
            if not sequence.is_aborted:
                sequence.deliver(StepOutput(sequence.request_id, finish_reason=FinishReason.ABORT, error=reason,
                                            is_server_stopping=is_server_stopping))
        self._outbox.send()

    def stop_admitting(self) -> None:
        """The server is draining: new requests get ServerStoppingError (503); running and queued ones go on."""
        self._is_admitting = False

    def stop(self) -> None:
        """Stop at the next step: running and queued requests end at once with finish_reason "abort"
        and an error saying the server is shutting down; returns without waiting."""
        self._stopping = True
        self.wake()

    def shutdown(self) -> None:
        """Stop the loop and free the model."""
        self.stop()
        self._thread.join(timeout=30)
        self.backend.close()
        if self.pooler is not None:
            self.pooler.close()
