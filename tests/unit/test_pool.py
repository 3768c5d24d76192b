"""The model pool with fakes through its Loader seam (real engines over FakeBackends), in milliseconds:
eviction order, the switch window, pinning, drain before evict, keep-alive, shared loads, shutdown."""
import asyncio
import time
from dataclasses import dataclass

import pytest

from serve.errors import ModelNotFoundError, ServerStoppingError
from serve.runtime.engine import Engine
from serve.runtime.pool import InsufficientMemoryError, ModelPool, PoolLimits
from serve.sequence import FinishReason
from tests.unit.fake_backend import FakeBackend, collect, make_request, until

GiB = 2**30


@dataclass(frozen=True)
class FakeSpec:
    name: str


@dataclass(frozen=True)
class FakePlan:
    weights_bytes: int
    kv_cache_bytes: int = 0


class FakeLoader:
    """Knows models "a" to "d" (1 GiB each unless told); every load starts a real Engine on a FakeBackend."""

    def __init__(self, sizes: dict[str, int] | None = None, num_parallel: int = 2):
        self._sizes = sizes or {}
        self._num_parallel = num_parallel
        self.loads: list[str] = []
        self.backends: dict[str, FakeBackend] = {}  # the latest load of each model

    def resolve(self, spec_text: str | None) -> FakeSpec:
        if spec_text not in ("a", "b", "c", "d"):
            raise ModelNotFoundError(f"model {spec_text!r} not found")
        return FakeSpec(spec_text)

    def make_plan(self, spec: FakeSpec) -> FakePlan:
        return FakePlan(weights_bytes=self._sizes.get(spec.name, GiB))

    def load(self, spec: FakeSpec, chosen: FakePlan) -> Engine:
        self.loads.append(spec.name)
        backend = FakeBackend(num_parallel=self._num_parallel)
        self.backends[spec.name] = backend
        return Engine(spec.name, backend, max_queue=8)


def make_pool(loader: FakeLoader | None = None, *, max_models: int = 0, max_memory: int = 8 * GiB,
              switch_window: float = 0.0, keep_alive: float = -1, pinned: tuple[str, ...] = ()):
    loader = loader or FakeLoader()
    limits = PoolLimits(max_memory_bytes=max_memory, max_models=max_models, default_keep_alive=keep_alive,
                        switch_window=switch_window, pinned=pinned)
    return ModelPool(loader, limits), loader


def run(scenario, pool: ModelPool) -> None:
    try:
        asyncio.run(asyncio.wait_for(scenario(), 10))
    finally:
        pool.shutdown()


def resident(pool: ModelPool) -> list[str]:
    return sorted(info.name for info in pool.model_infos())


def test_concurrent_first_requests_share_one_load():
    pool, loader = make_pool()

    async def scenario():
        engines = await asyncio.gather(*(pool.get("a") for _ in range(5)))
        assert loader.loads == ["a"] and len({id(e) for e in engines}) == 1

    run(scenario, pool)


def test_an_unknown_model_is_not_found():
    pool, _ = make_pool()

    async def scenario():
        with pytest.raises(ModelNotFoundError):
            await pool.get("zz")

    run(scenario, pool)


def test_the_least_recently_used_model_goes_first():
    pool, loader = make_pool(max_models=2)

    async def scenario():
        await pool.get("a")
        await pool.get("b")
        await pool.get("a")  # now b is the least recently used
        await pool.get("c")
        assert resident(pool) == ["a", "c"] and loader.loads == ["a", "b", "c"]

    run(scenario, pool)


def test_an_idle_model_goes_before_a_busy_one_used_longer_ago():
    pool, loader = make_pool(max_models=2)

    async def scenario():
        busy = await pool.get("a")
        stream = busy.submit(make_request("r1", "a"))
        await pool.get("b")  # more recent than a, but idle
        await pool.get("c")
        assert resident(pool) == ["a", "c"]
        loader.backends["a"].finish("r1")
        assert (await collect(stream))[-1].finish_reason is FinishReason.STOP

    run(scenario, pool)


def test_a_busy_model_stays_for_the_switch_window_then_drains():
    window = 0.1
    pool, loader = make_pool(max_models=1, switch_window=window)

    async def scenario():
        a = await pool.get("a")
        loaded_at = time.time()
        stream = a.submit(make_request("r1", "a"))
        switch = asyncio.create_task(pool.get("b"))
        await asyncio.sleep(window / 2)
        assert not switch.done() and resident(pool) == ["a"]
        await until(lambda: pool._resident["a"].draining, "a drains once its window is over")
        assert time.time() - loaded_at >= window * 0.9  # time.time() may tick coarsely
        assert not switch.done()  # b waits for a's running request
        loader.backends["a"].finish("r1")
        assert (await collect(stream))[-1].finish_reason is FinishReason.STOP  # drained, not dropped
        await switch
        assert resident(pool) == ["b"]

    run(scenario, pool)


def test_a_draining_model_finishes_running_and_queued_requests_while_new_ones_wait():
    # A window, however short, lets each request get the model it loaded before the other one's load
    # evicts it: with none, requests for a and b would take turns evicting each other for ever.
    pool, loader = make_pool(FakeLoader(num_parallel=1), max_models=1, switch_window=0.05)

    async def scenario():
        first = await pool.get("a")
        running, queued = first.submit(make_request("r1", "a")), first.submit(make_request("r2", "a"))
        switch = asyncio.create_task(pool.get("b"))
        await until(lambda: pool._resident["a"].draining, "a drains")
        comeback = asyncio.create_task(pool.get("a"))  # a new request for the draining model
        await asyncio.sleep(0.02)
        assert not comeback.done() and not switch.done()
        backend = loader.backends["a"]
        backend.finish("r1")
        backend.finish("r2")
        for stream in (running, queued):
            assert (await collect(stream))[-1].finish_reason is FinishReason.STOP
        await switch
        second = await comeback  # loaded again once b (idle by then) made room
        assert second is not first and loader.loads == ["a", "b", "a"] and resident(pool) == ["a"]

    run(scenario, pool)


def test_a_pinned_model_is_never_evicted():
    pool, loader = make_pool(max_models=2, pinned=("a",))

    async def scenario():
        await pool.get("a")  # least recently used, idle, but pinned
        await pool.get("b")
        await pool.get("c")
        assert resident(pool) == ["a", "c"]

    run(scenario, pool)


def test_no_room_beside_pinned_models_is_an_error():
    pool, _ = make_pool(max_memory=GiB + GiB // 2, pinned=("a",))

    async def scenario():
        await pool.get("a")
        with pytest.raises(InsufficientMemoryError):
            await pool.get("b")

    run(scenario, pool)


def test_keep_alive_zero_unloads_right_after_the_last_request():
    pool, loader = make_pool()

    async def scenario():
        engine = await pool.get("a", keep_alive=0)
        stream = engine.submit(make_request("r1", "a"))
        await asyncio.sleep(0.02)
        assert resident(pool) == ["a"]  # busy: stays
        loader.backends["a"].finish("r1")
        await collect(stream)
        finished = time.monotonic()
        await until(lambda: loader.backends["a"].is_closed, "a is unloaded")
        assert time.monotonic() - finished < 0.5 and not resident(pool)

    run(scenario, pool)


def test_an_idle_model_expires_after_its_keep_alive():
    keep_alive = 0.1
    pool, _ = make_pool(keep_alive=keep_alive)

    async def scenario():
        await pool.get("a")
        idle_from = time.monotonic()
        await asyncio.sleep(keep_alive / 2)
        assert resident(pool) == ["a"]
        await until(lambda: not resident(pool), "a expires")
        assert keep_alive * 0.9 <= time.monotonic() - idle_from < keep_alive + 0.5

    run(scenario, pool)


def test_stopping_the_engines_aborts_running_requests_with_the_reason():
    pool, _ = make_pool()

    async def scenario():
        engine = await pool.get("a")
        stream = engine.submit(make_request("r1", "a"))
        pool.stop_engines()
        last = (await collect(stream))[-1]
        assert last.finish_reason is FinishReason.ABORT and "shutting down" in last.error

    run(scenario, pool)


def test_a_drain_refuses_new_requests_and_waits_for_the_running_ones():
    pool, loader = make_pool()

    async def scenario():
        engine = await pool.get("a")
        stream = engine.submit(make_request("r1", "a"))
        drain = asyncio.create_task(pool.drain(timeout=5))
        await until(lambda: pool.is_stopping, "the pool stops admitting")
        with pytest.raises(ServerStoppingError):
            await pool.get("a")
        with pytest.raises(ServerStoppingError):
            engine.submit(make_request("r2", "a"))
        await asyncio.sleep(0.02)
        assert not drain.done()  # r1 still runs
        loader.backends["a"].finish("r1")
        assert (await collect(stream))[-1].finish_reason is FinishReason.STOP
        assert await asyncio.wait_for(drain, 1) == 0

    run(scenario, pool)


def test_a_drain_gives_up_after_its_timeout_and_reports_what_is_left():
    pool, _ = make_pool()

    async def scenario():
        engine = await pool.get("a")
        stream = engine.submit(make_request("r1", "a"))
        started = time.monotonic()
        assert await pool.drain(timeout=0.1) == 1
        assert 0.09 <= time.monotonic() - started < 1
        pool.stop_engines()
        last = (await collect(stream))[-1]
        assert last.finish_reason is FinishReason.ABORT and "shutting down" in last.error

    run(scenario, pool)


def test_loads_and_unloads_are_counted_by_reason():
    from serve.runtime.metrics import REGISTRY

    def count(name: str, **labels) -> float:
        return REGISTRY.get_sample_value(f"quantserve_{name}_total", labels) or 0.0

    before = {"loads": count("model_loads", model="b"), "evicted": count("model_unloads", model="a", reason="evicted"),
              "expired": count("model_unloads", model="b", reason="expired")}
    pool, _ = make_pool(max_models=1)

    async def scenario():
        await pool.get("a")  # never expires: it can only be evicted
        await pool.get("b", keep_alive=0.05)  # evicts a
        await until(lambda: not resident(pool), "b expires")

    run(scenario, pool)
    assert count("model_loads", model="b") == before["loads"] + 1
    assert count("model_unloads", model="a", reason="evicted") == before["evicted"] + 1
    assert count("model_unloads", model="b", reason="expired") == before["expired"] + 1


def test_a_drain_ends_the_wait_for_room_without_loading_anything():
    pool, loader = make_pool(max_models=1, switch_window=60)

    async def scenario():
        engine = await pool.get("a")
        stream = engine.submit(make_request("r1", "a"))  # a is busy and recent: b waits for room
        waiting = asyncio.create_task(pool.get("b"))
        await asyncio.sleep(0.02)
        assert not waiting.done()
        drain = asyncio.create_task(pool.drain(timeout=5))
        with pytest.raises(ServerStoppingError):
            await asyncio.wait_for(waiting, 1)
        loader.backends["a"].finish("r1")
        await collect(stream)
        assert await asyncio.wait_for(drain, 1) == 0 and loader.loads == ["a"]

    run(scenario, pool)
