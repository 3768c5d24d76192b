"""`serve up`: preload the models asked for, then serve HTTP until SIGINT/SIGTERM."""
from __future__ import annotations

import contextlib
import errno
import logging
import signal
import socket

from serve.models.catalog import Catalog, load_catalog
from serve.config import ServerConfig
from serve.errors import ConfigError
from serve.placement.hardware import Hardware, probe
from serve.runtime.loader import ModelLoader
from serve.runtime.pool import ModelPool, PoolLimits

log = logging.getLogger("serve")

GRACEFUL_SHUTDOWN_SECONDS = 5  # running streams get this long to finish on SIGINT/SIGTERM
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

    class QuietExitServer(uvicorn.Server):
        """uvicorn re-raises SIGINT after its graceful shutdown, which turns Ctrl+C into a traceback and a
        non-zero exit; we only want the graceful shutdown. Running requests are ended at once (their
        clients get an error event and [DONE]) rather than cut when the graceful timeout expires."""

        def handle_exit(self, sig, frame) -> None:
            pool.stop_engines()
            super().handle_exit(sig, frame)

        @contextlib.contextmanager
        def capture_signals(self):
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return QuietExitServer(uvicorn.Config(
        app, host=config.host, port=config.port, log_level=config.log_level,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS, access_log=False))


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
        pool.add(loader.load(spec, chosen), size_bytes=chosen.weights_bytes + chosen.kv_cache_bytes,
                 keep_alive=-1, spec_text=spec_text)
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
