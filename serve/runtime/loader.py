"""From a model name to a running Engine: resolve (catalog), plan (hardware), fetch (Hub), load (backend)."""
from __future__ import annotations

import logging
from dataclasses import replace

from backends.base import load_backend
from serve.models.catalog import Catalog, ModelSpec, resolve_model
from serve.config import ServerConfig
from serve.runtime.engine import Engine
from serve.placement.hardware import Hardware
from serve.placement.plan import Plan, make_plan

log = logging.getLogger("serve.runtime.loader")


class ModelLoader:
    def __init__(self, config: ServerConfig, catalog: Catalog, hw: Hardware):
        self._config = config
        self._catalog = catalog
        self._hw = hw

    def resolve(self, spec_text: str | None) -> ModelSpec:
        """A catalog alias, hf:// spec or local path; None is the embedded default."""
        return resolve_model(spec_text, self._catalog)

    def make_plan(self, spec: ModelSpec) -> Plan:
        return make_plan(self._hw, spec, self._config.plan_choices)

    def load(self, spec: ModelSpec, chosen: Plan) -> Engine:
        """Blocking: download what is missing, load the weights, start the engine thread."""
        from serve.models.hub import ensure_model_file  # the Hub client is only needed once a model is loaded

        settings = chosen.settings
        print(f"model {spec.name}: backend {chosen.backend}, context {settings.context_length} per request, "
              f"{settings.num_parallel} parallel, {settings.num_threads} threads", flush=True)
        for reason in chosen.reasons:
            print(f"  - {reason}", flush=True)
        model_path = ensure_model_file(spec, chosen.backend)
        backend = load_backend(chosen.backend, replace(settings, model_path=model_path))
        return Engine(spec.name, backend, max_queue=self._config.max_queue, model_path=model_path)
