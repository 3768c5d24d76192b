"""vLLM's pooling side: embeddings and rerank scores from vLLM's pooling runner (`runner="pooling"`).

A vLLM engine runs one kind of model runner, generation or pooling, never both: an embedding model or a
reranker served on vLLM is one pooling AsyncLLM (and no generation engine), while a chat model that also
embeds (`--pooling`) runs a second AsyncLLM next to its generation one, with its own share of memory
(`gpu_memory_utilization` each) and its own start-up time. A generative checkpoint is adapted with vLLM's
`convert="embed"` and the pooling asked for; an embedding or sequence-classification checkpoint pools as it
declares (a sequence classifier scores query-document pairs: rank).

Like backends/vllm.py, the AsyncLLM lives on an event loop of its own thread; `pool` hands it one `encode`
per input (vLLM batches them itself) and returns a concurrent future, so any thread may call it.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import uuid
from dataclasses import replace

from backends.base import BackendSettings
from backends.vllm import LOAD_TIMEOUT_SECONDS, _load_tokenizer, engine_kwargs
from backends.vllm_loop import EngineLoop
from serve.errors import ModelLoadError


_VLLM_POOLING = {"mean": "MEAN", "cls": "CLS", "last": "LAST"}


def pooling_engine_kwargs(settings: BackendSettings, pooling: str | None, *, on_cpu: bool) -> dict:
    """Keyword arguments for `vllm.AsyncEngineArgs` of a pooling engine (pure: importable without vllm)."""
    # A pooled input is computed whole in one step: the step holds the longest input.
    settings = replace(settings, max_batch_tokens=max(settings.max_batch_tokens, settings.context_length),
                       enable_prefix_caching=False)
    kwargs = {**engine_kwargs(settings, on_cpu=on_cpu), "runner": "pooling"}
    if pooling in _VLLM_POOLING:
        kwargs["convert"] = "embed"  # adapts a generative checkpoint; an embedding model is already one
        kwargs["pooler_config"] = {"pooling_type": _VLLM_POOLING[pooling]}
    return kwargs


class VLLMPooler:
    def __init__(self, settings: BackendSettings, pooling: str | None):
        self._tokenizer = _load_tokenizer(settings.model_path)
        self._loop = EngineLoop("vllm-pooling-loop")
        try:
            self._engine, tasks = self._loop.run(self._create_engine(settings, pooling), LOAD_TIMEOUT_SECONDS)
        except Exception as exc:
            self._loop.stop()
            raise ModelLoadError(f"vLLM could not load {settings.model_path} for pooling: {exc}") from exc
        model_config = self._engine.model_config
        self.pooling = pooling or self._declared_pooling(tasks, model_config)
        self._task = "classify" if self.pooling == "rank" else "embed"
        self.context_length = model_config.max_model_len
        self.vocab_size = model_config.get_vocab_size()
        self.num_dimensions = 1 if self.pooling == "rank" else model_config.get_hidden_size()

    async def _create_engine(self, settings: BackendSettings, pooling: str | None):
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        engine = AsyncLLM.from_engine_args(AsyncEngineArgs(
            **pooling_engine_kwargs(settings, pooling, on_cpu=current_platform.is_cpu())))
        return engine, await engine.get_supported_tasks()

    @staticmethod
    def _declared_pooling(tasks, model_config) -> str:
        if "embed" not in tasks:
            return "rank"
        pooler_config = model_config.pooler_config
        kind = getattr(pooler_config, "seq_pooling_type", None) or "MEAN"
        return {value: name for name, value in _VLLM_POOLING.items()}.get(str(kind), "mean")

    # -- tokens --------------------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=True)

    def pair_tokens(self, query: str, document: str) -> list[int]:
        """The tokenizer's own text-pair encoding (<s> query </s></s> document </s> for XLM-R), as vLLM's
        cross-encoder scoring builds it."""
        return self._tokenizer(query, document)["input_ids"]

    # -- pooling -------------------------------------------------------------------------------------

    def pool(self, inputs: list[list[int]]) -> concurrent.futures.Future:
        """Cancelling the future cancels the encodes, which makes vLLM abort the requests."""
        return self._loop.submit(self._pool_all(inputs))

    async def _pool_all(self, inputs: list[list[int]]) -> list[list[float]]:
        return list(await asyncio.gather(*(self._pool_one(tokens) for tokens in inputs)))

    async def _pool_one(self, tokens: list[int]) -> list[float]:
        from vllm import PoolingParams
        from vllm.inputs import TokensPrompt

        # Embeddings raw (the API normalises them); a classifier's score through its activation (sigmoid).
        params = PoolingParams(task=self._task, use_activation=None if self._task == "classify" else False)
        result = None
        async for result in self._engine.encode(TokensPrompt(prompt_token_ids=tokens), params,
                                                f"pool-{uuid.uuid4().hex}"):
            pass
        data = result.outputs.data
        return [float(value) for value in data.flatten().tolist()][:self.num_dimensions]

    async def _shutdown(self) -> None:
        engine, self._engine = self._engine, None
        engine.shutdown()
        del engine

    def close(self) -> None:
        self._loop.close(self._shutdown, "vLLM's pooling engine")


def create_pooler(settings: BackendSettings, pooling: str | None) -> VLLMPooler:
    return VLLMPooler(settings, pooling)
