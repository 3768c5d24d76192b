"""The loaded models: name -> Engine.

Routes ask the pool for an engine by the model name in the request; the pool owns the engines' lives.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from serve.engine import Engine
from serve.errors import ModelNotFoundError


@dataclass(frozen=True)
class ModelInfo:
    name: str
    backend: str
    context_length: int  # per sequence
    num_parallel: int
    created: int  # unix time the model was loaded


class ModelPool:
    def __init__(self) -> None:
        self._engines: dict[str, Engine] = {}
        self._loaded_at: dict[str, int] = {}

    def add(self, engine: Engine) -> None:
        self._engines[engine.model_name] = engine
        self._loaded_at[engine.model_name] = int(time.time())

    def model_infos(self) -> list[ModelInfo]:
        return [ModelInfo(name=name, backend=e.capabilities.name, context_length=e.capabilities.context_length,
                          num_parallel=e.capabilities.max_sequences, created=self._loaded_at[name])
                for name, e in self._engines.items()]

    async def get(self, name: str | None) -> Engine:
        """The engine serving `name`; raises ModelNotFoundError naming the available models."""
        engine = self._engines.get(name) if name else None
        if engine is None:
            available = ", ".join(sorted(self._engines)) or "none"
            asked = f"model {name!r} is not served here" if name else "no model given"
            raise ModelNotFoundError(f"{asked}; available models: {available}", param="model")
        return engine

    def stats(self) -> dict:
        return {name: engine.stats() for name, engine in self._engines.items()}

    def shutdown(self) -> None:
        for engine in self._engines.values():
            engine.shutdown()
        self._engines.clear()
