"""`serve up`: preload the models asked for, then serve HTTP until SIGINT/SIGTERM, then drain and exit 0.

On the first SIGTERM or SIGINT the server keeps listening but admits nothing new (503 with Retry-After, in
each dialect's error shape; /health answers 503 too, so a load balancer stops sending), lets running and
queued requests finish for up to --drain-timeout seconds, ends what remains with an error event, and
exits 0: what Docker's `docker stop` and Kubernetes' pod termination expect. A second signal ends the
drain at once.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
import time

from serve.models.catalog import Catalog, load_catalog
from serve.config import ServerConfig
from serve.errors import ConfigError
from serve.placement.hardware import Hardware, probe
from serve.runtime.loader import ModelLoader
from serve.runtime.pool import ModelPool, PoolLimits

log = logging.getLogger("serve")

# After the drain, what is left has been ended with an error event; its responses get this long to be sent.
GRACEFUL_SHUTDOWN_SECONDS = 5
ENDING_SECONDS = 30  # at most this long for the engines to end what the drain left (one step each)
MEMORY_MARGIN_BYTES = 2 * 2**30  # left to the OS and everything else when --max-memory is not given


def ensure_port_free(host: str, port: int) -> None:
    """Fail in one line before loading anything when the port is taken."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe_socket:
        probe_socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe_socket.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"port {port} on {host} is already in use; pick another with --port") from None
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def default_memory_budget(hw: Hardware) -> int:
    """What loaded models may take together: free VRAM on a GPU box, else free RAM, minus a margin."""
    free = sum(gpu.vram_free_bytes for gpu in hw.gpus) or hw.memory.available_bytes
    return max(free - MEMORY_MARGIN_BYTES, free // 2)


def _uvicorn_server(app, config: ServerConfig, pool: ModelPool):
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """uvicorn, with a drain between the signal and its own shutdown (which stops listening, so
        requests arriving meanwhile would be refused instead of answered 503). Signals are not re-raised
        after the shutdown, as uvicorn does, which would turn Ctrl+C into a traceback and a non-zero exit."""

        loop: asyncio.AbstractEventLoop | None = None
        is_draining = False

        def handle_exit(self, sig, frame) -> None:
            if self.is_draining and self.loop is not None:
                # A second signal ends the drain now; loop-safe, as a signal handler must be.
                self.loop.call_soon_threadsafe(pool.stop_engines)
                return
            super().handle_exit(sig, frame)

        async def main_loop(self) -> None:
            self.loop = asyncio.get_running_loop()
            await super().main_loop()
            self.is_draining = True
            await drain(pool, config.drain_timeout)

        @contextlib.contextmanager
        def capture_signals(self):
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return DrainingServer(uvicorn.Config(
        app, host=config.host, port=config.port, log_level=config.log_level,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS, access_log=False))


async def drain(pool: ModelPool, timeout: float) -> None:
    """Admit nothing new; let running and queued requests finish for up to `timeout` seconds; end the rest."""
    started = time.monotonic()
    num_unfinished = sum(stats["running"] + stats["waiting"] for stats in pool.stats().values())
    if num_unfinished:
        print(f"stopping: waiting up to {timeout:g} s for {num_unfinished} request(s) to finish "
              f"(new requests get 503; a second Ctrl+C ends them now)", flush=True)
    num_left = await pool.drain(timeout)
    if num_left:
        log.warning("drain timeout: ending %d request(s) still running after %.1f s", num_left,
                    time.monotonic() - started)
    pool.stop_engines()
    # Each engine ends its requests after its current step, which a loaded CPU can make slow: wait for
    # that here, so uvicorn's short graceful shutdown only has the error events left to send.
    await pool.drain(ENDING_SECONDS)


def build_pool(config: ServerConfig, catalog: Catalog, hw: Hardware) -> ModelPool:
    """Load the models given with --model (the embedded default when none) into a fresh pool."""
    loader = ModelLoader(config, catalog, hw)
    limits = PoolLimits(max_memory_bytes=config.max_memory or default_memory_budget(hw),
                        max_models=config.max_models, default_keep_alive=config.keep_alive,
                        switch_window=config.switch_window, pinned=config.pinned)
    pool = ModelPool(loader, limits)
    for spec_text in config.models or (None,):
        spec = loader.resolve(spec_text)
        chosen = loader.make_plan(spec)
        # Models named at start-up stay until evicted for room: that is what `serve up --model X` asks for.
        started = time.perf_counter()
        engine = loader.load(spec, chosen)
        pool.add(engine, size_bytes=chosen.weights_bytes + chosen.kv_cache_bytes, keep_alive=-1,
                 spec_text=spec_text, load_seconds=time.perf_counter() - started)
    return pool


def run(config: ServerConfig) -> None:
    from serve.api.app import create_app

    ensure_port_free(config.host, config.port)
    catalog = load_catalog(config.catalog_file)  # loaded once: the loader and the API share it
    pool = build_pool(config, catalog, probe())
    try:
        app = create_app(pool, config, catalog)
        names = ", ".join(info.name for info in pool.model_infos())
        print(f"serving {names} at http://{config.host}:{config.port}/v1 (Ctrl+C to stop)", flush=True)
        _uvicorn_server(app, config, pool).run()
    finally:
        pool.shutdown()
