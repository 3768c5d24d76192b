"""Files in the standard Hugging Face cache: resumable, verified downloads and what is already there.

Layout (the one `huggingface_hub` and llama.cpp use, so other tools share the files):
    $HF_HOME/hub/models--org--repo/blobs/<etag>            content (etag = sha256 for LFS files)
    $HF_HOME/hub/models--org--repo/snapshots/<commit>/<path> -> ../../blobs/<etag>
    $HF_HOME/hub/models--org--repo/refs/main                commit id

Why not `hf_hub_download`: in huggingface_hub 2.4 it downloads into a process-unique temporary file that it
deletes on failure, so an interrupted pull restarts from zero (it only resumes within one call). quantserve
keeps `blobs/<etag>.incomplete` across runs and resumes it with an HTTP Range request, through
huggingface_hub's own `http_get` (same session, headers, retries and progress bar). The finished file is
checked against the Hub's sha256 (LFS files) or git blob id (small files) before it enters the cache, and
a cached file is checked again before it is used (a blob is named by its checksum): a file changed on disk
is deleted and fetched again, never loaded. The hash is computed once per version of the file: a stamp
beside the cache records the size, times and inode it had when it last matched.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

from serve.errors import HubError

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
log = logging.getLogger("serve.models")


@dataclass(frozen=True)
class HubSettings:
    """The Hub environment, read once (huggingface_hub itself reads it at import time)."""

    endpoint: str
    home: Path  # HF_HOME
    cache_dir: Path  # HF_HUB_CACHE, normally $HF_HOME/hub
    offline: bool  # HF_HUB_OFFLINE


@lru_cache(maxsize=1)
def hub_settings() -> HubSettings:
    from huggingface_hub import constants

    return HubSettings(endpoint=constants.ENDPOINT, home=Path(constants.HF_HOME).expanduser(),
                       cache_dir=Path(constants.HF_HUB_CACHE).expanduser(),
                       offline=bool(constants.HF_HUB_OFFLINE))


@dataclass(frozen=True)
class RemoteFile:
    """One file of a Hub repository as its tree listing describes it."""

    path: str
    size: int
    blob_id: str  # git object id
    sha256: str | None  # LFS sha256; None for files stored in git


def repo_dir(cache_dir: Path, repo: str) -> Path:
    return cache_dir / ("models--" + repo.replace("/", "--"))


def human_bytes(num: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(num) < 1000 or unit == "PB":
            break
        num /= 1000
    return f"{num:.0f} {unit}" if unit == "B" else f"{num:.1f} {unit}"


def free_bytes(path: Path) -> int:
    """Free space on the file system that holds `path` (or its nearest existing parent)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return shutil.disk_usage(candidate).free
    return shutil.disk_usage("/").free


def check_disk_space(needed: int, where: Path) -> None:
    free = free_bytes(where)
    if needed > free:
        raise HubError(f"not enough disk space in {where}: need {human_bytes(needed)}, "
                       f"{human_bytes(free)} free")


def partial_path(cache_dir: Path, repo: str, etag: str) -> Path:
    return repo_dir(cache_dir, repo) / "blobs" / f"{etag}.incomplete"


def file_digest(path: Path, algorithm: str, prefix: bytes = b"") -> str:
    digest = hashlib.new(algorithm)
    digest.update(prefix)
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(path: Path, remote: RemoteFile, etag: str) -> None:
    """Raise HubError (and delete the file) unless it matches the Hub's checksum."""
    if remote.sha256 or _HEX64.match(etag):
        expected, kind = (remote.sha256 or etag), "sha256"
        actual = file_digest(path, "sha256")
    else:
        expected, kind = remote.blob_id or etag, "git blob id"
        actual = file_digest(path, "sha1", f"blob {path.stat().st_size}\0".encode())
    if actual != expected:
        path.unlink(missing_ok=True)
        raise HubError(f"{remote.path}: {kind} mismatch (expected {expected[:16]}..., got {actual[:16]}...); "
                       "the corrupt download was deleted, run the pull again")


def _identity(path: Path) -> str:
    # ctime changes with every write and no user tool sets it back: a rewritten file is hashed again
    stat = path.stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ctime_ns}:{stat.st_ino}"


def _stamp_path(etag: str) -> Path:
    return hub_settings().home / "quantserve" / "verified" / etag


def _remember_verified(blob: Path) -> None:
    try:
        stamp = _stamp_path(blob.name)
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(_identity(blob))
    except OSError:
        pass  # a full disk or a read-only home: the file is hashed again next time, nothing worse


def _blob_matches_its_name(blob: Path) -> bool:
    etag = blob.name
    try:
        if _stamp_path(etag).read_text() == _identity(blob):
            return True
    except OSError:
        pass
    if _HEX64.match(etag):
        actual = file_digest(blob, "sha256")
    elif _COMMIT.match(etag):
        actual = file_digest(blob, "sha1", f"blob {blob.stat().st_size}\0".encode())
    else:
        return True  # an etag that is no checksum: nothing to check against
    if actual == etag:
        _remember_verified(blob)
    return actual == etag


def is_intact(pointer: Path) -> bool:
    """Whether the cached snapshot file `pointer` still matches the checksum its blob is named by. A
    corrupt blob is deleted with the pointer (so the next pull fetches it again) and False returned."""
    if not pointer.is_symlink():  # a copy where the file system has no links: no checksum to go by
        return pointer.exists()
    blob = pointer.resolve()
    if not blob.is_file():
        return False
    if _blob_matches_its_name(blob):
        return True
    log.warning("%s in the cache does not match its checksum %s (changed on disk): deleted, it will be "
                "downloaded again", pointer, blob.name[:16])
    blob.unlink(missing_ok=True)
    pointer.unlink(missing_ok=True)
    return False


@contextmanager
def _progress_bars(enabled: bool):
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    if not enabled and not was_disabled:
        disable_progress_bars()
    try:
        yield
    finally:
        if not enabled and not was_disabled:
            enable_progress_bars()


def _link(blob: Path, pointer: Path) -> None:
    pointer.parent.mkdir(parents=True, exist_ok=True)
    if pointer.is_symlink() or pointer.exists():
        pointer.unlink()
    try:
        pointer.symlink_to(os.path.relpath(blob, pointer.parent))
    except OSError:  # file systems without symlinks (some Windows setups): keep a copy
        shutil.copyfile(blob, pointer)


def _write_ref(storage: Path, revision: str, commit: str) -> None:
    if revision != commit:
        ref = storage / "refs" / revision
        ref.parent.mkdir(parents=True, exist_ok=True)
        if not ref.exists() or ref.read_text() != commit:
            ref.write_text(commit)


def _fetch_to_partial(url: str, partial: Path, size: int | None, name: str, progress: bool) -> None:
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    headers = build_hf_headers()
    if urlparse(url).netloc != urlparse(hub_settings().endpoint).netloc:
        headers.pop("authorization", None)  # a CDN location is pre-signed; the token stays on the Hub
    resume = partial.stat().st_size if partial.exists() else 0
    if size is not None and resume > size:
        resume = 0  # not ours to trust: start over
    mode = "r+b" if resume else "wb"
    with partial.open(mode) as f, _progress_bars(progress):
        f.seek(resume)
        f.truncate()
        http_get(url, f, resume_size=resume, headers=headers, expected_size=size, displayed_filename=name)


def _fetch_without_filling_the_disk(url: str, partial: Path, size: int | None, path: str, progress: bool) -> None:
    try:
        _fetch_to_partial(url, partial, size, path.rsplit("/", 1)[-1], progress)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        have = partial.stat().st_size if partial.exists() else 0
        raise HubError(f"the disk filled up while downloading {path} into {partial.parent} ({human_bytes(have)} "
                       f"of {human_bytes(size or 0)} written, {human_bytes(free_bytes(partial.parent))} free): "
                       "free some space and run the pull again, it resumes from there") from None


def download_file(repo: str, revision: str, remote: RemoteFile, *, progress: bool = True) -> Path:
    """Download one repository file into the cache (resuming a partial one) and return its snapshot path."""
    from filelock import FileLock
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    settings = hub_settings()
    meta = get_hf_file_metadata(hf_hub_url(repo, remote.path, revision=revision))
    if not meta.commit_hash or not meta.etag:
        raise HubError(f"{settings.endpoint} did not answer like a Hugging Face Hub (no commit or etag header)")
    storage = repo_dir(settings.cache_dir, repo)
    blob = storage / "blobs" / meta.etag
    pointer = storage / "snapshots" / meta.commit_hash / remote.path
    _write_ref(storage, revision, meta.commit_hash)
    if pointer.exists() and is_intact(pointer):
        return pointer
    blob.parent.mkdir(parents=True, exist_ok=True)
    lock_path = settings.cache_dir / ".locks" / storage.name / f"{meta.etag}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock_path)):
        if not blob.exists():
            partial = partial_path(settings.cache_dir, repo, meta.etag)
            size = meta.size if meta.size is not None else remote.size
            _fetch_without_filling_the_disk(meta.location, partial, size, remote.path, progress)
            verify_file(partial, remote, meta.etag)
            partial.chmod(0o644)
            os.replace(partial, blob)
            _remember_verified(blob)
        _link(blob, pointer)
    return pointer


def bytes_to_fetch(repo: str, remotes: list[RemoteFile]) -> int:
    """What still has to come over the network for `remotes` (partial downloads count as done)."""
    cache_dir = hub_settings().cache_dir
    needed = 0
    for remote in remotes:
        etag = remote.sha256 or remote.blob_id
        blob = repo_dir(cache_dir, repo) / "blobs" / etag
        if blob.exists():
            continue
        partial = partial_path(cache_dir, repo, etag)
        needed += remote.size - (partial.stat().st_size if partial.exists() else 0)
    return max(needed, 0)


def cached_snapshot(repo: str, revision: str = "main") -> Path | None:
    """The snapshot directory the cache holds for `repo` at `revision`, if any."""
    storage = repo_dir(hub_settings().cache_dir, repo)
    commit = revision if _COMMIT.match(revision) else None
    ref = storage / "refs" / revision
    if commit is None and ref.is_file():
        commit = ref.read_text().strip()
    if commit is None:
        return None
    snapshot = storage / "snapshots" / commit
    return snapshot if snapshot.is_dir() else None


def snapshot_files(snapshot: Path) -> list[str]:
    """Repository paths of the complete files in a snapshot directory."""
    return sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*")
                  if p.is_file() and not p.name.endswith(".incomplete"))


def cached_repos() -> list[str]:
    """`org/repo` ids of the model repositories present in the cache."""
    cache_dir = hub_settings().cache_dir
    if not cache_dir.is_dir():
        return []
    return sorted(d.name[len("models--"):].replace("--", "/", 1) for d in cache_dir.glob("models--*")
                  if d.is_dir())


def remove_snapshot_files(repo: str, paths: list[str]) -> list[Path]:
    """Delete `paths` from every snapshot of `repo`, with their blobs; returns what was removed."""
    storage = repo_dir(hub_settings().cache_dir, repo)
    removed: list[Path] = []
    for snapshot in sorted((storage / "snapshots").glob("*")):
        for rel in paths:
            pointer = snapshot / rel
            if not (pointer.is_symlink() or pointer.exists()):
                continue
            blob = pointer.resolve() if pointer.is_symlink() else None
            pointer.unlink()
            removed.append(pointer)
            if blob is not None and blob.exists() and blob.parent.name == "blobs":
                blob.unlink()
                removed.append(blob)
    return removed
