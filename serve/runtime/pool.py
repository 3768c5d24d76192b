"""The loaded models: load on demand, share a memory budget, drain before evicting, expire when idle.

Routes ask `await pool.get(name)` for an engine; everything here runs on the event loop, and blocking work
(loading weights, freeing them) runs in a worker thread.

- Load on demand: any catalog alias, hf:// spec or local path; concurrent first requests share one load.
- Budget: loaded models' estimated sizes (weights + KV cache, from the plan) stay within `max_memory`
  and their number within `max_models`. To make room the least recently used unpinned model goes,
  idle ones first.
- Drain, never drop: a busy model chosen for eviction is marked draining; its running and queued
  requests finish, new requests for it wait, then it is unloaded (and reloaded later for them).
- No thrash: a busy model (or one that requests are waiting for) is only drained after it has been
  resident for `switch_window` seconds, so requests alternating A B A B cause at most one swap per
  window, each swap serving every request that queued up meanwhile (llama-swap reloads per request).
- Keep-alive: a model idle for its keep_alive is unloaded (0: right after its requests; negative: never).

Nothing polls: whoever waits (for a draining model to leave, for an eviction candidate, for the next
keep-alive expiry) sleeps on one `_Changes` signal, raised when a model is added or removed, when a request
stops waiting for a model, and when an engine runs out of work (from its thread, handed over to the loop).
"""
from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from serve.models.catalog import LATEST_TAG
from serve.runtime import metrics
from serve.runtime.engine import Engine
from serve.errors import ModelNotFoundError, ServeError, ServerStoppingError

log = logging.getLogger("serve.runtime.pool")


class InsufficientMemoryError(ServeError):
    status_code = 507
    error_type = "server_error"
    code = "insufficient_memory"


@dataclass(frozen=True)
class ModelInfo:
    name: str
    backend: str
    context_length: int  # per sequence
    num_parallel: int
    created: int  # unix time the model was loaded
    size_bytes: int = 0  # estimated weights + KV cache
    expires_at: float | None = None  # unix time it unloads if still idle; None: never / busy
    idle_seconds: float = 0.0
    pinned: bool = False
    model_path: Path | None = None  # where its weights were loaded from


class Loader(Protocol):
    """serve.runtime.loader.ModelLoader: resolve() and make_plan() are cheap; load() blocks."""

    def resolve(self, spec_text: str | None): ...
    def make_plan(self, spec): ...
    def load(self, spec, chosen) -> Engine: ...


@dataclass(frozen=True)
class PoolLimits:
    max_memory_bytes: int
    max_models: int = 0  # 0: no cap beyond memory
    default_keep_alive: float = 300.0  # Ollama's 5m
    switch_window: float = 2.0
    pinned: tuple[str, ...] = ()


@dataclass
class _Resident:
    engine: Engine
    size_bytes: int
    keep_alive: float
    loaded_at: float
    last_used: float
    idle_since: float | None = None
    draining: bool = False
    pinned: bool = False


class _Changes:
    """A broadcast: `wait` sleeps until the next `notify` (or the timeout). Unlike asyncio.Condition,
    `notify` needs no lock, so a plain callback on the loop (an engine going idle) can call it."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float | None = None) -> None:
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            pass


class ModelPool:
    def __init__(self, loader: Loader, limits: PoolLimits):
        self._loader = loader
        self._limits = limits
        self._resident: dict[str, _Resident] = {}
        self._loading: dict[str, asyncio.Future] = {}
        self._load_lock: asyncio.Lock | None = None
        self._reaper: asyncio.Task | None = None
        self._aliases: dict[str, str] = {}  # what requests called a model -> its served name
        self._sources: dict[str, str | None] = {}  # served name -> the spec it was loaded from (to reload it)
        self._num_waiting: collections.Counter[str] = collections.Counter()  # requests inside get(), by model
        self._changes = _Changes()
        self._loop: asyncio.AbstractEventLoop | None = None  # where engine threads send their news
        self._is_stopping = False  # draining before the server exits: nothing new is admitted

    # -- lookups --------------------------------------------------------------------------------------

    async def get(self, name: str | None, *, keep_alive: float | None = None) -> Engine:
        """The engine for `name`, loading it (and making room) if needed; raises ModelNotFoundError."""
        self._start()
        self._refuse_when_stopping()
        served = self._served_name(name)
        self._num_waiting[served] += 1
        try:
            while True:
                self._refuse_when_stopping()
                resident = self._resident.get(served)
                if resident is not None and not resident.draining:
                    self._touch(resident, keep_alive)
                    return resident.engine
                if resident is not None:  # draining: wait until it is gone, then load it again
                    await self._changes.wait()
                    continue
                await self._load_shared(served, name, keep_alive)
        finally:
            self._num_waiting[served] -= 1
            self._changes.notify()  # a model nobody waits for any more may be evicted or expire

    def _refuse_when_stopping(self) -> None:
        if self._is_stopping:
            raise ServerStoppingError("the server is shutting down; retry against another instance")

    def loaded_name(self, name: str) -> str | None:
        """The served name of the resident model that `name` (as requests call it: an alias, a Hub spec,
        Ollama's `:latest`) refers to; None when it is not loaded. Never loads or resolves anything."""
        name = name.removesuffix(LATEST_TAG)
        served = self._aliases.get(name, name)
        return served if served in self._resident else None

    def _served_name(self, name: str | None) -> str:
        if name is None:
            raise ModelNotFoundError(f"no model given; available models: {self._available()}", param="model")
        name = name.removesuffix(LATEST_TAG)
        if name in self._resident or name in self._loading or name in self._sources:
            return name
        if name not in self._aliases:
            try:
                self._aliases[name] = self._loader.resolve(name).name
            except ModelNotFoundError as exc:
                raise ModelNotFoundError(f"{exc.message}; loaded models: {self._available()}",
                                         param="model") from None
        return self._aliases[name]

    def _available(self) -> str:
        return ", ".join(sorted(self._resident)) or "none"

    def _touch(self, resident: _Resident, keep_alive: float | None) -> None:
        resident.last_used = time.time()
        if keep_alive is not None:
            resident.keep_alive = keep_alive

    # -- loading --------------------------------------------------------------------------------------

    async def _load_shared(self, served: str, spec_text: str | None, keep_alive: float | None) -> None:
        """Load once however many requests ask at the same time; they all wait for the same future."""
        future = self._loading.get(served)
        if future is None:
            future = asyncio.ensure_future(self._load(served, spec_text, keep_alive))
            self._loading[served] = future
            future.add_done_callback(lambda _: self._loading.pop(served, None))
        await asyncio.shield(future)

    async def _load(self, served: str, spec_text: str | None, keep_alive: float | None) -> None:
        if self._load_lock is None:
            self._load_lock = asyncio.Lock()
        async with self._load_lock:  # one load at a time: the budget is checked against settled sizes
            spec_text = self._sources.get(served, spec_text if spec_text is not None else served)
            spec = self._loader.resolve(spec_text)
            chosen = self._loader.make_plan(spec)
            size = chosen.weights_bytes + chosen.kv_cache_bytes
            await self._make_room(served, size)
            started = time.perf_counter()
            engine = await asyncio.to_thread(self._loader.load, spec, chosen)
            self.add(engine, size_bytes=size, keep_alive=keep_alive, spec_text=spec_text,
                     load_seconds=time.perf_counter() - started)

    def add(self, engine: Engine, *, size_bytes: int = 0, keep_alive: float | None = None,
            spec_text: str | None = None, load_seconds: float | None = None) -> None:
        """Register a loaded engine (preloaded at start-up, or loaded on demand); `spec_text` is what it
        was loaded from, so it can be loaded again by its served name after an eviction; `load_seconds`,
        how long loading it took, goes to the metrics."""
        now = time.time()
        name = engine.model_name
        metrics.record_load(name, load_seconds)
        if self._is_stopping:
            engine.stop_admitting()
        self._sources[name] = spec_text
        self._resident[name] = _Resident(
            engine, size_bytes, self._limits.default_keep_alive if keep_alive is None else keep_alive,
            loaded_at=now, last_used=now, pinned=name in self._limits.pinned)
        engine.notify_when_idle(self._notify_from_thread)
        self._changes.notify()
        log.info("loaded %s (%.2f GiB estimated); resident: %s", name, size_bytes / 2**30, self._available())

    async def _make_room(self, served: str, size: int) -> None:
        budget = self._limits.max_memory_bytes
        if size > budget:
            raise InsufficientMemoryError(
                f"model {served} needs about {size / 2**30:.1f} GiB (weights + KV cache), more than the "
                f"memory budget of {budget / 2**30:.1f} GiB; raise --max-memory or lower --ctx/--parallel")
        while not self._fits(size):
            self._refuse_when_stopping()  # no model is loaded for a server that is going away
            victim = self._eviction_candidate()
            if victim is None:
                if not any(not r.pinned for r in self._resident.values()):
                    raise InsufficientMemoryError(
                        f"model {served} needs about {size / 2**30:.1f} GiB but pinned models use "
                        f"{self._used() / 2**30:.1f} GiB of the {budget / 2**30:.1f} GiB budget")
                # Every candidate is busy and recent: wait until one goes idle or its switch window ends.
                await self._changes.wait(timeout=self._until_switch_window_ends())
                continue
            await self._unload(victim, reason="evicted")

    def _fits(self, size: int) -> bool:
        cap = self._limits.max_models
        return (self._used() + size <= self._limits.max_memory_bytes
                and (cap <= 0 or len(self._resident) < cap))

    def _used(self) -> int:
        return sum(r.size_bytes for r in self._resident.values())

    def _eviction_candidate(self) -> str | None:
        """The least recently used unpinned idle model; else, the least recently used one resident for at
        least the switch window (it will be drained). A model that requests are waiting for counts as busy,
        even before they reach it: evicting it would let two models evict each other for ever."""
        now = time.time()
        unpinned = sorted((r.last_used, name) for name, r in self._resident.items() if not r.pinned)
        for _, name in unpinned:
            if not self._is_wanted(name):
                return name
        for _, name in unpinned:
            if now - self._resident[name].loaded_at >= self._limits.switch_window:
                return name
        return None

    def _until_switch_window_ends(self) -> float | None:
        """Seconds until the next unpinned model has been resident for the switch window."""
        now = time.time()
        ends = [r.loaded_at + self._limits.switch_window - now for r in self._resident.values() if not r.pinned]
        return max(min(ends), 0.0) if ends else None

    def _is_wanted(self, name: str) -> bool:
        return self._resident[name].engine.is_busy or self._num_waiting.get(name, 0) > 0

    # -- unloading ------------------------------------------------------------------------------------

    async def unload(self, name: str) -> None:
        """Drain (running and queued requests finish; new ones wait), then free the model."""
        await self._unload(name, reason="requested")

    async def _unload(self, name: str, *, reason: str) -> None:
        """unload(); `reason` (evicted, expired, requested) labels the metrics' count of unloads."""
        self._start()
        resident = self._resident.get(name)
        if resident is None:
            return
        resident.draining = True
        while resident.engine.is_busy:
            await self._changes.wait()
        if self._resident.get(name) is not resident:
            return
        del self._resident[name]
        metrics.record_unload(name, reason)
        self._changes.notify()  # requests waiting for it to leave can load it again
        await asyncio.to_thread(resident.engine.shutdown)
        log.info("unloaded %s; resident: %s", name, self._available())

    def _start(self) -> None:
        """On the event loop, before anything waits: engines can report to it, the reaper runs."""
        self._loop = asyncio.get_running_loop()
        if self._reaper is None or self._reaper.done():
            self._reaper = self._loop.create_task(self._reap_forever())

    def _notify_from_thread(self) -> None:
        """An engine ran out of work (called on its thread)."""
        loop = self._loop
        if loop is None:  # nothing has waited yet, so nobody needs to hear it
            return
        try:
            loop.call_soon_threadsafe(self._changes.notify)
        except RuntimeError:  # the event loop is closed: the server is gone
            pass

    async def _reap_forever(self) -> None:
        """Unload models idle past their keep-alive; sleeps until the next expiry or the next change."""
        while True:
            now = time.time()
            for name, resident in list(self._resident.items()):
                if self._is_wanted(name):
                    resident.idle_since = None
                    continue
                resident.idle_since = resident.idle_since or now
                if self._is_expired(resident, now):
                    await self._unload(name, reason="expired")
            await self._changes.wait(timeout=self._until_next_expiry())

    @staticmethod
    def _is_expired(resident: _Resident, now: float) -> bool:
        can_expire = resident.keep_alive >= 0 and not resident.pinned and not resident.draining
        return can_expire and resident.idle_since is not None and now - resident.idle_since >= resident.keep_alive

    def _until_next_expiry(self) -> float | None:
        now = time.time()
        expiries = [r.idle_since + r.keep_alive - now for r in self._resident.values()
                    if r.idle_since is not None and r.keep_alive >= 0 and not r.pinned and not r.draining]
        return max(min(expiries), 0.0) if expiries else None

    # -- reporting ------------------------------------------------------------------------------------

    def model_infos(self) -> list[ModelInfo]:
        now = time.time()
        return [self._info(name, r, now) for name, r in self._resident.items()]

    @staticmethod
    def _info(name: str, r: _Resident, now: float) -> ModelInfo:
        caps = r.engine.capabilities
        idle = 0.0 if r.idle_since is None else now - r.idle_since
        expires = None
        if r.keep_alive >= 0 and not r.pinned:
            expires = (r.idle_since or now) + r.keep_alive
        return ModelInfo(name=name, backend=caps.name, context_length=caps.context_length,
                         num_parallel=caps.num_parallel, created=int(r.loaded_at), size_bytes=r.size_bytes,
                         expires_at=expires, idle_seconds=idle, pinned=r.pinned, model_path=r.engine.model_path)

    def stats(self) -> dict:
        return {name: r.engine.stats() for name, r in self._resident.items()}

    @property
    def is_stopping(self) -> bool:
        return self._is_stopping

    async def drain(self, timeout: float) -> int:
        """Shutting down: admit nothing new (ServerStoppingError, 503), and wait up to `timeout` seconds
        for the running and queued requests to finish; returns how many are left (0: all finished)."""
        self._start()
        self._is_stopping = True
        for resident in self._resident.values():
            resident.engine.stop_admitting()
        self._changes.notify()  # requests waiting inside get() give up
        deadline = time.monotonic() + timeout
        while (num_left := self._num_unfinished()) and (left := deadline - time.monotonic()) > 0:
            await self._changes.wait(timeout=left)
        return num_left

    def _num_unfinished(self) -> int:
        return sum(stats["running"] + stats["waiting"] for stats in self.stats().values())

    def stop_engines(self) -> None:
        """End every running and queued request now (what a drain left): streams close with an error event
        instead of being cut when uvicorn's graceful-shutdown timeout expires."""
        for resident in list(self._resident.values()):
            resident.engine.stop()

    def shutdown(self) -> None:
        """Free every model; called after the event loop ended (which already cancelled the reaper)."""
        for resident in self._resident.values():
            resident.engine.shutdown()
        self._resident.clear()
