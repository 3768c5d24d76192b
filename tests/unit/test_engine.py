"""The engine loop around a FakeBackend: streams, sleeping without polling, abort, stop, step failures."""
import asyncio
import threading
from contextlib import contextmanager

import pytest

from serve.errors import ServerStoppingError
from serve.runtime.engine import Engine
from serve.sequence import FinishReason
from tests.unit.fake_backend import FakeBackend, collect, make_request, until


@contextmanager
def running_engine(**backend_options):
    backend = FakeBackend(**backend_options)
    engine = Engine("m", backend, max_queue=4)
    try:
        yield engine, backend
    finally:
        engine.shutdown()


def test_a_request_streams_until_the_backend_finishes_it():
    async def scenario():
        with running_engine() as (engine, backend):
            stream = engine.submit(make_request("r1"))
            backend.finish("r1")
            outputs = await collect(stream)
            assert [(o.text, o.finish_reason) for o in outputs] == [("done", FinishReason.STOP)]
            assert backend.admitted == ["r1"]
            await until(lambda: not engine.is_busy, "the engine retires r1")  # just after delivering it

    asyncio.run(scenario())


def test_a_step_hands_all_its_outputs_to_the_event_loop_at_once():
    async def scenario():
        loop = asyncio.get_running_loop()
        handoffs = []
        call_soon_threadsafe = loop.call_soon_threadsafe

        def counted(callback, *args):
            handoffs.append(threading.current_thread().name)
            return call_soon_threadsafe(callback, *args)

        loop.call_soon_threadsafe = counted  # each call wakes the event loop: one per step, not per output
        with running_engine() as (engine, backend):
            streams = [engine.submit(make_request("r1")), engine.submit(make_request("r2"))]
            await until(lambda: backend.admitted == ["r1", "r2"], "both run")
            handoffs.clear()
            backend.finish("r1", "r2")
            for stream in streams:
                assert [(o.text, o.finish_reason) for o in await collect(stream)] == [("done", FinishReason.STOP)]
            assert handoffs == ["engine-m"]

    asyncio.run(scenario())


def test_the_loop_sleeps_while_nothing_happens():
    async def scenario():
        with running_engine() as (engine, backend):
            stream = engine.submit(make_request("r1"))  # running, but the backend has nothing new
            await until(lambda: backend.admitted == ["r1"], "r1 runs")
            await asyncio.sleep(0.05)  # its first steps (prefill, then nothing new) are done
            num_steps = backend.num_steps
            await asyncio.sleep(0.2)
            # Woken only by news: polling every 20 ms would have stepped 10 times, spinning thousands.
            assert backend.num_steps - num_steps <= 1
            backend.finish("r1")
            assert (await collect(stream))[-1].finish_reason is FinishReason.STOP

    asyncio.run(scenario())


def test_stop_ends_running_and_queued_requests_with_abort_and_the_reason():
    async def scenario():
        with running_engine(num_parallel=1) as (engine, backend):
            running, queued = engine.submit(make_request("r1")), engine.submit(make_request("r2"))
            await until(lambda: backend.admitted == ["r1"], "r1 runs")
            engine.stop()
            for stream in (running, queued):
                last = (await collect(stream))[-1]
                assert last.finish_reason is FinishReason.ABORT and "shutting down" in last.error
                assert last.is_server_stopping  # the API answers it 503, to be retried
            with pytest.raises(ServerStoppingError):
                engine.submit(make_request("r3"))
            assert sorted(backend.released) == ["r1", "r2"]  # their slots are freed

    asyncio.run(scenario())


def test_the_engine_survives_a_failing_step():
    async def scenario():
        with running_engine() as (engine, backend):
            failed = engine.submit(make_request("r1"))
            await until(lambda: backend.admitted == ["r1"], "r1 runs")
            backend.fail_next_step("the device fell over")
            last = (await collect(failed))[-1]
            assert last.finish_reason is FinishReason.ABORT and "the device fell over" in last.error
            assert not last.is_server_stopping  # a failure, not a shutdown: a 500
            served = engine.submit(make_request("r2"))
            backend.finish("r2")
            assert (await collect(served))[-1].finish_reason is FinishReason.STOP

    asyncio.run(scenario())


def test_an_aborted_stream_frees_its_sequence_and_the_engine_goes_idle():
    async def scenario():
        went_idle = threading.Event()
        with running_engine() as (engine, backend):
            engine.notify_when_idle(went_idle.set)
            stream = engine.submit(make_request("r1"))
            await until(lambda: backend.admitted == ["r1"], "r1 runs")
            went_idle.clear()
            stream.abort()
            await until(went_idle.is_set, "the engine reports idle")
            assert backend.released == ["r1"] and not engine.is_busy

    asyncio.run(scenario())


def test_shutdown_closes_the_backend():
    with running_engine() as (engine, backend):
        pass
    assert backend.is_closed
