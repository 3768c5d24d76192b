"""A local Hugging Face Hub for tests: the endpoints huggingface_hub 2.4 calls, serving real files.

Two HTTP servers on 127.0.0.1: the "hub" (HF_ENDPOINT) and a "cdn" on another port, because the Hub
redirects LFS downloads to a CDN host: HEAD/GET /{repo}/resolve/{rev}/{path} answers 302 with
X-Repo-Commit, X-Linked-Etag (the sha256), X-Linked-Size and Location, and huggingface_hub stops at a
redirect that leaves the Hub host and reads the metadata from it. Endpoints:

    GET  /api/models/{repo}[/revision/{rev}]           model info
    GET  /api/models/{repo}/tree/{rev}[/{path}]        file listing with LFS sha256 and sizes
    POST /api/models/{repo}/paths-info/{rev}           same, for named paths
    HEAD/GET /{repo}/resolve/{rev}/{path}              302 to the CDN (LFS) or 200 with the bytes (git files)
    HEAD/GET /cdn/{sha256}                             the bytes, with Range support

Faults on demand (`HubServer.faults`): cut the connection every N bytes of a file, stall after N bytes until
released, corrupt one byte, or answer an HTTP status for a route a number of times. Every request is
logged (`HubServer.requests`) so tests can assert what the client really did (Range headers, no GETs).
"""
from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

CHUNK = 1 << 20


@dataclass
class HubFile:
    path: str
    source: Path | bytes
    lfs: bool = True
    fake_size: int | None = None  # advertise this size (for the disk-space check); content is never served
    size: int = 0
    sha256: str = ""
    git_oid: str = ""

    def __post_init__(self) -> None:
        self.size, self.sha256, self.git_oid = _digests(self.source)
        if self.fake_size is not None:
            self.size = self.fake_size

    def read(self, start: int, end: int) -> bytes:
        if isinstance(self.source, bytes):
            return self.source[start:end]
        with open(self.source, "rb") as f:
            f.seek(start)
            return f.read(end - start)


_DIGEST_CACHE: dict = {}


def _digests(source: Path | bytes) -> tuple[int, str, str]:
    key = source if isinstance(source, bytes) else (str(source), source.stat().st_size, source.stat().st_mtime)
    if key not in _DIGEST_CACHE:
        data_iter = [source] if isinstance(source, bytes) else _chunks(source)
        size = len(source) if isinstance(source, bytes) else source.stat().st_size
        sha256, sha1 = hashlib.sha256(), hashlib.sha1(f"blob {size}\0".encode())
        for chunk in data_iter:
            sha256.update(chunk)
            sha1.update(chunk)
        _DIGEST_CACHE[key] = (size, sha256.hexdigest(), sha1.hexdigest())
    return _DIGEST_CACHE[key]


def _chunks(path: Path):
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


@dataclass
class HubRepo:
    repo_id: str
    files: dict[str, HubFile]
    commit: str = ""
    gated: bool = False
    private: bool = False
    tokens: tuple[str, ...] = ()  # bearer tokens that may read a gated/private repo

    def __post_init__(self) -> None:
        if not self.commit:
            self.commit = hashlib.sha1(self.repo_id.encode()).hexdigest()


@dataclass
class Faults:
    cut_every: dict[str, int] = field(default_factory=dict)  # sha256 -> bytes sent per connection
    stall_after: dict[str, int] = field(default_factory=dict)  # sha256 -> stall once this offset is sent
    corrupt: dict[str, int] = field(default_factory=dict)  # sha256 -> offset of the flipped byte
    status: dict[str, list] = field(default_factory=dict)  # route ("tree", "resolve", "cdn") -> [code, count]
    release: threading.Event = field(default_factory=threading.Event)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    # --- plumbing ---
    def _reply(self, code: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.send_response(code)
        for key, value in (headers or {}).items():
            self.send_header(key, str(value))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, payload, headers: dict | None = None) -> None:
        self._reply(200, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _error(self, code: int, error_code: str | None, message: str, commit: str | None = None) -> None:
        headers = {"Content-Type": "application/json", "X-Error-Message": message}
        if error_code:
            headers["X-Error-Code"] = error_code
        if commit:
            headers["X-Repo-Commit"] = commit
        self._reply(code, json.dumps({"error": message}).encode(), headers)

    def _fault(self, route: str) -> bool:
        with self.server.lock:
            rule = self.server.hub.faults.status.get(route)
            if not rule or rule[1] <= 0:
                return False
            rule[1] -= 1
        self._error(rule[0], None, f"injected HTTP {rule[0]}")
        return True

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        return auth[len("Bearer "):] if auth.startswith("Bearer ") else None

    def _repo(self, repo_id: str, *, files: bool) -> HubRepo | None:
        """The repo if this request may see it; otherwise answers the Hub's error and returns None."""
        repo = self.server.hub.repos.get(repo_id)
        if repo is None or (repo.private and self._token() not in repo.tokens):
            code = 401 if self._token() is None else 404
            self._error(code, "RepoNotFound", "Repository not found")
            return None
        if files and repo.gated and self._token() not in repo.tokens:
            code = 401 if self._token() is None else 403
            self._error(code, "GatedRepo", f"Access to model {repo_id} is restricted. You must have access "
                                           "to it and be authenticated to access it. Please log in.")
            return None
        return repo

    # --- routes ---
    def do_HEAD(self) -> None:
        self._route()

    def do_GET(self) -> None:
        self._route()

    def do_POST(self) -> None:
        self._route()

    def _route(self) -> None:
        url = urlparse(self.path)
        path = unquote(url.path)
        self.server.hub.log(self.command, self.path, self.headers, self.server.name)
        parts = path.strip("/").split("/")
        if self.server.name == "cdn":
            return self._cdn(parts[1] if len(parts) == 2 and parts[0] == "cdn" else "")
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            return self._api("/".join(parts[2:4]), parts[4:], parse_qs(url.query))
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._resolve("/".join(parts[:2]), parts[3], "/".join(parts[4:]))
        self._error(404, None, "not found")

    def _api(self, repo_id: str, rest: list[str], query: dict) -> None:
        if rest and rest[0] == "tree" and self._fault("tree"):
            return
        repo = self._repo(repo_id, files=False)
        if repo is None:
            return
        if not rest or rest[0] == "revision":
            if self._fault("info"):
                return
            return self._json({"_id": repo.commit[:24], "id": repo.repo_id, "modelId": repo.repo_id,
                               "sha": repo.commit, "private": repo.private,
                               "gated": "manual" if repo.gated else False, "tags": ["gguf"],
                               "siblings": [{"rfilename": p} for p in sorted(repo.files)]})
        if rest[0] == "tree" and len(rest) >= 2:
            prefix = "/".join(rest[2:])
            return self._json(self._listing(repo, [p for p in sorted(repo.files)
                                                    if not prefix or p.startswith(prefix + "/")]))
        if rest[0] == "paths-info" and self.command == "POST":
            length = int(self.headers.get("Content-Length", 0))
            body = self.rfile.read(length).decode()
            if self.headers.get("Content-Type", "").startswith("application/json"):
                wanted = json.loads(body).get("paths", [])
            else:
                wanted = parse_qs(body).get("paths", [])
            return self._json(self._listing(repo, [p for p in wanted if p in repo.files]))
        self._error(404, None, "not found")

    def _listing(self, repo: HubRepo, paths: list[str]) -> list[dict]:
        entries = []
        for p in paths:
            f = repo.files[p]
            entry = {"type": "file", "oid": f.git_oid, "size": f.size, "path": p}
            if f.lfs:
                entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": 134}
            entries.append(entry)
        return entries

    def _resolve(self, repo_id: str, revision: str, file_path: str) -> None:
        if self._fault("resolve"):
            return
        repo = self._repo(repo_id, files=True)
        if repo is None:
            return
        if revision not in ("main", repo.commit):
            return self._error(404, "RevisionNotFound", "Invalid rev id")
        f = repo.files.get(file_path)
        if f is None:
            return self._error(404, "EntryNotFound", "Entry not found", commit=repo.commit)
        headers = {"X-Repo-Commit": repo.commit, "ETag": f'"{f.git_oid}"', "Accept-Ranges": "bytes"}
        if f.lfs:
            location = f"{self.server.hub.cdn_url}/cdn/{f.sha256}"
            headers.update({"Location": location, "X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": f.size})
            return self._reply(302, b"", headers)
        self._reply(200, f.read(0, f.size), headers)

    def _cdn(self, sha256: str) -> None:
        if self._fault("cdn"):
            return
        f = self.server.hub.by_sha.get(sha256)
        if f is None:
            return self._error(404, None, "no such object")
        start = 0
        range_header = self.headers.get("Range")
        if range_header and range_header.startswith("bytes="):
            start = int(range_header[len("bytes="):].split("-")[0])
        if start >= f.size:
            return self._reply(416, b"", {"Content-Range": f"bytes */{f.size}"})
        code = 206 if range_header else 200
        self.send_response(code)
        self.send_header("Content-Length", str(f.size - start))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{f.sha256}"')
        if code == 206:
            self.send_header("Content-Range", f"bytes {start}-{f.size - 1}/{f.size}")
        self.end_headers()
        if self.command != "HEAD":
            self._stream(f, start)

    def _stream(self, f: HubFile, start: int) -> None:
        faults = self.server.hub.faults
        cut = faults.cut_every.get(f.sha256)
        stall = faults.stall_after.get(f.sha256)
        corrupt_at = faults.corrupt.get(f.sha256)
        sent, offset = 0, start
        while offset < f.size:
            end = min(offset + CHUNK, f.size)
            if cut is not None:
                end = min(end, offset + (cut - sent))
            if stall is not None and offset < stall:
                end = min(end, stall)
            data = bytearray(f.read(offset, end))
            if corrupt_at is not None and offset <= corrupt_at < end:
                data[corrupt_at - offset] ^= 0xFF
            self.wfile.write(data)
            self.server.hub.count(f.sha256, len(data))
            sent, offset = sent + len(data), end
            if stall is not None and offset == stall:
                self.wfile.flush()
                faults.release.wait(timeout=120)  # the test interrupts the client meanwhile
                self._drop()
                return
            if cut is not None and sent >= cut and offset < f.size:
                self._drop()
                return

    def _drop(self) -> None:
        self.wfile.flush()
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, name: str, hub: "HubServer"):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.name, self.hub, self.lock = name, hub, threading.Lock()


class HubServer:
    """Start with `with HubServer(repos) as hub:`; `hub.endpoint` is the HF_ENDPOINT value."""

    def __init__(self, repos: list[HubRepo]):
        self.repos = {r.repo_id: r for r in repos}
        self.by_sha = {f.sha256: f for r in repos for f in r.files.values() if f.lfs and f.fake_size is None}
        self.faults = Faults()
        self.requests: list[dict] = []
        self.bytes_sent: dict[str, int] = {}
        self._lock = threading.Lock()
        self._servers = [_Server("hub", self), _Server("cdn", self)]
        self.endpoint = f"http://127.0.0.1:{self._servers[0].server_address[1]}"
        self.cdn_url = f"http://127.0.0.1:{self._servers[1].server_address[1]}"
        self._threads: list[threading.Thread] = []

    def log(self, method: str, path: str, headers, server: str) -> None:
        with self._lock:
            self.requests.append({"method": method, "path": path, "server": server,
                                  "range": headers.get("Range"), "auth": headers.get("Authorization")})

    def count(self, sha256: str, num_bytes: int) -> None:
        with self._lock:
            self.bytes_sent[sha256] = self.bytes_sent.get(sha256, 0) + num_bytes

    def cdn_gets(self, sha256: str) -> list[dict]:
        with self._lock:
            return [r for r in self.requests if r["server"] == "cdn" and r["method"] == "GET"
                    and r["path"] == f"/cdn/{sha256}"]

    def reset(self) -> None:
        """Forget faults and logs between tests (a stalled handler is released)."""
        self.faults.release.set()
        self.faults = Faults()
        with self._lock:
            self.requests.clear()
            self.bytes_sent.clear()

    def wait_for_bytes(self, sha256: str, num_bytes: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.bytes_sent.get(sha256, 0) < num_bytes:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server sent {self.bytes_sent.get(sha256, 0)} of {num_bytes} bytes")
            time.sleep(0.05)

    def __enter__(self) -> "HubServer":
        for server in self._servers:
            thread = threading.Thread(target=server.serve_forever, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc) -> None:
        self.faults.release.set()
        for server in self._servers:
            server.shutdown()
            server.server_close()
