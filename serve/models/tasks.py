"""What a model can be asked once it is loaded (generate text, embed, rerank) and how it pools.

A catalog entry says it (`capabilities`, `pooling`). A model without one (a local GGUF, an hf:// spec) says
it in its files: a GGUF that declares a pooling type is an embedding model (rank: a reranker, the GGUF's
classifier head), a Hugging Face checkpoint with a sentence-transformers pooling module an embedding model,
one whose architecture is a sequence classifier a reranker. `--pooling` makes every model pool that way, as
llama-server's flag does: a chat model then embeds too.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from serve.models.catalog import DEFAULT_CAPABILITIES, ModelSpec

POOLING_TASKS = frozenset({"embeddings", "rerank"})
_GGUF_POOLING = {1: "mean", 2: "cls", 3: "last", 4: "rank"}  # llama.cpp's enum llama_pooling_type
_SENTENCE_TRANSFORMERS_POOLING = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls",
                                  "pooling_mode_lasttoken": "last"}


@dataclass(frozen=True)
class ModelTasks:
    tasks: frozenset[str]  # the catalog's capabilities: chat, tools, reasoning, embeddings, rerank, vision
    pooling: str | None = None  # the pooling to use; None: the one the model's files declare

    @property
    def can_generate(self) -> bool:
        return "chat" in self.tasks

    @property
    def can_pool(self) -> bool:
        return bool(self.tasks & POOLING_TASKS)


def pooling_task(pooling: str) -> str:
    return "rerank" if pooling == "rank" else "embeddings"


def model_tasks(spec: ModelSpec, model_path: Path | None, forced_pooling: str | None = None) -> ModelTasks:
    """What the model at `model_path` (the file or directory `spec` was fetched to) can do; `forced_pooling`
    is the server's --pooling."""
    tasks, pooling = spec.capabilities, spec.pooling
    if tasks == DEFAULT_CAPABILITIES and pooling is None and model_path is not None:
        declared = declared_pooling(model_path)  # an entry without capabilities: the files say
        if declared is not None:
            tasks = frozenset({pooling_task(declared)})
    if forced_pooling is not None:
        tasks, pooling = (tasks - POOLING_TASKS) | {pooling_task(forced_pooling)}, forced_pooling
    return ModelTasks(frozenset(tasks), pooling)


def declared_pooling(model_path: Path) -> str | None:
    """The pooling a model's own files declare (mean, cls, last, rank), or None for a generative model."""
    if model_path.is_dir():
        return _checkpoint_pooling(model_path)
    from serve.models.gguf import read_gguf_info

    metadata = read_gguf_info(model_path).metadata
    arch = metadata.get("general.architecture", "")
    return _GGUF_POOLING.get(int(metadata.get(f"{arch}.pooling_type", 0)))


def _checkpoint_pooling(directory: Path) -> str | None:
    """A Hugging Face checkpoint: a sequence classifier is a reranker; a sentence-transformers model says its
    pooling in its Pooling module's config."""
    config = _read_json(directory / "config.json") or {}
    if any(str(name).endswith("ForSequenceClassification") for name in config.get("architectures", [])):
        return "rank"
    for module in _read_json(directory / "modules.json") or []:
        if isinstance(module, dict) and str(module.get("type", "")).endswith("Pooling"):
            pooling_config = _read_json(directory / str(module.get("path", "")) / "config.json") or {}
            for key, name in _SENTENCE_TRANSFORMERS_POOLING.items():
                if pooling_config.get(key):
                    return name
    return None


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
