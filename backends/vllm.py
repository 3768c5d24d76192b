"""vLLM's AsyncLLM (v1) embedded in-process: vLLM schedules, batches, prefills and caches prefixes itself.

AsyncLLM is asyncio-native and its engine core runs in child processes, so the backend gives it an event
loop of its own on a daemon thread. The engine thread talks to that loop only through thread-safe hand-offs:

    engine thread: step(batch) --call_soon_threadsafe--> vllm loop: one task per request, AsyncLLM.generate()
         ^                                                     |
         +-- queue.SimpleQueue of StepOutput, then notify() ---+

A sequence's (whole) prompt chunk starts its generation, a released sequence cancels its task (AsyncLLM
then aborts the request and frees its KV blocks), and every step returns at once with what vLLM produced
since the last one. Each output queued calls the engine's `notify`, which wakes an engine loop that found
nothing new, so the loop neither spins nor polls.

Prompts go in as token ids (the engine tokenized them with `tokenize`), so usage counts are exactly ours.
"""
from __future__ import annotations

import asyncio
import logging
import os
import queue
from pathlib import Path
from typing import Any, Callable

from backends.base import VLLM_KV_TYPES, BackendSettings, Capabilities
from backends.chat_template import CHATML_TEMPLATE, ChatTemplateError
from backends.vllm_loop import EngineLoop
from serve.errors import ConfigError, ModelLoadError
from serve.sequence import (Batch, FinishReason, OutputConstraint, SamplingParams, Sequence, StepOutput,
                            TokenLogprob)

log = logging.getLogger(__name__)

LOAD_TIMEOUT_SECONDS = 3600  # a 70B checkpoint from a slow disk; the CPU test model takes ~35 s
# vLLM's SamplingParams rejects values outside these (OpenAI's own ranges); clamp rather than fail a
# request that another route (Ollama) let through.
MAX_TEMPERATURE = 2.0
MAX_ABS_PENALTY = 2.0

_FINISH_REASONS = {
    "stop": FinishReason.STOP,  # EOS or a stop string
    "length": FinishReason.LENGTH,  # max_tokens or max_model_len
    "repetition": FinishReason.STOP,  # vLLM's repetition detector ended it (off unless asked for)
    "abort": FinishReason.ABORT,
    "error": FinishReason.ABORT,
}


def sampling_kwargs(params: SamplingParams, special_texts: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Keyword arguments for `vllm.SamplingParams` (pure: importable without vllm); `special_texts` are the
    tokenizer's special tokens (a request keeping one of them in its text shows special tokens, as vLLM's
    own tool parsers ask: `skip_special_tokens=False`; the end token never reaches the text either way)."""
    return {
        "max_tokens": params.max_tokens,
        "temperature": min(max(params.temperature, 0.0), MAX_TEMPERATURE),
        "top_p": params.top_p,
        "top_k": params.top_k if params.top_k > 0 else 0,  # vLLM >= 0.10: 0 disables (-1 is legacy)
        "min_p": params.min_p,
        "seed": params.seed,
        "presence_penalty": _clamp_penalty(params.presence_penalty),
        "frequency_penalty": _clamp_penalty(params.frequency_penalty),
        "repetition_penalty": params.repeat_penalty,
        "logit_bias": {int(token): float(bias) for token, bias in params.logit_bias.items()} or None,
        "stop": list(params.stop) or None,
        "ignore_eos": params.ignore_eos,
        # The model's own distribution (vLLM's default raw_logprobs), only for requests that ask.
        "logprobs": params.num_logprobs,
        "prompt_logprobs": params.num_prompt_logprobs,
        # Stop strings never reach the client; special tokens (EOS) are not text, unless the request keeps one.
        "include_stop_str_in_output": False,
        "skip_special_tokens": not special_texts.intersection(params.kept_special_tokens),
    }


def structured_output_kwargs(constraint: OutputConstraint | None) -> dict[str, Any] | None:
    """Keyword arguments for `vllm.sampling_params.StructuredOutputsParams`, or None when unconstrained
    (pure: importable without vllm). vLLM gets the GBNF (xgrammar reads it), not the JSON schema: the
    grammar is the one the API checked, so both backends enforce the same thing. Given the schema itself,
    xgrammar allowed any run of whitespace and integers of any length, and the 135M test model filled
    max_tokens with newlines or digits. A lazy grammar runs as its structural tag (triggered tags)."""
    if constraint is None:
        return None
    if constraint.is_lazy:
        if constraint.structural_tag is None:
            raise ValueError("a grammar started by trigger patterns (lazy) needs its structural tag on the vLLM "
                             "backend")
        return {"structural_tag": constraint.structural_tag}
    return {"grammar": constraint.gbnf}


def _clamp_penalty(value: float) -> float:
    return min(max(value, -MAX_ABS_PENALTY), MAX_ABS_PENALTY)


def token_logprobs(token_ids: list[int], positions: Any, num_top: int,
                   piece: Callable[[int, Any], bytes]) -> list[TokenLogprob | None]:
    """vLLM's logprobs (per position a dict token id -> Logprob(logprob, rank, decoded_token), holding the
    chosen token and the `num_top` best ranks) as ours; a position without any stays None (the first prompt
    token). `piece(token_id, logprob)` gives a token's bytes. Pure: importable without vllm."""
    converted: list[TokenLogprob | None] = []
    for token_id, position in zip(token_ids, positions):
        if not position:
            converted.append(None)
            continue
        best = sorted((entry.rank, other, entry) for other, entry in position.items()
                      if entry.rank is not None and entry.rank <= num_top)
        top = tuple((other, piece(other, entry), entry.logprob) for _, other, entry in best)
        chosen = position[token_id]
        converted.append(TokenLogprob(token_id, piece(token_id, chosen), chosen.logprob, top))
    return converted


def vllm_kv_cache_dtype(kv_type: str) -> str:
    """vLLM's kv_cache_dtype for a `--kv-type` (f16 is vLLM's "auto": the model's own 16-bit type)."""
    if kv_type not in VLLM_KV_TYPES:
        raise ConfigError(f"vLLM has no {kv_type} KV cache; its 8-bit one is fp8 (--kv-type fp8), "
                          f"or use --backend llamacpp for {kv_type}")
    return "auto" if kv_type == "f16" else kv_type


def engine_kwargs(settings: BackendSettings, *, on_cpu: bool) -> dict[str, Any]:
    """Keyword arguments for `vllm.AsyncEngineArgs` (pure: importable without vllm)."""
    kwargs: dict[str, Any] = {
        "model": str(settings.model_path),
        "max_model_len": settings.context_length,
        "max_num_seqs": settings.num_parallel,
        # vLLM needs room for one decode token per running sequence in every step.
        "max_num_batched_tokens": max(settings.max_batch_tokens, settings.num_parallel),
        # On the CPU this is the share of RAM vLLM takes for weights, activations and the KV cache.
        "gpu_memory_utilization": settings.gpu_memory_utilization,
        "enable_prefix_caching": settings.enable_prefix_caching,
        "quantization": settings.quantization,
        "kv_cache_dtype": vllm_kv_cache_dtype(settings.kv_cache_dtype),
        "tensor_parallel_size": settings.tensor_parallel_size,
        "pipeline_parallel_size": settings.pipeline_parallel_size,
        "distributed_executor_backend": settings.distributed_executor_backend,
        "seed": settings.seed,
        "disable_log_stats": True,  # quantserve logs one line per request itself
    }
    if on_cpu:
        # torch.compile roughly doubles start-up on a small CPU box for little gain at these batch sizes.
        kwargs["enforce_eager"] = True
    return kwargs


class VLLMBackend:
    def __init__(self, settings: BackendSettings):
        self._tokenizer = _load_tokenizer(settings.model_path)
        self._bos_id, self._add_bos = _bos(self._tokenizer)
        self._end_token_ids = frozenset(self._tokenizer.all_special_ids)
        self._special_texts = special_token_texts(self._tokenizer)
        self._outputs: queue.SimpleQueue[StepOutput] = queue.SimpleQueue()
        self._notify: Callable[[], None] = lambda: None
        self._tasks: dict[str, asyncio.Task] = {}  # touched only on the vLLM loop thread
        self._loop = EngineLoop("vllm-loop")
        try:
            self._engine = self._loop.run(self._create_engine(settings), LOAD_TIMEOUT_SECONDS)
        except Exception as exc:
            self._loop.stop()
            raise ModelLoadError(f"vLLM could not load {settings.model_path}: {exc}") from exc
        model_config = self._engine.model_config
        # vLLM chunks and batches prompts itself: the step budget holds every running prompt whole (each is
        # shorter than the context), so the scheduler hands each over in one piece and only admits.
        whole_prompts = settings.num_parallel * model_config.max_model_len
        self.capabilities = Capabilities(
            name="vllm", context_length=model_config.max_model_len, num_parallel=settings.num_parallel,
            max_batch_tokens=whole_prompts, max_prefill_tokens_while_decoding=whole_prompts,
            vocab_size=model_config.get_vocab_size(), can_start_tagged_grammar=True)

    # -- loading -------------------------------------------------------------------------------------

    async def _create_engine(self, settings: BackendSettings):
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        ray_address = settings.ray_address
        if ray_address:
            # vLLM's engine core (a child process) calls ray.init() without an address: RAY_ADDRESS is
            # how it finds the cluster started with `ray start --head`.
            os.environ["RAY_ADDRESS"] = ray_address
        args = AsyncEngineArgs(**engine_kwargs(settings, on_cpu=current_platform.is_cpu()))
        # Created on this loop so AsyncLLM's output handler task lives here.
        return AsyncLLM.from_engine_args(args)

    # -- text ----------------------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        # Special tokens written by the chat template (<|im_start|>) are parsed as such.
        ids = self._tokenizer.encode(text, add_special_tokens=False)
        if self._add_bos and (not ids or ids[0] != self._bos_id):
            ids.insert(0, self._bos_id)
        return ids

    @property
    def chat_template(self) -> str:
        return self._tokenizer.chat_template or CHATML_TEMPLATE

    def render_chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
                    **template_kwargs: Any) -> str:
        import jinja2

        template = None if self._tokenizer.chat_template else CHATML_TEMPLATE
        try:
            return self._tokenizer.apply_chat_template(messages, tools=tools, chat_template=template,
                                                       tokenize=False, add_generation_prompt=True, **template_kwargs)
        except jinja2.TemplateError as exc:  # raise_exception in the template: e.g. roles out of order
            raise ChatTemplateError(str(exc)) from None

    # -- the engine thread ---------------------------------------------------------------------------

    def set_notify(self, notify: Callable[[], None]) -> None:
        self._notify = notify

    def admit(self, sequence: Sequence) -> int:
        return 0  # vLLM reuses cached prefixes itself; the scheduler hands over the whole prompt

    def step(self, batch: Batch) -> list[StepOutput]:
        for sequence in batch.released:
            self._loop.call_soon(self._cancel, sequence.request_id)
        for chunk in batch.prefill:
            if chunk.start == 0:  # the first and only chunk: vLLM states room for whole prompts
                self._start(chunk.sequence)
        # batch.decode needs nothing: vLLM keeps generating for its running requests.
        return self._collect()

    def _start(self, sequence: Sequence) -> None:
        from vllm import SamplingParams as VLLMSamplingParams
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        request = sequence.request
        try:
            structured = structured_output_kwargs(request.params.constraint)
            params = VLLMSamplingParams(**sampling_kwargs(request.params, self._special_texts),
                                        output_kind=RequestOutputKind.DELTA,
                                        structured_outputs=StructuredOutputsParams(**structured) if structured else None)
        except Exception as exc:  # VLLMValidationError (not a ValueError in 0.32)
            # Fail this request only: an exception out of step() would abort every running request.
            log.warning("vLLM rejected the sampling parameters of %s: %s", request.request_id, exc)
            self._emit(StepOutput(request.request_id, finish_reason=FinishReason.ABORT,
                                  error=f"vLLM rejected the sampling parameters: {exc}"))
            return
        self._loop.call_soon(self._spawn, request.request_id, list(request.prompt_token_ids), params)

    def _emit(self, output: StepOutput) -> None:
        """Queue an output for the next step and wake the engine loop (any thread)."""
        self._outputs.put(output)
        self._notify()

    def _collect(self) -> list[StepOutput]:
        """Everything produced since the last step, one output per request (deltas joined in order)."""
        merged: dict[str, StepOutput] = {}
        while True:
            try:
                output = self._outputs.get_nowait()
            except queue.Empty:
                return list(merged.values())
            known = merged.get(output.request_id)
            if known is None:
                merged[output.request_id] = output
            else:
                known.text += output.text
                known.num_new_tokens += output.num_new_tokens
                known.finish_reason = output.finish_reason or known.finish_reason
                if output.logprobs is not None:
                    known.logprobs = (known.logprobs or []) + output.logprobs
                known.prompt_logprobs = known.prompt_logprobs or output.prompt_logprobs
                if known.num_cached_tokens is None:
                    known.num_cached_tokens = output.num_cached_tokens

    # -- the vLLM loop thread ------------------------------------------------------------------------

    def _spawn(self, request_id: str, token_ids: list[int], params) -> None:
        self._tasks[request_id] = self._loop.loop.create_task(self._generate(request_id, token_ids, params))

    def _cancel(self, request_id: str) -> None:
        task = self._tasks.pop(request_id, None)
        if task is not None:
            task.cancel()  # AsyncLLM.generate aborts the request when cancelled

    async def _generate(self, request_id: str, token_ids: list[int], params) -> None:
        from vllm.inputs import TokensPrompt

        try:
            async for result in self._engine.generate(TokensPrompt(prompt_token_ids=token_ids), params,
                                                      request_id):
                completion = result.outputs[0]
                finish, stop_string = None, None
                if result.finished:
                    finish = _FINISH_REASONS.get(str(completion.finish_reason), FinishReason.STOP)
                    # vLLM's stop_reason is the matched stop string, or the id of a stop token
                    stop_string = completion.stop_reason if isinstance(completion.stop_reason, str) else None
                output = StepOutput(request_id, text=completion.text, num_new_tokens=len(completion.token_ids),
                                    finish_reason=finish, num_cached_tokens=result.num_cached_tokens,
                                    stop_string=stop_string)
                self._add_logprobs(output, result, params)
                self._emit(output)
        except asyncio.CancelledError:
            raise  # released by the engine thread: nobody is waiting for more
        except Exception:
            log.exception("vLLM failed request %s", request_id)
            self._emit(StepOutput(request_id, finish_reason=FinishReason.ABORT,
                                  error="vLLM failed this request; the server log has the details"))
        finally:
            self._tasks.pop(request_id, None)

    def _add_logprobs(self, output: StepOutput, result, params) -> None:
        """The delta's logprobs (without the end-of-sequence token's: it is not text, as on llama.cpp), and the
        prompt's on the first output."""
        completion = result.outputs[0]
        if params.logprobs is not None and completion.logprobs is not None:
            token_ids = list(completion.token_ids)
            if (output.finish_reason == FinishReason.STOP and completion.stop_reason is None and token_ids
                    and token_ids[-1] in self._end_token_ids):
                token_ids = token_ids[:-1]
            output.logprobs = token_logprobs(token_ids, completion.logprobs, params.logprobs, self._piece)
        if params.prompt_logprobs is not None and result.prompt_logprobs is not None:
            prompt_ids = list(result.prompt_token_ids or [])
            output.prompt_logprobs = token_logprobs(prompt_ids, result.prompt_logprobs, params.prompt_logprobs,
                                                    self._piece)

    def _piece(self, token_id: int, logprob) -> bytes:
        text = logprob.decoded_token
        return (text if text is not None else self._tokenizer.decode([token_id])).encode()

    async def _shutdown(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        engine, self._engine = self._engine, None
        engine.shutdown()
        # AsyncLLM.__del__ shuts down again; let it happen now, not at interpreter exit when the
        # modules it calls are already torn down.
        del engine

    def close(self) -> None:
        self._loop.close(self._shutdown, "vLLM")


def _load_tokenizer(model_path: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(model_path))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"no Hugging Face tokenizer in {model_path}: {exc}") from exc


def special_token_texts(tokenizer) -> frozenset[str]:
    """The texts of the tokenizer's special tokens (which vLLM leaves out of the text unless asked)."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return frozenset([*tokenizer.all_special_tokens, *(token.content for token in added.values() if token.special)])


def _bos(tokenizer) -> tuple[int | None, bool]:
    """The BOS id, and whether the model wants one in front of every prompt (as its tokenizer adds it)."""
    bos_id = tokenizer.bos_token_id
    if bos_id is None:
        return None, False
    with_special = tokenizer.encode("a", add_special_tokens=True)
    return bos_id, bool(with_special) and with_special[0] == bos_id


def create_backend(settings: BackendSettings) -> VLLMBackend:
    return VLLMBackend(settings)

