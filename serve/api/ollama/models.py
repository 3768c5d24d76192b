"""What Ollama's /api/tags, /api/ps and /api/show say about a model.

A model is "local" when it is loaded in the pool or when the catalog's files for it are on disk (the
embedded SmolLM2, a pulled alias). Details come from the GGUF header (architecture, parameter count, file
type, chat template) and the catalog (license, context). Everything here touches the disk, so routes call
it through a worker thread.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

from serve.api.ollama.protocol import ollama_model_name
from serve.models.catalog import Catalog, ModelSpec
from serve.models.tasks import model_tasks
from serve.runtime.pool import ModelInfo
from serve.errors import ConfigError

# llama.h LLAMA_FTYPE_*: the `general.file_type` of a GGUF file, as Ollama shows it (quantization_level).
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
    12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
    19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL",
    26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0",
    37: "TQ2_0", 38: "MXFP4_MOE",
}
# Ollama's expires_at for a model kept forever: now + the largest Go duration (about 292 years).
FOREVER_SECONDS = (2**63 - 1) // 10**9
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def timestamp(seconds: float | None = None) -> str:
    """RFC 3339 in UTC, as Ollama's created_at / modified_at / expires_at."""
    moment = datetime.fromtimestamp(time.time() if seconds is None else seconds, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parameter_size(num_params: int) -> str:
    """Ollama's human form: 134515008 -> "134.52M", 8030261248 -> "8.0B"."""
    for scale, unit, decimals in ((1e9, "B", 1), (1e6, "M", 2), (1e3, "K", 2)):
        if num_params >= scale:
            value = num_params / scale
            return f"{int(value)}{unit}" if value == int(value) else f"{value:.{decimals}f}{unit}"
    return str(num_params)


@dataclass(frozen=True)
class LocalModel:
    name: str  # as the pool names it (no ":latest")
    path: Path | None  # a GGUF file or a Hugging Face directory; None when unknown
    size: int  # bytes on disk (or in memory, for a loaded model whose files we cannot see)
    spec: ModelSpec | None = None  # the catalog entry, when there is one
    loaded: ModelInfo | None = None  # when loaded

    @property
    def ollama_name(self) -> str:
        return ollama_model_name(self.name)


# --- reading the files ---------------------------------------------------------------------------------

@lru_cache(maxsize=64)
def _gguf_metadata(path: str, mtime_ns: int) -> tuple[dict, int]:
    """(header metadata, parameter count) of a GGUF file; cached per file version."""
    from serve.models.gguf import read_gguf_info

    info = read_gguf_info(Path(path))
    num_params = info.num_elements(two_dim=True) + info.num_elements(two_dim=False)
    return info.metadata, num_params


def gguf_metadata(path: Path | None) -> tuple[dict, int]:
    if path is None or not path.is_file():
        return {}, 0
    try:
        return _gguf_metadata(str(path), path.stat().st_mtime_ns)
    except ConfigError:  # not a readable GGUF: show what we know without it
        return {}, 0


def _hf_config(path: Path | None, name: str) -> dict:
    """A JSON file of a Hugging Face model directory (config.json, tokenizer_config.json), or {}."""
    if path is None or not (path / name).is_file():
        return {}
    try:
        return json.loads((path / name).read_text())
    except (OSError, ValueError):
        return {}


@lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def digest(model: LocalModel) -> str:
    """The sha256 of the weights file (an HF cache blob is named by it); for a directory or an unknown
    path, a stable id derived from the name."""
    path = model.path
    if path is not None and path.is_file():
        blob = path.resolve()
        if _SHA256.match(blob.name):
            return blob.name
        stat = blob.stat()
        return _file_sha256(str(blob), stat.st_size, stat.st_mtime_ns)
    return hashlib.sha256(model.name.encode()).hexdigest()


def modified_at(model: LocalModel) -> str:
    if model.path is not None and model.path.exists():
        return timestamp(model.path.stat().st_mtime)
    return timestamp(model.loaded.created if model.loaded is not None else None)


# --- Ollama's shapes ------------------------------------------------------------------------------------

def details(model: LocalModel) -> dict[str, Any]:
    """Ollama's `details`: format, family, families, parameter_size, quantization_level."""
    metadata, num_params = gguf_metadata(model.path)
    if model.spec is not None and model.spec.num_params:
        num_params = model.spec.num_params
    if metadata:
        family = str(metadata.get("general.architecture", ""))
        file_type = metadata.get("general.file_type")
        level = FILE_TYPES.get(file_type, f"type{file_type}" if file_type is not None else "")
        fmt = "gguf"
    else:
        config = _hf_config(model.path, "config.json")
        family = str(config.get("model_type", ""))
        quantization = config.get("quantization_config") or {}
        level = str(quantization.get("quant_method", "")).upper() or str(config.get("torch_dtype", "")).upper()
        fmt = "safetensors" if config else ""
    return {"parent_model": "", "format": fmt, "family": family, "families": [family] if family else None,
            "parameter_size": parameter_size(num_params) if num_params else "", "quantization_level": level}


def tag_entry(model: LocalModel) -> dict[str, Any]:
    """One model of GET /api/tags."""
    name = model.ollama_name
    return {"name": name, "model": name, "modified_at": modified_at(model), "size": model.size,
            "digest": digest(model), "details": details(model)}


def ps_entry(model: LocalModel) -> dict[str, Any]:
    """One model of GET /api/ps (a loaded model)."""
    info = model.loaded
    expires_at = info.expires_at if info.expires_at is not None else time.time() + FOREVER_SECONDS
    return {"name": model.ollama_name, "model": model.ollama_name, "size": info.size_bytes or model.size,
            "digest": digest(model), "details": details(model), "expires_at": timestamp(expires_at),
            "size_vram": 0,  # no VRAM accounting yet: the pool's budget is one memory figure
            "context_length": info.context_length,
            # what `serve ps` shows beyond Ollama's fields
            "quantserve": {"backend": info.backend, "num_parallel": info.num_parallel,
                           "context_length": info.context_length, "idle_seconds": info.idle_seconds,
                           "pinned": info.pinned}}


def context_length(model: LocalModel, metadata: dict) -> int:
    """The per-request context: what the server serves when loaded, else the catalog's or the file's."""
    if model.loaded is not None:
        return model.loaded.context_length
    if model.spec is not None and model.spec.context_length:
        return model.spec.context_length
    architecture = metadata.get("general.architecture", "")
    return int(metadata.get(f"{architecture}.context_length", 0))


def _model_info(model: LocalModel, metadata: dict, num_params: int) -> dict[str, Any]:
    info = {key: value for key, value in metadata.items() if key != "tokenizer.chat_template"}
    if not info:
        config = _hf_config(model.path, "config.json")
        architecture = str(config.get("model_type", ""))
        info = {"general.architecture": architecture}
        if config.get("max_position_embeddings"):
            info[f"{architecture}.context_length"] = config["max_position_embeddings"]
    info.setdefault("general.parameter_count", num_params or (model.spec.num_params if model.spec else 0))
    return info


# Ollama's names of what a model can do, from the catalog's (a reranker has none in Ollama's list).
_OLLAMA_CAPABILITIES = {"chat": "completion", "tools": "tools", "reasoning": "thinking", "vision": "vision",
                        "embeddings": "embedding"}


def ollama_capabilities(model: LocalModel) -> list[str]:
    """What /api/show says the model can do: its catalog entry's capabilities, else what its file declares
    (a GGUF with a pooling type embeds or reranks); Ollama clients list embedding models by "embedding"."""
    tasks = model_tasks(model.spec or ModelSpec(name=model.name), model.path).tasks
    return [name for task, name in _OLLAMA_CAPABILITIES.items() if task in tasks]


def show_response(model: LocalModel) -> dict[str, Any]:
    """POST /api/show for a local model."""
    metadata, num_params = gguf_metadata(model.path)
    template = metadata.get("tokenizer.chat_template") or _hf_config(model.path, "tokenizer_config.json").get(
        "chat_template") or ""
    num_ctx = context_length(model, metadata)
    license_text = (model.spec.license if model.spec is not None else "") or str(metadata.get("general.license", ""))
    source = model.path if model.path is not None else model.name
    return {
        "license": license_text,
        "modelfile": f"# Modelfile generated by quantserve\nFROM {source}\nPARAMETER num_ctx {num_ctx}\n",
        "parameters": f"num_ctx                        {num_ctx}",
        "template": template if isinstance(template, str) else json.dumps(template),
        "details": details(model),
        "model_info": _model_info(model, metadata, num_params),
        "capabilities": ollama_capabilities(model),
        "modified_at": modified_at(model),
    }


# --- which models are local -----------------------------------------------------------------------------

def _first_weights_path(paths: list[str]) -> Path | None:
    for text in paths:
        if text.endswith(".gguf"):
            return Path(text)
    return Path(paths[0]) if paths else None


def _file_size(path: Path | None) -> int:
    if path is None or not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def local_models(infos: list[ModelInfo], catalog: Catalog) -> list[LocalModel]:
    """The loaded models, then the catalog's models with files on disk."""
    from serve.models.hub import list_models  # the Hub client is only imported when a listing is asked for

    rows = {row["name"]: row for row in list_models(catalog) if row["downloaded"]}
    catalog_paths = {name: _first_weights_path(row["paths"]) for name, row in rows.items()}
    models: list[LocalModel] = []
    for info in infos:
        path = info.model_path or catalog_paths.get(info.name)
        size = rows[info.name]["size_bytes"] if info.name in rows else _file_size(path)
        models.append(LocalModel(info.name, path, size, catalog.models.get(info.name), info))
    loaded = {info.name for info in infos}
    for name, row in rows.items():
        if name not in loaded:
            models.append(LocalModel(name, catalog_paths[name], row["size_bytes"], catalog.models.get(name)))
    return models


def find_model(models: list[LocalModel], name: str) -> LocalModel | None:
    for model in models:
        if model.name == name:
            return model
    return None


def available_names(models: list[LocalModel]) -> str:
    return ", ".join(model.ollama_name for model in models) or "none"
