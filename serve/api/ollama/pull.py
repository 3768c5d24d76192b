"""POST /api/pull: serve.models.hub.pull in a worker thread, reported as Ollama's progress objects.

    {"status": "pulling manifest"}
    {"status": "pulling 8eeb52dfb3bb", "digest": "sha256:8eeb...", "total": 98362432, "completed": 41943040}
    ...
    {"status": "verifying sha256 digest"} {"status": "writing manifest"} {"status": "success"}

serve.models.hub has no progress callback, so progress is read where the download lands: the partial file
`blobs/<sha256>.incomplete` in the Hugging Face cache, polled while the pull runs. Its final size and digest
are reported exactly once the blob is complete; `total` during the download is the catalog's declared
download size (omitted when the catalog does not know it, e.g. an hf:// spec).
"""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, AsyncIterator

from serve.models.catalog import ModelSpec

log = logging.getLogger("serve.api")

POLL_SECONDS = 0.2
_INCOMPLETE = ".incomplete"


def pull_backend(spec: ModelSpec, configured_backend: str | None) -> str:
    """What to fetch: the server's backend when forced, else the GGUF (llama.cpp) when there is one."""
    if configured_backend in ("llamacpp", "vllm"):
        return configured_backend
    return "llamacpp" if spec.gguf is not None else "vllm"


def is_on_disk(spec: ModelSpec, backend: str) -> bool:
    """An embedded or local model: nothing to download."""
    source = spec.source(backend)
    return source is not None and source.local_path is not None and Path(source.local_path).exists()


def _repo(spec: ModelSpec, backend: str) -> str | None:
    source = spec.source(backend)
    return source.repo if source is not None else None


def _blobs_dir(repo: str) -> Path:
    from serve.models.cache import hub_settings, repo_dir

    return repo_dir(hub_settings().cache_dir, repo) / "blobs"


def _blobs(blobs_dir: Path) -> tuple[dict[str, int], dict[str, int]]:
    """({sha: size} of complete blobs, {sha: size} of partial downloads) in a cache blobs directory."""
    complete, partial = {}, {}
    try:
        entries = list(blobs_dir.iterdir())
    except OSError:
        return complete, partial
    for entry in entries:
        try:
            size = entry.stat().st_size
        except OSError:  # renamed from .incomplete to its final name meanwhile
            continue
        if entry.name.endswith(_INCOMPLETE):
            partial[entry.name[:-len(_INCOMPLETE)]] = size
        else:
            complete[entry.name] = size
    return complete, partial


def _collect_outcome(task: asyncio.Future) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.info("pull ended with: %s", task.exception())


def progress(sha: str, completed: int, total: int | None) -> dict[str, Any]:
    payload: dict[str, Any] = {"status": f"pulling {sha[:12]}", "digest": f"sha256:{sha}", "completed": completed}
    if total:
        payload["total"] = max(total, completed)
    return payload


async def pull_progress(spec: ModelSpec, backend: str) -> AsyncIterator[dict[str, Any]]:
    """Ollama's progress objects for pulling `spec`; a failed pull raises its ServeError from the thread."""
    from serve.models import hub

    yield {"status": "pulling manifest"}
    repo = _repo(spec, backend)
    if is_on_disk(spec, backend) or repo is None:
        if not is_on_disk(spec, backend):
            await asyncio.to_thread(hub.pull, spec, backend, progress=False)  # raises the one-line reason
        yield {"status": "success"}
        return
    blobs_dir = _blobs_dir(repo)
    before, _ = _blobs(blobs_dir)
    task = asyncio.ensure_future(asyncio.to_thread(hub.pull, spec, backend, progress=False))
    # A client that leaves does not stop the download (the next pull resumes or finds it); its outcome is
    # still collected, so a failure is logged here and not as asyncio's "exception never retrieved".
    task.add_done_callback(_collect_outcome)
    reported: dict[str, int] = {}
    while not task.done():
        await asyncio.wait({task}, timeout=POLL_SECONDS)
        for sha, size in _blobs(blobs_dir)[1].items():
            if reported.get(sha) != size:
                reported[sha] = size
                yield progress(sha, size, spec.download_bytes or None)
    task.result()
    after, _ = _blobs(blobs_dir)
    for sha, size in after.items():
        if sha not in before:
            yield progress(sha, size, size)
    for status in ("verifying sha256 digest", "writing manifest", "success"):
        yield {"status": status}
