"""Pick the GGUF file(s) of a Hub repository by quantization tag, as llama-server's `-hf org/repo:TAG` does.

Pure functions over a repository's file list: the tag matches case-insensitively as the last token of the
file name (`...-Q4_K_M.gguf`, `....Q4_K_M.gguf`, `...-q4_k_m-00001-of-00002.gguf`); projector, imatrix and
draft-model files are never picked; a single file is preferred over a split one; a split model is returned
whole, first shard first.
"""
from __future__ import annotations

import re

from serve.errors import HubError, ModelNotFoundError

DEFAULT_TAGS = ("Q4_K_M", "Q8_0")  # llama.cpp's choice when no tag is given
_SPLIT = re.compile(r"^(?P<prefix>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)
_TAG = re.compile(r"[-._]([A-Za-z0-9_]+)$")
_NOT_MODELS = ("mmproj", "imatrix", "mtp-", "eagle3-", "draft")


def split_info(path: str) -> tuple[str, int, int]:
    """(prefix, index, count) of a `-0000i-of-0000N.gguf` shard; (stem, 1, 1) for a single file."""
    match = _SPLIT.match(path)
    if match:
        return match["prefix"], int(match["index"]), int(match["count"])
    stem = path[:-5] if path.lower().endswith(".gguf") else path
    return stem, 1, 1


def quant_tag(path: str) -> str | None:
    """The quantization tag a file name ends with (`Q4_K_M`, `F16`, ...), upper-cased, or None."""
    prefix, _, _ = split_info(path.rsplit("/", 1)[-1])
    match = _TAG.search(prefix)
    if not match:
        return None
    tag = match.group(1).upper()
    return tag if re.match(r"^(I?Q\d|FP?\d|BF16|TQ\d|MXFP4)", tag) else None


def is_model_gguf(path: str) -> bool:
    name = path.rsplit("/", 1)[-1].lower()
    return name.endswith(".gguf") and not any(marker in name for marker in _NOT_MODELS)


def available_quants(paths: list[str]) -> list[str]:
    return sorted({tag for p in paths if is_model_gguf(p) and (tag := quant_tag(p))})


def _matches_tag(path: str, tag: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    pattern = rf"(^|[-_.]){re.escape(tag)}(-\d{{5}}-of-\d{{5}})?\.gguf$"
    return re.search(pattern, name, re.IGNORECASE) is not None


def shards_of(paths: list[str], first: str) -> list[str]:
    """All shards of the split model `first` belongs to, in order; [first] for a single file."""
    prefix, _, count = split_info(first)
    if count == 1:
        return [first]
    found = {}
    for p in paths:
        p_prefix, index, p_count = split_info(p)
        if p_prefix == prefix and p_count == count:
            found[index] = p
    missing = [i for i in range(1, count + 1) if i not in found]
    if missing:
        raise HubError(f"split model {first} is incomplete: shard(s) {missing} of {count} are missing")
    return [found[i] for i in range(1, count + 1)]


def _first_files(paths: list[str], tag: str) -> list[str]:
    """Model files matching `tag` that can start a load: single files and first shards."""
    hits = [p for p in paths if is_model_gguf(p) and _matches_tag(p, tag) and split_info(p)[1] == 1]
    # single files before split ones, then shallow paths before nested ones, then by name
    return sorted(hits, key=lambda p: (split_info(p)[2] > 1, p.count("/"), p))


def select_gguf(paths: list[str], quant: str | None, repo: str) -> list[str]:
    """The files to download for `repo` at `quant` (None: Q4_K_M, else Q8_0, else the first model file)."""
    models = [p for p in paths if is_model_gguf(p)]
    if not models:
        raise ModelNotFoundError(f"{repo} has no GGUF model files (for a safetensors repo use --backend vllm)")
    for tag in ([quant] if quant else list(DEFAULT_TAGS)):
        hits = _first_files(paths, tag)
        if hits:
            return shards_of(paths, hits[0])
    if quant is None:
        first = sorted((p for p in models if split_info(p)[1] == 1), key=lambda p: (p.count("/"), p))[0]
        return shards_of(paths, first)
    have = ", ".join(available_quants(paths)) or "none recognised"
    raise ModelNotFoundError(f"{repo} has no GGUF file for quant {quant}; available quants: {have}")


def select_explicit(paths: list[str], file: str, repo: str) -> list[str]:
    """An explicitly named file (case-insensitive, like llama-server's --hf-file), with its shards."""
    lowered = {p.lower(): p for p in paths}
    found = lowered.get(file.lower())
    if found is None:
        raise ModelNotFoundError(f"{repo} has no file {file}")
    return shards_of(paths, found)
