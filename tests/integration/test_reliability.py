"""The reliability campaign (issue 15): the server and the model cache under load and faults. Every loop is
bounded in count and time, all traffic goes to 127.0.0.1, and each test prints its figures (counts and
durations; the README's "Reliability" section quotes them).

- load: 200 concurrent clients against --max-queue 16; 100 streaming clients that disconnect mid-stream;
  a client that never reads its stream and one that sends its body byte by byte, beside normal clients;
- the cache: `serve pull` killed with SIGKILL and run again; a cached file corrupted on disk; the disk filling
  up during a pull and during `serve quantize` (a small tmpfs, so only as root; skipped otherwise);
- a malformed or truncated GGUF given to `serve up`.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from serve.models.cache import file_digest
from serve.models.catalog import embedded_model_path
from tests.fixtures_gguf import f16_gguf
from tests.integration.conftest import start_llamacpp_server
from tests.integration.server import free_port
from tests.integration.test_hub import MB, Q4_NAME, REPO, blobs, hub, one_line_error, pulled_path, run_cli  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
NUM_PARALLEL = 8
MAX_QUEUE = 16
NO_EOS = {"0": -100, "2": -100}  # every answer runs to max_tokens: exact usage to check
COMPLETIONS = "/v1/completions"


def report(figure: str) -> None:
    print(f"\n[reliability] {figure}", flush=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # one compute thread: on a shared 2-core machine llama.cpp's spinning threads slow each other down badly
    args = ["--parallel", str(NUM_PARALLEL), "--max-queue", str(MAX_QUEUE), "--ctx", "512", "--threads", "1"]
    with start_llamacpp_server(tmp_path_factory, "reliability", args) as running:
        yield running


def health_load(server) -> tuple[int, int]:
    stats = httpx.get(f"{server.base_url}/health", timeout=10).raise_for_status().json()["stats"]
    return (sum(m["running"] for m in stats.values()), sum(m["waiting"] for m in stats.values()))


def wait_until_idle(server, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while health_load(server) != (0, 0):
        assert time.monotonic() < deadline, f"still busy after {timeout} s: {health_load(server)}"
        time.sleep(0.1)


def completion_body(server, max_tokens: int, **extra) -> dict:
    return {"model": server.model, "prompt": "Once upon a time", "max_tokens": max_tokens,
            "logit_bias": NO_EOS, "temperature": 0, **extra}


# --- load --------------------------------------------------------------------------------------------------

def test_200_concurrent_clients_get_answers_or_429_and_the_server_stays_healthy(server):
    max_tokens = 8

    async def one(client: httpx.AsyncClient) -> httpx.Response:
        return await client.post(COMPLETIONS, json=completion_body(server, max_tokens))

    async def all_at_once() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=server.base_url, limits=limits, timeout=120) as client:
            return await asyncio.gather(*(one(client) for _ in range(200)))

    started = time.monotonic()
    responses = asyncio.run(all_at_once())
    elapsed = time.monotonic() - started
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 429}, sorted(set(statuses))
    accepted = [r.json() for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert len(accepted) >= NUM_PARALLEL + MAX_QUEUE and refused
    for body in accepted:
        usage = body["usage"]
        assert usage["completion_tokens"] == max_tokens and body["choices"][0]["finish_reason"] == "length"
        assert usage["prompt_tokens"] > 0 and usage["total_tokens"] == usage["prompt_tokens"] + max_tokens
    for response in refused:
        assert int(response.headers["retry-after"]) >= 1 and response.json()["error"]["type"] == "rate_limit_error"
    wait_until_idle(server)
    assert httpx.post(server.base_url + COMPLETIONS, json=completion_body(server, 2), timeout=60).status_code == 200
    report(f"200 concurrent clients, --parallel {NUM_PARALLEL} --max-queue {MAX_QUEUE}: {len(accepted)} x 200 "
           f"(usage exact), {len(refused)} x 429, no other status, in {elapsed:.1f} s; healthy afterwards")


async def _stream_until_first_token(client: httpx.AsyncClient, body: dict) -> int:
    """Open a stream, read until the first content arrives, then disconnect; returns the status."""
    async with client.stream("POST", COMPLETIONS, json=body) as response:
        if response.status_code != 200:
            return response.status_code
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                assert "choices" in chunk, chunk
                if chunk["choices"][0]["text"]:
                    return 200
    raise AssertionError("the stream ended before its first token")


def test_100_clients_that_disconnect_mid_stream_free_every_slot(server):
    body = completion_body(server, 2000, stream=True)
    wave = NUM_PARALLEL + MAX_QUEUE  # as many as are admitted at once

    async def waves() -> list[int]:
        statuses: list[int] = []
        async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as client:
            while len(statuses) < 100:
                size = min(wave, 100 - len(statuses))
                statuses += await asyncio.gather(*(_stream_until_first_token(client, body) for _ in range(size)))
        return statuses

    started = time.monotonic()
    statuses = asyncio.run(waves())
    elapsed = time.monotonic() - started
    assert len(statuses) == 100 and set(statuses) <= {200, 429}
    wait_until_idle(server, timeout=15)  # every aborted sequence was freed
    assert_parallel_requests_run_at_once(server)
    report(f"100 streaming clients disconnecting after their first token ({statuses.count(200)} streamed, "
           f"{statuses.count(429)} x 429) in {elapsed:.1f} s: all slots free within 15 s, then "
           f"{NUM_PARALLEL} requests ran at once")


def assert_parallel_requests_run_at_once(server) -> None:
    """--parallel streams all get tokens while /health counts them all running and none waiting."""
    with contextlib.ExitStack() as streams, httpx.Client(base_url=server.base_url, timeout=120) as client:
        for _ in range(NUM_PARALLEL):
            response = streams.enter_context(client.stream("POST", COMPLETIONS,
                                                           json=completion_body(server, 2000, stream=True)))
            assert response.status_code == 200
            lines = response.iter_lines()
            streams.callback(lambda lines=lines: None)  # keeps the iterator referenced until the end
            assert next(line for line in lines if line.startswith("data: {"))
        assert health_load(server) == (NUM_PARALLEL, 0)
    wait_until_idle(server, timeout=15)


def _post_raw(port: int, body: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=120)
    sock.sendall(b"POST " + COMPLETIONS.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    return sock


def _others_complete(server, num_clients: int = 3, max_tokens: int = 16) -> float:
    """Normal requests beside a slow client; returns how long the slowest took."""
    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as client:
            return await asyncio.gather(*(client.post(COMPLETIONS, json=completion_body(server, max_tokens))
                                          for _ in range(num_clients)))

    started = time.monotonic()
    responses = asyncio.run(run())
    assert [r.status_code for r in responses] == [200] * num_clients
    assert all(r.json()["usage"]["completion_tokens"] == max_tokens for r in responses)
    return time.monotonic() - started


def test_a_client_that_never_reads_its_stream_does_not_hold_up_the_others(server):
    body = json.dumps(completion_body(server, 400, stream=True)).encode()
    sock = _post_raw(server.port, body)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        sock.sendall(body)  # and never read a byte of the answer
        elapsed = _others_complete(server)
        assert sock.fileno() != -1  # the silent client is still connected while the others finished
    finally:
        sock.close()
    wait_until_idle(server)
    report(f"a client that never reads its stream: 3 other requests (16 tokens each) done in {elapsed:.1f} s "
           "while it stayed connected")


def test_a_client_sending_its_body_byte_by_byte_does_not_hold_up_the_others(server):
    body = json.dumps(completion_body(server, 4), indent=40).encode()  # long enough to outlast the others
    sock = _post_raw(server.port, body)
    done = threading.Event()
    num_sent = [0]

    def trickle() -> None:
        while num_sent[0] < len(body) - 1 and not done.is_set():
            sock.sendall(body[num_sent[0]:num_sent[0] + 1])
            num_sent[0] += 1
            time.sleep(0.05)

    sender = threading.Thread(target=trickle, daemon=True)
    try:
        sender.start()
        elapsed = _others_complete(server)
        assert sender.is_alive(), "the slow body finished before the others: the test proved nothing"
        done.set()
        sender.join(timeout=30)
        sock.sendall(body[num_sent[0]:])
        answer = sock.recv(65536).decode(errors="replace")
        assert answer.startswith("HTTP/1.1 200"), answer[:200]
    finally:
        done.set()
        sock.close()
    report(f"a client sending its body one byte per 50 ms: 3 other requests done in {elapsed:.1f} s while it "
           f"had sent {num_sent[0]} of {len(body)} bytes; its own request then answered 200")


# --- the model cache -------------------------------------------------------------------------------------

@pytest.fixture()
def home(tmp_path, hub):  # noqa: F811
    hub.reset()
    return tmp_path


def partial_file(home: Path, sha: str) -> Path:
    return home / "hf" / "hub" / ("models--" + REPO.replace("/", "--")) / "blobs" / f"{sha}.incomplete"


def test_pull_killed_with_sigkill_resumes_and_verifies(home, hub):  # noqa: F811
    sha = file_digest(embedded_model_path(), "sha256")
    hub.faults.stall_after[sha] = 50 * MB
    first = run_cli(home, hub.endpoint, "pull", f"hf://{REPO}:Q4_1", wait=False)
    hub.wait_for_bytes(sha, 50 * MB)
    partial = partial_file(home, sha)
    deadline = time.monotonic() + 60
    while (not partial.exists() or partial.stat().st_size < 40 * MB) and time.monotonic() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)  # no handler runs: whatever is on disk is what the next run finds
    first.communicate(timeout=60)
    assert first.returncode == -signal.SIGKILL
    kept = partial.stat().st_size
    assert kept >= 40 * MB and blobs(home, REPO) == [partial]  # only the partial: nothing trusted yet
    hub.faults.stall_after.clear()
    hub.faults.release.set()
    path = pulled_path(run_cli(home, hub.endpoint, "pull", f"hf://{REPO}:Q4_1"))
    assert file_digest(path, "sha256") == sha and not partial.exists()
    assert hub.cdn_gets(sha)[-1]["range"] == f"bytes={kept}-"
    report(f"serve pull SIGKILLed after {kept / MB:.0f} MB of 98 MB: the next run resumed at that byte and "
           "the sha256 matched")


def test_a_cached_file_corrupted_on_disk_is_fetched_again_never_loaded(home, hub):  # noqa: F811
    sha = file_digest(embedded_model_path(), "sha256")
    path = pulled_path(run_cli(home, hub.endpoint, "pull", f"hf://{REPO}:Q4_1"))
    with open(path.resolve(), "r+b") as blob:  # one flipped byte, same size
        blob.seek(12_345_678)
        byte = blob.read(1)
        blob.seek(12_345_678)
        blob.write(bytes([byte[0] ^ 0xFF]))
    offline = run_cli(home, hub.endpoint, "pull", f"hf://{REPO}:Q4_1", env={"HF_HUB_OFFLINE": "1"})
    line = one_line_error(offline)  # offline, the corrupt copy is refused, not served
    assert f"hf://{REPO} is not in the cache" in line and "does not match its checksum" in offline.stderr
    assert not path.exists() and blobs(home, REPO) == []
    again = run_cli(home, hub.endpoint, "pull", f"hf://{REPO}:Q4_1")
    assert pulled_path(again) == path and file_digest(path, "sha256") == sha
    assert len(hub.cdn_gets(sha)) == 2  # fetched again
    report("a cached GGUF with one byte flipped on disk: detected by sha256, deleted, refused offline, "
           "downloaded again online")


# --- a full disk (a small tmpfs; mounting one needs root) ----------------------------------------------------

@contextlib.contextmanager
def small_disk(where: Path, size_mb: int):
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(where)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill up ({mounted.stderr.strip() or 'not root'})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill_up(folder: Path) -> Path:
    """Write a filler file until the disk is full (another writer may be racing for the same space)."""
    filler = folder / "filler"
    size = os.statvfs(folder).f_blocks * os.statvfs(folder).f_frsize
    with open(filler, "wb", buffering=0) as f:
        for _ in range(size // MB + 1):
            try:
                f.write(b"\0" * MB)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
    return filler


def wait_for_file(path: Path, num_bytes: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() or path.stat().st_size < num_bytes:
        assert time.monotonic() < deadline, f"{path} did not reach {num_bytes} bytes"
        time.sleep(0.02)


def test_the_disk_filling_up_during_a_pull_is_one_clear_error(home, hub):  # noqa: F811
    sha = file_digest(embedded_model_path(), "sha256")
    with small_disk(home / "hf", 120) as disk:
        hub.faults.stall_after[sha] = 20 * MB
        pull = run_cli(home, hub.endpoint, "pull", f"hf://{REPO}:Q4_1", wait=False)
        wait_for_file(partial_file(home, sha), 10 * MB)
        filler = fill_up(disk)  # the disk-space check passed; now something else takes the space
        hub.faults.stall_after.clear()
        hub.faults.release.set()  # the stalled connection drops; the client resumes and writes the rest
        _, stderr = pull.communicate(timeout=120)
        result = subprocess.CompletedProcess(pull.args, pull.returncode, "", stderr)
        line = one_line_error(result)
        assert "the disk filled up while downloading" in line and "run the pull again" in line
        assert [p.name for p in blobs(home, REPO)] == [f"{sha}.incomplete"]  # never a blob a load would use
        assert not list((disk / "hub").rglob(Q4_NAME))
        filler.unlink()
        path = pulled_path(run_cli(home, hub.endpoint, "pull", f"hf://{REPO}:Q4_1"))
        assert file_digest(path, "sha256") == sha
    report(f"disk full during a pull (120 MB tmpfs filled once 10 MB were written): one line '{line[:70]}...', only the "
           ".incomplete file left; the next pull resumed and verified")


def test_the_disk_filling_up_during_quantize_is_one_clear_error(tmp_path):
    source = f16_gguf()
    with small_disk(tmp_path / "disk", 140) as disk:
        out = disk / "smol-Q4_K_M.gguf"
        tmp = out.with_name(out.name + ".tmp")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        quantize = subprocess.Popen([sys.executable, "-m", "serve.cli", "quantize", str(source), "--type",
                                     "q4_k_m", "-o", str(out)], cwd=ROOT, env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        wait_for_file(tmp, 1 * MB)
        fill_up(disk)
        stdout, stderr = quantize.communicate(timeout=300)
        result = subprocess.CompletedProcess(quantize.args, quantize.returncode, stdout, stderr)
        line = one_line_error(result)
        assert "the disk filled up while writing" in line and "nothing was left behind" in line
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]  # neither the output nor its .tmp
    report(f"disk full during serve quantize (140 MB tmpfs filled once the output started): one line "
           f"'{line[:70]}...', no output or temporary file left")


# --- bad GGUF files on the command line ------------------------------------------------------------------------

def _bad_ggufs(folder: Path) -> dict[str, Path]:
    real = embedded_model_path().read_bytes()
    files = {"truncated": real[: 4 * MB], "header-only": real[:64], "magic-then-garbage": b"GGUF" + os.urandom(4096),
             "empty": b""}
    paths = {}
    for name, data in files.items():
        paths[name] = folder / f"{name}.gguf"
        paths[name].write_bytes(data)
    return paths


@pytest.mark.parametrize("kind", ["truncated", "header-only", "magic-then-garbage", "empty"])
def test_a_malformed_or_truncated_gguf_on_the_command_line_is_one_line(tmp_path, kind):
    path = _bad_ggufs(tmp_path)[kind]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "serve.cli", "up", "--model", str(path), "--port", str(free_port()),
                             "--host", "127.0.0.1"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    line = one_line_error(result)
    assert str(path) in line or path.name in line, line
    assert result.returncode == 1 and "Segmentation" not in result.stderr
