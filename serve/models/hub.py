"""Getting a model's files onto this machine: the embedded file, a local path, or a pull from the Hub.

`ensure_model_file` is what `serve up` calls: it returns a local GGUF path for llama.cpp (pulling what is
missing into the standard HF cache, and quantizing once when the only source is F16/BF16) or a local
Hugging Face directory for vLLM. Every Hub failure becomes one actionable line (serve.errors).
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from serve.models.catalog import Catalog, GGUFSource, ModelSpec
from serve.errors import ConfigError, HubError, ModelNotFoundError
from serve.models.gguf import read_gguf_info
from serve.models.cache import (RemoteFile, bytes_to_fetch, cached_repos, cached_snapshot, check_disk_space,
                             download_file, hub_settings, human_bytes, is_intact, remove_snapshot_files,
                             snapshot_files)
from serve.models.select import select_explicit, select_gguf

log = logging.getLogger(__name__)

REVISION = "main"
# What vLLM needs from a checkpoint repo; other weight formats (.bin, .pth, GGUF, ONNX) are skipped.
_VLLM_SUFFIXES = (".json", ".safetensors", ".model", ".txt", ".py", ".tiktoken", ".jinja")


def _network_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, names in (("httpx2", ("TransportError",)), ("httpx", ("TransportError",)),
                          ("requests", ("ConnectionError", "Timeout"))):
        try:
            imported = __import__(module)
            errors += [getattr(imported, name) for name in names if hasattr(imported, name)]
        except ImportError:
            continue
    return tuple(errors)


def _cached_summary() -> str:
    repos = cached_repos()
    return ", ".join(repos) if repos else "nothing"


def _offline_error(what: str) -> HubError:
    settings = hub_settings()
    return HubError(f"{what} is not in the cache {settings.cache_dir} and offline mode is on (HF_HUB_OFFLINE=1); "
                    f"cached: {_cached_summary()}; pull it with network access first")


class HubUnreachableError(HubError):
    """No network path to the Hub; callers fall back to a complete cached copy when there is one."""


def _unreachable_error(what: str, exc: BaseException) -> HubUnreachableError:
    settings = hub_settings()
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return HubUnreachableError(f"cannot reach {settings.endpoint} ({reason}) and {what} is not in the cache; "
                               f"cached: {_cached_summary()}; to run offline on cached models set "
                               "HF_HUB_OFFLINE=1")


def _http_error(repo: str, exc: BaseException) -> BaseException:
    from huggingface_hub import errors as hf_errors

    url = f"{hub_settings().endpoint}/{repo}"
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, hf_errors.GatedRepoError):
        return HubError(f"{repo} is gated (HTTP {status}): accept the license at {url} and set HF_TOKEN")
    if isinstance(exc, hf_errors.RepositoryNotFoundError):
        if status in (401, 403):
            return HubError(f"{repo} was not found or is private (HTTP {status}): check the name; if it is "
                            f"gated or private, accept the license at {url} and set HF_TOKEN")
        return ModelNotFoundError(f"repository {repo} not found on {hub_settings().endpoint} (HTTP {status})")
    if isinstance(exc, hf_errors.RevisionNotFoundError):
        return ModelNotFoundError(f"{repo} has no revision {REVISION}")
    if isinstance(exc, hf_errors.EntryNotFoundError):
        return ModelNotFoundError(f"{repo}: a file the Hub listed is missing (HTTP {status}); try again later")
    if status in (401, 403):
        return HubError(f"access to {repo} denied (HTTP {status}): accept the license at {url} and set HF_TOKEN")
    return HubError(f"the Hub answered HTTP {status} for {repo}; try again later")


@contextmanager
def _hub_errors(repo: str):
    """Turn huggingface_hub and network exceptions into one-line ServeErrors."""
    from huggingface_hub import errors as hf_errors

    try:
        yield
    except hf_errors.OfflineModeIsEnabled:
        raise _offline_error(repo) from None
    except hf_errors.HfHubHTTPError as exc:
        raise _http_error(repo, exc) from None
    except _network_errors() as exc:
        raise _unreachable_error(f"hf://{repo}", exc) from None
    except OSError as exc:
        if "Consistency check failed" in str(exc):
            raise HubError(f"download from {repo} ended early; run the pull again to resume") from None
        raise HubError(f"{repo}: {exc}") from None


def _check_repo(repo: str) -> None:
    """One quick request without retries, so a missing network or repo fails in seconds, not after backoff."""
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    url = f"{hub_settings().endpoint}/api/models/{repo}/revision/{REVISION}"
    hf_raise_for_status(get_session().get(url, headers=build_hf_headers(), timeout=30))


def _remote_files(repo: str) -> dict[str, RemoteFile]:
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    _check_repo(repo)
    entries = HfApi().list_repo_tree(repo, recursive=True, revision=REVISION)
    return {e.path: RemoteFile(path=e.path, size=e.size, blob_id=e.blob_id,
                               sha256=e.lfs.sha256 if e.lfs else None)
            for e in entries if isinstance(e, RepoFile)}


def _plan_gguf(source: GGUFSource, paths: list[str]) -> list[str]:
    if source.file:
        return select_explicit(paths, source.file, source.repo)
    return select_gguf(paths, source.quant, source.repo)


def _fetch(repo: str, remotes: list[RemoteFile], progress: bool) -> list[Path]:
    check_disk_space(bytes_to_fetch(repo, remotes), hub_settings().cache_dir)
    return [download_file(repo, REVISION, remote, progress=progress) for remote in remotes]


def _cached_paths(repo: str, choose, *, verify: bool = False) -> list[Path] | None:
    """The cached files `choose` picks, or None; with `verify` (before a load), a file whose checksum no
    longer matches is deleted and counts as missing."""
    snapshot = cached_snapshot(repo, REVISION)
    if snapshot is None:
        return None
    try:
        chosen = choose(snapshot_files(snapshot))
    except (ModelNotFoundError, HubError):
        return None
    paths = [snapshot / p for p in chosen]
    if verify and not all([is_intact(path) for path in paths]):  # a list: every corrupt file is deleted
        return None
    return paths


def _pull(repo: str, choose, offline: bool, progress: bool) -> list[Path]:
    """Local paths of the files `choose(repo_paths)` picks, pulled if needed (cache first when offline)."""
    if offline:
        cached = _cached_paths(repo, choose, verify=True)
        if cached is None:
            raise _offline_error(f"hf://{repo}")
        return cached
    try:
        with _hub_errors(repo):
            remote = _remote_files(repo)
            remotes = [remote[p] for p in choose(sorted(remote))]
            return _fetch(repo, remotes, progress)
    except HubUnreachableError:
        cached = _cached_paths(repo, choose, verify=True)  # no network: a complete cached copy will do
        if cached is None:
            raise
        log.warning("cannot reach %s; using the cached copy of %s", hub_settings().endpoint, repo)
        return cached


def quantized_cache_path(source_file: Path, repo: str | None, quant_type: str) -> Path:
    """Where the one-time quantization of a Hub F16/BF16 file lives, beside the HF cache."""
    blob_id = source_file.resolve().name[:16]  # the blob name is the source's sha256
    folder = "models--" + (repo or "local").replace("/", "--")
    stem = source_file.name[:-5] if source_file.name.endswith(".gguf") else source_file.name
    return hub_settings().home / "quantserve" / "quantized" / folder / blob_id / f"{stem}-{quant_type}.gguf"


def _maybe_quantize(source: GGUFSource, path: Path, progress: bool) -> Path:
    if not source.quantize_to or read_gguf_info(path).quantized_types():
        return path
    target = quantized_cache_path(path, source.repo, source.quantize_to.upper())
    if target.exists():
        return target
    from serve.models.quantize import quantize_file

    log.info("quantizing %s to %s once; the result is cached at %s", path.name, source.quantize_to, target)
    return quantize_file(path, source.quantize_to, target, progress=progress)


def _gguf_file(spec: ModelSpec, offline: bool, progress: bool) -> Path:
    source = spec.gguf
    if source is None:
        raise ConfigError(f"model {spec.name} has no GGUF source for llama.cpp; try --backend vllm")
    if source.local_path is not None and Path(source.local_path).exists():
        return Path(source.local_path)
    if source.repo is None:
        raise ConfigError(f"model file not found: {source.local_path}")
    paths = _pull(source.repo, lambda files: _plan_gguf(source, files), offline, progress)
    return _maybe_quantize(source, paths[0], progress)


def _vllm_files(repo: str):
    """A chooser of the files vLLM loads from `repo` (config, tokenizer, safetensors weights)."""
    def choose(files: list[str]) -> list[str]:
        chosen = [p for p in files if p.endswith(_VLLM_SUFFIXES) and not p.startswith(("original/", "."))]
        if not any(p.endswith(".safetensors") for p in chosen):
            raise ModelNotFoundError(f"{repo} has no safetensors weights (vLLM needs a Hugging Face checkpoint)")
        return chosen
    return choose


def _vllm_dir(spec: ModelSpec, offline: bool, progress: bool) -> Path:
    source = spec.vllm
    if source is None:
        raise ConfigError(f"model {spec.name} has no vLLM source; try --backend llamacpp")
    if source.local_path is not None:
        if not Path(source.local_path).is_dir():
            raise ConfigError(f"model directory not found: {source.local_path}")
        return Path(source.local_path)
    return _snapshot_dir(_pull(source.repo, _vllm_files(source.repo), offline, progress)[0])


def _snapshot_dir(path: Path) -> Path:
    """snapshots/<commit> for a file inside it."""
    parts = path.parts
    return Path(*parts[:len(parts) - len(_relative(path).split("/"))])


def _relative(path: Path) -> str:
    """A snapshot file's path inside its repository (snapshots/<commit>/<this>)."""
    parts = path.parts
    index = len(parts) - 1 - parts[::-1].index("snapshots")
    return "/".join(parts[index + 2:])


def ensure_model_file(spec: ModelSpec, backend: str, *, offline: bool | None = None,
                      progress: bool = True) -> Path:
    """A local GGUF file (llamacpp; the first shard of a split model) or HF directory (vllm) for `spec`."""
    offline = hub_settings().offline if offline is None else offline
    if backend == "llamacpp":
        return _gguf_file(spec, offline, progress)
    if backend == "vllm":
        return _vllm_dir(spec, offline, progress)
    raise ConfigError(f"unknown backend {backend!r}: choose llamacpp or vllm")


def pull(spec: ModelSpec, backend: str = "llamacpp", *, progress: bool = True) -> Path:
    """Download what `spec` needs for `backend` into the HF cache (resuming, verified); returns the path."""
    return ensure_model_file(spec, backend, progress=progress)


def _cached_gguf(spec: ModelSpec) -> list[Path]:
    """The cached Hub files of `spec`'s GGUF source, plus its one-time quantized copy if made."""
    source = spec.gguf
    if source is None or not source.repo:
        return []
    cached = _cached_paths(source.repo, lambda files: _plan_gguf(source, files)) or []
    if cached and source.quantize_to:
        target = quantized_cache_path(cached[0], source.repo, source.quantize_to.upper())
        cached += [target] if target.exists() else []
    return cached


def _cached_vllm(spec: ModelSpec, *, verify: bool = False) -> list[Path]:
    if spec.vllm is None or not spec.vllm.repo:
        return []
    return _cached_paths(spec.vllm.repo, _vllm_files(spec.vllm.repo), verify=verify) or []


def cached_spec(spec: ModelSpec) -> ModelSpec | None:
    """A Hub spec as the cache already holds it, found without any network access: each source pointed at
    its cached files (so loading it downloads nothing), a source not in the cache dropped; None when no
    source is cached. (Hub specs are served as they are: no one-time quantization to look for.)"""
    source = spec.gguf
    gguf = (_cached_paths(source.repo, lambda files: _plan_gguf(source, files), verify=True)
            if source and source.repo else None)
    checkpoint = _cached_vllm(spec, verify=True)
    if not gguf and not checkpoint:
        return None
    return replace(spec, gguf=replace(source, local_path=gguf[0]) if gguf else None,
                   vllm=replace(spec.vllm, local_path=_snapshot_dir(checkpoint[0])) if checkpoint else None)


def _on_disk(spec: ModelSpec) -> tuple[list[Path], int]:
    """What of `spec` is on disk (files; a vLLM checkpoint as its directory) and the bytes, offline."""
    source = spec.gguf
    if source is not None and source.local_path is not None and Path(source.local_path).exists():
        shown = [Path(source.local_path)]  # embedded or local: the Hub fallback is not needed
        sizes = shown[0].stat().st_size
    else:
        shown = _cached_gguf(spec)
        sizes = sum(p.stat().st_size for p in shown)
    checkpoint = _cached_vllm(spec)
    if checkpoint:
        shown.append(_snapshot_dir(checkpoint[0]))
        sizes += sum(p.stat().st_size for p in checkpoint)
    return shown, sizes


def _hub_spec(source: GGUFSource) -> str:
    """The source written as a spec a user can pass to `serve pull` / `serve up --model`."""
    if source.file:
        return f"hf://{source.repo}/{source.file}"
    return f"hf://{source.repo}:{source.quant}" if source.quant else f"hf://{source.repo}"


def list_models(catalog: Catalog) -> list[dict]:
    """The catalog's entries with what is downloaded (total size and paths); no network access."""
    rows = []
    for name, spec in sorted(catalog.models.items()):
        paths, size = _on_disk(spec)
        gguf = spec.gguf
        rows.append({
            "name": name,
            "gguf": None if gguf is None else (_hub_spec(gguf) if gguf.repo
                                               else str(gguf.local_path)),
            "vllm": None if spec.vllm is None else spec.vllm.repo,
            "context_length": spec.context_length, "num_params": spec.num_params, "license": spec.license,
            "download_bytes": spec.download_bytes,
            "downloaded": bool(paths), "size_bytes": size, "paths": [str(p) for p in paths],
        })
    return rows


def remove(spec: ModelSpec) -> list[Path]:
    """Delete the downloaded files of `spec` from the HF cache (never the embedded or a local file)."""
    removed: list[Path] = []
    for repo, cached in ((spec.gguf.repo if spec.gguf else None, _cached_gguf(spec)),
                         (spec.vllm.repo if spec.vllm else None, _cached_vllm(spec))):
        in_cache = [p for p in cached if "snapshots" in p.parts]
        for extra in (p for p in cached if p not in in_cache):  # the quantized copy
            extra.unlink()
            removed.append(extra)
        if in_cache:
            removed += remove_snapshot_files(repo, [_relative(p) for p in in_cache])
    return removed


def describe_size(paths: list[Path]) -> str:
    return human_bytes(sum(p.stat().st_size for p in paths if p.exists()))

