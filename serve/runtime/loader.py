"""From a model name to a running Engine: resolve (catalog, under the access policy), plan (hardware),
fetch (Hub), load (backend)."""
from __future__ import annotations

import logging
from dataclasses import replace

from backends.base import PoolingOnlyBackend, load_backend, load_pooler
from serve.models.access import ModelAccess
from serve.models.catalog import Catalog, ModelSpec
from serve.models.tasks import POOLING_TASKS, ModelTasks, model_tasks, pooling_task
from serve.config import ServerConfig
from serve.runtime.engine import Engine
from serve.placement.hardware import Hardware
from serve.placement.plan import Plan, make_plan

log = logging.getLogger("serve.runtime.loader")


class ModelLoader:
    def __init__(self, config: ServerConfig, catalog: Catalog, hw: Hardware):
        self._config = config
        self._access = ModelAccess.from_config(config, catalog)
        self._hw = hw
        self._served_names: dict[str, None] = {}  # what this loader loaded: requests may ask for it again

    def resolve(self, spec_text: str | None) -> ModelSpec:
        """What a request names (or the spec an evicted model was loaded from), if a request may load it:
        a catalog alias, a command-line spec, a cached hf:// spec, a path under --models-dir, any hf:// spec
        with --allow-pull; None is the embedded default. Else one 404 that reveals nothing of the disk."""
        return self._access.resolve(spec_text, loaded=list(self._served_names))

    def make_plan(self, spec: ModelSpec) -> Plan:
        """The plan for `spec`; a draft model it names must pass the access policy too (resolve_draft)."""
        return make_plan(self._hw, spec, self._config.plan_choices, self.resolve_draft)

    def resolve_draft(self, spec_text: str) -> ModelSpec:
        """A draft model's spec, under the same rules as a model a request names (--draft-model is the
        operator's, as --model is); a refusal names the draft, not only the model asked for."""
        return self._access.resolve_draft(spec_text)

    def load(self, spec: ModelSpec, chosen: Plan) -> Engine:
        """Blocking: download what is missing, load the weights, start the engine thread."""
        from serve.models.hub import ensure_model_file  # the Hub client is only needed once a model is loaded

        settings = chosen.settings
        print(f"model {spec.name}: backend {chosen.backend}, context {settings.context_length} per request, "
              f"{settings.num_parallel} parallel, {settings.num_threads} threads", flush=True)
        for reason in chosen.reasons:
            print(f"  - {reason}", flush=True)
        model_path = ensure_model_file(spec, chosen.backend)
        settings = replace(settings, model_path=model_path)
        if chosen.draft_model:  # --draft-model or a catalog entry's draft, under the access rules (resolve_draft)
            settings = replace(settings, draft_model_path=ensure_model_file(
                self.resolve_draft(chosen.draft_model), chosen.backend))
        tasks = model_tasks(spec, model_path, self._config.pooling)
        backend, pooler = _load_sides(chosen.backend, settings, tasks)
        supported = tasks.tasks
        if pooler is not None:  # what the pooler really computes (the GGUF's own pooling, when none was asked)
            supported = (supported - POOLING_TASKS) | {pooling_task(pooler.pooling)}
        self._served_names[spec.name] = None
        return Engine(spec.name, backend, max_queue=self._config.max_queue, model_path=model_path,
                      tool_format=spec.tool_format, reasoning_format=spec.reasoning_format,
                      supported_tasks=supported, pooler=pooler,
                      matryoshka=spec.matryoshka)


def _load_sides(backend_name: str, settings, tasks: ModelTasks):
    """The generation backend (a PoolingOnlyBackend for a model that only embeds or reranks) and the
    pooling side (None for a chat-only model). On vLLM a chat model that also embeds runs two engines."""
    pooler = load_pooler(backend_name, settings, tasks.pooling) if tasks.can_pool else None
    if not tasks.can_generate:
        return PoolingOnlyBackend(backend_name, pooler), pooler
    try:
        return load_backend(backend_name, settings), pooler
    except BaseException:
        if pooler is not None:
            pooler.close()
        raise
