"""Server configuration: frozen dataclasses, resolved once at start-up.

Precedence: defaults < config file < SERVE_* environment variables < command-line flags. Nothing reads
os.environ after start-up.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Mapping

from backends.base import BACKEND_NAMES, KV_TYPES, POOLING_TYPES, SPECULATIVE_MODES
from serve.duration import parse_duration
from serve.errors import ConfigError

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

DEFAULT_CONFIG_FILE = Path("~/.config/quantserve/config.toml").expanduser()
USER_CATALOG_FILE = Path("~/.config/quantserve/models.toml").expanduser()


@dataclass(frozen=True)
class PlanChoices:
    """What the user chose for every model's plan (serve/placement/plan.py); None leaves it to the plan."""

    backend: str | None = None
    context_length: int | None = None  # per sequence
    num_threads: int | None = None
    num_parallel: int | None = None
    max_batch_tokens: int | None = None
    kv_type: str | None = None  # the KV cache's data type, one of backends.base.KV_TYPES
    # vLLM scale-out
    tensor_parallel_size: int | None = None
    pipeline_parallel_size: int | None = None
    ray_address: str | None = None
    gpu_memory_utilization: float | None = None
    speculative: str | None = None  # llama.cpp's speculative decoding: one of SPECULATIVE_MODES
    draft_model: str | None = None  # llama.cpp: the model that drafts (any model spec), for every model served
    draft_max_tokens: int | None = None  # llama.cpp: tokens a request drafts with the draft model in one step

    def __post_init__(self) -> None:
        if self.backend is not None and self.backend not in BACKEND_NAMES:
            raise ConfigError(f"unknown backend {self.backend!r}; choose one of {', '.join(BACKEND_NAMES)}")
        if self.speculative is not None and self.speculative not in SPECULATIVE_MODES:
            raise ConfigError(f"unknown --speculative {self.speculative!r}; choose one of {', '.join(SPECULATIVE_MODES)}")
        for name in ("context_length", "num_threads", "num_parallel", "max_batch_tokens", "draft_max_tokens",
                     "tensor_parallel_size", "pipeline_parallel_size"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be positive, got {value}")
        if self.kv_type is not None and self.kv_type not in KV_TYPES:
            raise ConfigError(f"unknown KV cache type {self.kv_type!r}; choose one of {', '.join(KV_TYPES[1:])} "
                              "(f16, q8_0, q4_0 on llama.cpp; f16, fp8 on vLLM)")
        util = self.gpu_memory_utilization
        if util is not None and not 0 < util <= 1:
            raise ConfigError(f"--gpu-memory-utilization must be in (0, 1], got {util}")

    @property
    def wants_vllm_only(self) -> bool:
        return bool(self.tensor_parallel_size or self.pipeline_parallel_size or self.ray_address)


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    models: tuple[str, ...] = ()  # specs to preload; empty: the embedded default
    plan_choices: PlanChoices = field(default_factory=PlanChoices)  # its keys are top-level settings too
    max_queue: int = 64
    api_key: str | None = None
    max_body_bytes: int = 8 * 1024 * 1024
    catalog_file: Path | None = None
    # every model pools so (llama-server's --pooling): a chat model then embeds too (rank: reranks)
    pooling: str | None = None
    log_level: str = "info"
    # many models
    max_memory: int | None = None  # bytes for all loaded models; None: from the probe
    max_models: int = 0  # 0: no cap beyond memory
    keep_alive: float = 300.0  # seconds an idle model stays loaded; negative: forever
    pinned: tuple[str, ...] = ()  # never evicted
    switch_window: float = 2.0  # a busy model stays at least this long before it is swapped out
    # what a request may load (serve/models/access.py)
    models_dir: Path | None = None  # requests may name files under it; other paths only on the command line
    allow_pull: bool = False  # requests may download (hf:// specs not in the cache, /api/pull)
    # the Responses API's store of finished responses (previous_response_id, GET /v1/responses/{id}); 0: none
    max_stored_responses: int = 1024
    # operations
    metrics_key: str | None = None  # GET /metrics wants this key (instead of the API key) when set
    drain_timeout: float = 30.0  # seconds running requests get to finish after SIGTERM/SIGINT

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ConfigError(f"--port must be between 1 and 65535, got {self.port}")
        if self.max_queue < 0:
            raise ConfigError(f"--max-queue must be >= 0, got {self.max_queue}")
        if self.max_stored_responses < 0:
            raise ConfigError(f"--max-stored-responses must be >= 0, got {self.max_stored_responses}")
        if self.pooling is not None and self.pooling not in POOLING_TYPES:
            raise ConfigError(f"--pooling must be one of {', '.join(POOLING_TYPES)}, got {self.pooling!r}")
        if self.drain_timeout < 0:
            raise ConfigError(f"--drain-timeout must be >= 0, got {self.drain_timeout:g} s")


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)


def parse_bytes(value: object) -> int:
    """`8GiB`, `8G`, `512MB`, `1.5t` or a plain number of bytes (units are powers of 1024)."""
    if isinstance(value, int):
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ConfigError(f"not a memory size: {value!r}; use e.g. 8GiB or 512MiB")
    number, unit = float(match.group(1)), match.group(2).lower()
    return int(number * 1024 ** " kmgt".index(unit or " "))


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


def parse_bool(name: str, value: object) -> bool:
    """true/false in a config file; 1/0, true/false, yes/no, on/off in SERVE_* variables."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE + _FALSE:
        return text in _TRUE
    raise ConfigError(f"{name} must be true or false, got {value!r}")


_PLAN_CHOICE_NAMES = tuple(f.name for f in fields(PlanChoices))
# One flat namespace of setting names (flags, config-file keys, SERVE_* variables), plan choices included.
_FIELD_TYPES = {f.name: f.type for f in (*fields(ServerConfig), *fields(PlanChoices)) if f.name != "plan_choices"}


def _coerce(name: str, value: object) -> object:
    kind = str(_FIELD_TYPES[name])
    if value is None:
        return None
    if name in ("models", "pinned"):
        return tuple(value) if isinstance(value, (list, tuple)) else tuple(str(value).split(","))
    if name == "kv_type":
        return str(value).strip().lower()
    if name in ("catalog_file", "models_dir"):
        return Path(str(value)).expanduser()
    if kind.startswith("bool"):
        return parse_bool(name, value)
    if name == "max_memory":
        return parse_bytes(value)
    if name in ("keep_alive", "switch_window", "drain_timeout"):
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc}") from None
    try:
        if kind.startswith("int"):
            return int(value)
        if kind.startswith("float"):
            return float(value)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    return value


def _from_env(environ: Mapping[str, str]) -> dict:
    values = {}
    for name in _FIELD_TYPES:
        key = f"SERVE_{name.upper()}"
        if key in environ:
            values[name] = _coerce(name, environ[key])
    return values


def _from_file(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    unknown = set(data) - set(_FIELD_TYPES)
    if unknown:
        raise ConfigError(f"{path}: unknown settings {', '.join(sorted(unknown))}")
    return {name: _coerce(name, value) for name, value in data.items()}


def resolve_config(cli_values: Mapping[str, object], environ: Mapping[str, str] | None = None,
                   config_file: Path | None = None) -> ServerConfig:
    """Merge defaults < file < env < CLI (CLI values of None mean "not given")."""
    environ = os.environ if environ is None else environ
    merged: dict = {}
    merged.update(_from_file(config_file or DEFAULT_CONFIG_FILE))
    merged.update(_from_env(environ))
    merged.update({k: _coerce(k, v) for k, v in cli_values.items() if v is not None and v != ()})
    if merged.get("catalog_file") is None and USER_CATALOG_FILE.exists():
        merged["catalog_file"] = USER_CATALOG_FILE
    choices = PlanChoices(**{name: merged.pop(name) for name in _PLAN_CHOICE_NAMES if name in merged})
    return ServerConfig(**merged, plan_choices=choices)
