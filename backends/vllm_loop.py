"""The event loop vLLM's AsyncLLM runs on: a daemon thread of its own, reached only through thread-safe
hand-offs.

AsyncLLM is asyncio-native and its engine core runs in child processes; quantserve's engine thread and the
pooling workers are not on any event loop, so each AsyncLLM (generation in backends/vllm.py, pooling in
backends/vllm_embed.py) gets one of these.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from typing import Any, Awaitable, Callable

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_SECONDS = 60


class EngineLoop:
    def __init__(self, name: str):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coroutine: Awaitable[Any], timeout: float) -> Any:
        """Run `coroutine` on the loop and wait for its result (from any other thread)."""
        return self.submit(coroutine).result(timeout)

    def submit(self, coroutine: Awaitable[Any]) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> None:
        self.loop.call_soon_threadsafe(callback, *args)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=CLOSE_TIMEOUT_SECONDS)

    def close(self, shutdown: Callable[[], Awaitable[None]], what: str) -> None:
        """Run the owner's `shutdown` coroutine on the loop, then stop it; a failed shutdown is logged (the
        server is stopping anyway), never raised. Closing twice does nothing."""
        if not self._thread.is_alive():
            return
        try:
            self.run(shutdown(), CLOSE_TIMEOUT_SECONDS)
        except Exception:
            log.exception("%s did not shut down cleanly", what)
        finally:
            self.stop()
