"""Start the real `serve up` as a subprocess on a free port, wait until it is healthy, stop it cleanly.

Stopping is part of what is tested: SIGINT must end the server within STOP_TIMEOUT_SECONDS with exit
code 0 (issue 2: "SIGINT/SIGTERM shut it down cleanly").
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
STOP_TIMEOUT_SECONDS = 20
HEALTH_POLL_SECONDS = 0.25


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningServer:
    """A `serve up` subprocess and how to talk to it."""

    process: subprocess.Popen
    port: int
    log_path: Path
    backend: str
    api_key: str | None = None
    model: str = ""
    models: list[dict] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/v1"

    @property
    def context_length(self) -> int:
        return self.models[0]["context_length"]

    def log_tail(self, num_lines: int = 60) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-num_lines:])

    def http(self, **kwargs) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=120, **kwargs)

    def openai(self, **kwargs):
        import openai

        kwargs.setdefault("api_key", self.api_key or "not-needed")
        kwargs.setdefault("max_retries", 0)  # a retry would hide a failure
        kwargs.setdefault("timeout", 120)
        return openai.OpenAI(base_url=self.api_url, **kwargs)


def _wait_until_healthy(server: RunningServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"serve up exited with code {server.process.returncode} before it was healthy; "
                               f"log {server.log_path}:\n{server.log_tail()}")
        try:
            if httpx.get(f"{server.base_url}/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(HEALTH_POLL_SECONDS)
    raise RuntimeError(f"serve up was not healthy within {timeout:.0f} s; log {server.log_path}:\n"
                       f"{server.log_tail()}")


def start_server(args: list[str], log_path: Path, *, backend: str = "llamacpp", api_key: str | None = None,
                 env: dict[str, str] | None = None, timeout: float = 120) -> RunningServer:
    """`python -m serve.cli up --host 127.0.0.1 --port <free> <args>`, returned once GET /health is 200."""
    port = free_port()
    command = [sys.executable, "-m", "serve.cli", "up", "--host", "127.0.0.1", "--port", str(port), *args]
    if api_key:
        command += ["--api-key", api_key]
    child_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), child_env.get("PYTHONPATH")]))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log_file:
        log_file.write(("$ " + " ".join(command) + "\n").encode())
        log_file.flush()
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=child_env, stdout=log_file,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = RunningServer(process, port, log_path, backend, api_key)
    try:
        _wait_until_healthy(server, timeout)
        with server.http() as http:
            server.models = http.get("/v1/models").raise_for_status().json()["data"]
        server.model = server.models[0]["id"]
    except BaseException:
        _kill(process)
        raise
    return server


def _kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(timeout=30)


def stop_server(server: RunningServer) -> int:
    """SIGINT, then the exit code; raises when the server does not exit within STOP_TIMEOUT_SECONDS."""
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGINT)
    try:
        return server.process.wait(timeout=STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        _kill(server.process)
        raise RuntimeError(f"serve up did not exit within {STOP_TIMEOUT_SECONDS} s of SIGINT; log "
                           f"{server.log_path}:\n{server.log_tail()}") from None


@contextlib.contextmanager
def running_server(args: list[str], log_path: Path, **kwargs) -> Iterator[RunningServer]:
    """A started server that is stopped with SIGINT on exit; a non-zero exit code fails."""
    server = start_server(args, log_path, **kwargs)
    try:
        yield server
    finally:
        code = stop_server(server)
    assert code == 0, f"serve up exited with code {code} after SIGINT; log {log_path}:\n{server.log_tail()}"
