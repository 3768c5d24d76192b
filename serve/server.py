"""`serve up`: load the models the plan chose, then serve HTTP until SIGINT/SIGTERM."""
from __future__ import annotations

import contextlib
import errno
import logging
import signal
import socket

from backends.base import load_backend
from serve.catalog import Catalog, load_catalog, resolve_model
from serve.config import ServerConfig
from serve.engine import Engine
from serve.errors import ConfigError
from serve.hardware import Hardware, probe
from serve.plan import Plan, plan
from serve.pool import ModelPool

log = logging.getLogger("serve")

GRACEFUL_SHUTDOWN_SECONDS = 5  # running streams get this long to finish on SIGINT/SIGTERM


def plan_for(hw: Hardware, spec, config: ServerConfig) -> Plan:
    return plan(hw, spec, backend=config.backend, context_length=config.context_length,
                num_threads=config.num_threads, num_parallel=config.num_parallel,
                max_batch_tokens=config.max_batch_tokens, tensor_parallel_size=config.tensor_parallel_size,
                pipeline_parallel_size=config.pipeline_parallel_size, ray_address=config.ray_address,
                gpu_memory_utilization=config.gpu_memory_utilization)


def load_engine(spec_text: str | None, config: ServerConfig, catalog: Catalog, hw: Hardware) -> Engine:
    """Resolve, plan, fetch and load one model; prints what was chosen and why."""
    from serve.hub import ensure_model_file  # the Hub client is only needed once a model is loaded

    spec = resolve_model(spec_text, catalog)
    chosen = plan_for(hw, spec, config)
    print(f"model {spec.name}: backend {chosen.backend}, context {chosen.context_length} per request, "
          f"{chosen.num_parallel} parallel, {chosen.num_threads} threads", flush=True)
    for reason in chosen.reasons:
        print(f"  - {reason}", flush=True)
    model_path = ensure_model_file(spec, chosen.backend)
    backend = load_backend(chosen.backend, chosen.backend_settings(model_path))
    return Engine(spec.name, backend, max_queue=config.max_queue, max_batch_tokens=chosen.max_batch_tokens)


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


def _uvicorn_server(app, config: ServerConfig):
    import uvicorn

    class QuietExitServer(uvicorn.Server):
        """uvicorn re-raises SIGINT after its graceful shutdown, which turns Ctrl+C into a traceback and a
        non-zero exit; we only want the graceful shutdown."""

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


def run(config: ServerConfig) -> None:

    from serve.api.app import create_app

    ensure_port_free(config.host, config.port)
    catalog = load_catalog(config.catalog_file)
    hw = probe()
    pool = ModelPool()
    try:
        for spec_text in config.models or (None,):
            pool.add(load_engine(spec_text, config, catalog, hw))
        app = create_app(pool, config)
        names = ", ".join(info.name for info in pool.model_infos())
        print(f"serving {names} at http://{config.host}:{config.port}/v1 (Ctrl+C to stop)", flush=True)
        _uvicorn_server(app, config).run()
    finally:
        pool.shutdown()
