"""llama.cpp through llama-cpp-python's low-level bindings: many sequences decoded in one context.

One llama_context holds `num_parallel` sequences, each in its own KV stream of `context_length` cells, so
every sequence really gets `context_length` tokens (no silent split) and attends only to its own cells.
Each step puts one decode token per running sequence plus the scheduler's prompt chunks into a single
llama_batch and calls llama_decode once; each sequence then samples with its own native sampler chain.
ctypes releases the GIL inside llama_decode, so the HTTP event loop keeps running while the model computes.

A slot (llama.cpp sequence id) keeps its KV cache after its request ends, so a later request sharing a
prompt prefix (same system prompt, next chat turn, the same short prompt again) starts from the cached
tokens; backends/slot_choice.py chooses the slot and where the prefix comes from.
"""
from __future__ import annotations

import ctypes
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import llama_cpp
import llama_cpp._logger
import llama_cpp.llama_cpp as ll
import numpy as np

from backends.base import BackendSettings, Capabilities
from backends.chat_template import CHATML_TEMPLATE, ChatTemplate
from backends.draft_model import DraftModel
from backends.draft_policy import token_cost
from backends.llamacpp_context import ContextShape, create_context, free_native, load_model, trained_context
from backends.llamacpp_grammar import GrammarRejectedError, GrammarSampling
from backends.llamacpp_sampler import GreedyPick, draws_from_the_whole_distribution, make_sampler, numpy_pick
from backends.llamacpp_tokens import special_token_pieces
from backends.llamacpp_vocab import Vocabulary
from backends.logprobs import log_softmax, token_logprob
from backends.slot_choice import SlotState, choose_slot
from backends.speculative import Speculation, accepted_run, share_budget
from backends.text_output import TextOutput
from serve.sequence import Batch, FinishReason, PrefillChunk, Sequence, StepOutput

log = logging.getLogger(__name__)

# While sequences are decoding, a step carries at most this many prompt tokens, so running streams see a
# bounded inter-token latency when a long prompt arrives (about 0.6 s for a 135M model on 2 cores).
# With nothing decoding, the whole step budget goes to prompts: a burst of requests starts together.
PREFILL_TOKENS_WHILE_DECODING = 256
# Speculative decoding: draft tokens one step verifies at most, over all sequences. A verified token costs
# almost as much as a decoded one on a CPU (the batch's matrix products grow with it), so drafts stay a
# minority of a busy step.
MAX_DRAFT_TOKENS_PER_STEP = 32


@dataclass
class _Slot:
    seq_id: int
    cached_tokens: list[int] = field(default_factory=list)  # tokens whose KV is in this seq id
    sequence: Sequence | None = None
    sampler: Any = None
    pick: GreedyPick | None = None  # the sampler's choice made with numpy, where that is the same draw
    grammar: Any = None  # llama.cpp's grammar sampler, only for a constrained request (structured output)
    error: str | None = None  # why the request cannot run (its grammar was refused); sent at its first step
    text: TextOutput | None = None
    pending_token: int | None = None  # sampled, not yet decoded
    num_generated: int = 0
    prompt_logprobs: list | None = None  # of the prompt tokens scored so far (echo), until the first output
    speculation: Speculation | None = None  # drafts and their record, for a request that speculates
    kept_pieces: dict[int, bytes] = field(default_factory=dict)  # special tokens shown as text (a call marker)
    last_used: int = 0


class LlamaCppBackend:
    def __init__(self, settings: BackendSettings):
        llama_cpp._logger.set_verbose(log.isEnabledFor(logging.DEBUG))
        ll.llama_backend_init()
        self._model = load_model(settings.model_path, settings.n_gpu_layers)
        vocabulary = Vocabulary(self._model)
        self._vocab, self._num_vocab, self._eog_tokens = vocabulary.handle, vocabulary.num_tokens, vocabulary.eog_tokens
        self._piece, self._vocabulary = vocabulary.piece, vocabulary
        self._context_length = trained_context(self._model, settings.context_length)
        if self._context_length < settings.context_length:
            log.warning("context %d exceeds the model's training context; using %d",
                        settings.context_length, self._context_length)
        self._batch_capacity = settings.max_batch_tokens + settings.num_parallel
        shape = ContextShape(self._context_length, settings.num_parallel, self._batch_capacity,
                             settings.kv_cache_dtype, settings.num_threads)
        self._ctx = create_context(self._model, shape)
        self._memory = ll.llama_get_memory(self._ctx)
        self._batch = ll.llama_batch_init(self._batch_capacity, 0, 1)
        self._slots = [_Slot(seq_id=i) for i in range(settings.num_parallel)]
        self._slot_of: dict[str, _Slot] = {}
        self._num_admitted = 0
        self._prompts_to_score: list[tuple[_Slot, PrefillChunk, int]] = []  # (slot, chunk, first batch index)
        self._grammars = GrammarSampling(self._vocab, self._num_vocab)
        self._chat_template = self._load_chat_template(vocabulary)
        # Dropping a rejected draft cuts a sequence's cache partially, which recurrent state cannot undo.
        self._speculative = settings.speculative in ("ngram", "draft") and not (
            ll.llama_model_is_recurrent(self._model) or ll.llama_model_is_hybrid(self._model))
        self._draft_model = None
        if self._speculative and settings.speculative == "draft":
            try:
                self._draft_model = DraftModel.for_target(settings, self._model, shape)
            except BaseException:
                self.close()
                raise
        self.capabilities = Capabilities(
            name="llamacpp", context_length=self._context_length, num_parallel=settings.num_parallel,
            # Room for every sequence's decode token and at least one prompt token (within _batch_capacity).
            max_batch_tokens=max(settings.max_batch_tokens, settings.num_parallel + 1),
            max_prefill_tokens_while_decoding=PREFILL_TOKENS_WHILE_DECODING, vocab_size=self._num_vocab,
            can_start_grammar_on_trigger=True,
            max_draft_tokens_per_step=MAX_DRAFT_TOKENS_PER_STEP if self._speculative else 0)

    # -- loading ---------------------------------------------------------------------------------

    def _load_chat_template(self, vocabulary: Vocabulary) -> ChatTemplate:
        source = ll.llama_model_chat_template(self._model, None)
        if not source:
            log.warning("the model has no chat template; using ChatML")
        return ChatTemplate(source.decode("utf-8") if source else CHATML_TEMPLATE, vocabulary.bos_text,
                            vocabulary.eos_text)

    # -- text ------------------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        return self._vocabulary.tokenize(text)

    @property
    def chat_template(self) -> str:
        return self._chat_template.source

    def render_chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
                    **template_kwargs: Any) -> str:
        return self._chat_template.render(messages, tools=tools, **template_kwargs)

    # -- sequences -------------------------------------------------------------------------------

    def set_notify(self, notify: Callable[[], None]) -> None:
        pass  # every output comes out of step() itself: nothing to announce between steps

    def admit(self, sequence: Sequence) -> int:
        prompt = sequence.request.prompt_token_ids
        scores_prompt = sequence.request.params.num_prompt_logprobs is not None
        # Echo needs every prompt position's logits, and a reused prefix has none: reuse nothing.
        slot, num_cached = self._take_slot(prompt if not scores_prompt else [])
        self._num_admitted += 1
        slot.sequence, slot.last_used = sequence, self._num_admitted
        slot.sampler = make_sampler(sequence.request.params, self._num_vocab, self._eog_tokens)
        slot.grammar, slot.error = self._grammars.create(sequence.request.params.constraint,
                                                         draws_from_the_whole_distribution(sequence.request.params))
        slot.pick = numpy_pick(sequence.request.params, self._num_vocab, self._eog_tokens)
        slot.text = TextOutput(sequence.request.params.stop)
        slot.kept_pieces = special_token_pieces(self._vocab, sequence.request.params.kept_special_tokens)
        slot.pending_token, slot.num_generated = None, 0
        slot.prompt_logprobs = [None] if scores_prompt else None  # the first prompt token has no logprob
        slot.speculation = ((self._draft_model.new_sequence() if self._draft_model else Speculation(prompt))
                            if self._speculative and sequence.request.params.speculative else None)
        self._slot_of[sequence.request_id] = slot
        return num_cached

    def _take_slot(self, prompt: list[int]) -> tuple[_Slot, int]:
        """The slot chosen for `prompt` (backends/slot_choice.py), its KV cut to the reused prefix (copied
        from another slot first when that one caches a longer prefix); returns it and the prefix length."""
        states = [SlotState(s.seq_id, s.cached_tokens, s.sequence is not None, s.last_used) for s in self._slots]
        choice = choose_slot(states, prompt)
        slot, num_cached = self._slots[choice.seq_id], choice.num_reused
        if choice.copy_from is not None and not self._copy_kv(self._slots[choice.copy_from], slot):
            num_cached = 0
        if not ll.llama_memory_seq_rm(self._memory, slot.seq_id, num_cached, -1):
            ll.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)  # cannot cut partially: start over
            num_cached = 0
        slot.cached_tokens = slot.cached_tokens[:num_cached]
        return slot, num_cached

    def _copy_kv(self, source: _Slot, target: _Slot) -> bool:
        """Copy every KV cell of `source` into `target`'s stream (its own cells are dropped). llama.cpp's
        llama_memory_seq_cp copies between streams only whole buffers (context_length cells); the
        sequence state API copies just the cells the sequence holds."""
        size = ll.llama_state_seq_get_size(self._ctx, source.seq_id)
        buffer = (ctypes.c_uint8 * size)()
        written = ll.llama_state_seq_get_data(self._ctx, buffer, size, source.seq_id)
        if written == 0 or ll.llama_state_seq_set_data(self._ctx, buffer, written, target.seq_id) == 0:
            log.warning("could not copy the KV cache of sequence %d to %d", source.seq_id, target.seq_id)
            ll.llama_memory_seq_rm(self._memory, target.seq_id, -1, -1)
            target.cached_tokens = []
            return False
        target.cached_tokens = list(source.cached_tokens)
        return True

    def _release(self, slot: _Slot) -> None:
        if slot.sampler is not None:
            ll.llama_sampler_free(slot.sampler)
        if slot.grammar is not None:
            self._grammars.free(slot.grammar)
        if slot.sequence is not None:
            self._slot_of.pop(slot.sequence.request_id, None)
        # The KV cache (cached_tokens) stays for prefix reuse by a later request.
        slot.sequence, slot.sampler, slot.text, slot.pending_token = None, None, None, None
        slot.grammar, slot.error, slot.speculation, slot.pick = None, None, None, None

    # -- the step ----------------------------------------------------------------------------------

    def step(self, batch: Batch) -> list[StepOutput]:
        for sequence in batch.released:
            slot = self._slot_of.get(sequence.request_id)
            if slot is not None:
                self._release(slot)
        to_sample = self._fill_batch(batch)
        if self._batch.n_tokens == 0:
            return []
        started = time.perf_counter()
        status = ll.llama_decode(self._ctx, self._batch)
        if status != 0:
            raise RuntimeError(f"llama_decode failed with status {status}")
        if self._draft_model is not None and not batch.prefill:  # what a draft saves: a decode step's time
            self._draft_model.cost.observe_target(time.perf_counter() - started, len(batch.decode),
                                                  sum(len(draft) for _, _, draft in to_sample))
        self._score_prompts()
        return [self._sample(slot, index, drafts) for slot, index, drafts in to_sample]

    def _fill_batch(self, batch: Batch) -> list[tuple[_Slot, int, list[int]]]:
        """Write decode tokens (each followed by its sequence's draft, if any) and prompt chunks into the
        llama_batch; return (slot, logits index, draft) for the positions to sample.

        Sequences go in ascending id order. With one KV stream per sequence, llama.cpp puts only
        consecutive sequence ids into one micro-batch: any other order (or a gap) splits the step into
        several graph computations and defeats graph reuse. Measured here: 8-sequence decode steps took
        40 ms instead of 30 ms when sequence 0 came last."""
        self._batch.n_tokens = 0
        work = [(self._slot_of[s.request_id], None) for s in batch.decode]
        work += [(self._slot_of[chunk.sequence.request_id], chunk) for chunk in batch.prefill]
        drafts = self._drafts([slot for slot, chunk in work if chunk is None], batch.num_draft_tokens)
        to_sample = []
        for slot, chunk in sorted(work, key=lambda item: item[0].seq_id):
            if chunk is None:
                draft = drafts.get(slot.seq_id, [])
                to_sample.append((slot, self._add_token(slot, slot.pending_token, wants_logits=True), draft))
                for token in draft:  # verified in this same decode: logits at every drafted position
                    self._add_token(slot, token, wants_logits=True)
            elif chunk.is_last:
                to_sample.append((slot, self._add_prompt_chunk(slot, chunk), []))
            else:
                self._add_prompt_chunk(slot, chunk)
        return to_sample

    def _drafts(self, decoding: list[_Slot], budget: int) -> dict[int, list[int]]:
        """Each speculating sequence's draft (seq id -> tokens after its pending one), within the step's
        draft budget, the room its request and context have left and (prompt lookup) what pays at this
        load."""
        proposals, wanted, cost = {}, {}, token_cost(len(decoding))
        for slot in decoding:
            if slot.speculation is not None:
                room = min(slot.sequence.request.params.max_tokens - slot.num_generated,
                           self._context_length - len(slot.cached_tokens) - 1) - 1
                if self._draft_model is not None:  # drafted together below (backends/draft_model.py)
                    wanted[slot.seq_id] = (slot.cached_tokens + [slot.pending_token], slot.speculation.wanted(
                        room, self._draft_model.cost.token_cost(len(decoding))))
                else:
                    proposals[slot.seq_id] = slot.speculation.propose(room, cost)
        if self._draft_model is not None:
            return self._draft_model.drafts(wanted, budget, len(decoding))
        for slot in decoding:  # a draft token the grammar does not allow is never accepted: not verified
            if slot.grammar is not None and proposals.get(slot.seq_id):
                proposals[slot.seq_id] = self._grammars.valid_prefix(slot.grammar, proposals[slot.seq_id])
        grants = share_budget({seq_id: len(tokens) for seq_id, tokens in proposals.items()}, budget)
        return {seq_id: tokens[:grants[seq_id]] for seq_id, tokens in proposals.items() if grants[seq_id]}

    def _add_prompt_chunk(self, slot: _Slot, chunk: PrefillChunk) -> int:
        """Add the chunk's prompt tokens; logits only for the prompt's last one. Returns its index."""
        if chunk.start != len(slot.cached_tokens):
            raise RuntimeError(f"prefill of {chunk.sequence.request_id} starts at {chunk.start}, "
                               f"but {len(slot.cached_tokens)} tokens are cached")
        tokens = chunk.sequence.request.prompt_token_ids[chunk.start:chunk.end]
        scores_prompt = slot.prompt_logprobs is not None  # echo: logits at every prompt position
        if scores_prompt:
            self._prompts_to_score.append((slot, chunk, self._batch.n_tokens))
        for token in tokens[:-1]:
            self._add_token(slot, token, wants_logits=scores_prompt)
        return self._add_token(slot, tokens[-1], wants_logits=chunk.is_last or scores_prompt)

    def _logits_at(self, index: int) -> np.ndarray:
        return np.ctypeslib.as_array(ll.llama_get_logits_ith(self._ctx, index), shape=(self._num_vocab,))

    def _logprobs_at(self, index: int) -> np.ndarray:
        """The log-softmax of the batch position's logits (the model's own distribution, before sampling)."""
        return log_softmax(self._logits_at(index))

    def _score_prompts(self) -> None:
        """Each scored prompt position's logits give the logprob of the prompt token after it."""
        for slot, chunk, first in self._prompts_to_score:
            prompt, num_top = chunk.sequence.request.prompt_token_ids, chunk.sequence.request.params.num_prompt_logprobs
            for offset, position in enumerate(range(chunk.start, min(chunk.end, len(prompt) - 1))):
                logprobs = self._logprobs_at(first + offset)
                slot.prompt_logprobs.append(token_logprob(logprobs, prompt[position + 1], num_top, self._piece))
        self._prompts_to_score.clear()

    def _add_token(self, slot: _Slot, token: int, wants_logits: bool) -> int:
        b, i = self._batch, self._batch.n_tokens
        if i >= self._batch_capacity:
            raise RuntimeError(f"batch of more than {self._batch_capacity} tokens; the scheduler overran its budget")
        b.token[i] = token
        b.pos[i] = len(slot.cached_tokens)
        b.n_seq_id[i] = 1
        b.seq_id[i][0] = slot.seq_id
        b.logits[i] = 1 if wants_logits else 0
        b.n_tokens = i + 1
        slot.cached_tokens.append(token)
        return i

    def _sample(self, slot: _Slot, index: int, draft: list[int]) -> StepOutput:
        """Sample the position at `index`, then each drafted position after it while the sampled token
        equals the drafted one (backends/speculative.py says why this keeps the output unchanged); emit
        what was sampled and drop the KV cells of the rejected draft."""
        output = StepOutput(slot.sequence.request_id)
        num_in_cache = len(slot.cached_tokens) - len(draft)  # up to and with the token decoded at `index`
        emitted: list[int] = []
        for offset in range(len(draft) + 1):
            try:
                emitted.append(self._emit(slot, index + offset, num_in_cache + offset, output))
            except GrammarRejectedError as exc:
                output.finish_reason, output.error = FinishReason.ABORT, str(exc)
            if output.finish_reason is not None or offset == len(draft) or emitted[-1] != draft[offset]:
                break
        if slot.speculation is not None:
            output.num_drafted_tokens = len(draft)
            output.num_accepted_tokens = slot.speculation.record(draft, emitted)
        self._drop_cached_after(slot, num_in_cache + accepted_run(draft, emitted))
        if slot.prompt_logprobs is not None:
            output.prompt_logprobs, slot.prompt_logprobs = slot.prompt_logprobs, None
        if output.finish_reason is not None:
            self._release(slot)
        return output

    def _emit(self, slot: _Slot, index: int, num_in_cache: int, output: StepOutput) -> int:
        """Sample one token from the logits at `index` and add it to the output; `num_in_cache` tokens
        precede it in the sequence. Sets the output's finish reason when the sequence ends with it."""
        params = slot.sequence.request.params
        # Before sampling: the sampler chain may rewrite the logits (penalties, grammar).
        logprobs = self._logprobs_at(index) if params.num_logprobs is not None else None
        token = self._next_token(slot, index)
        slot.num_generated += 1
        output.num_new_tokens += 1
        if token in self._eog_tokens and not params.ignore_eos:
            output.finish_reason, output.text = FinishReason.STOP, output.text + slot.text.flush()
            return token
        text, hit_stop = slot.text.feed(slot.kept_pieces.get(token) or self._piece(token))
        output.text += text
        slot.pending_token = token
        if logprobs is not None:
            output.logprobs = (output.logprobs or []) + [token_logprob(logprobs, token, params.num_logprobs,
                                                                         self._piece)]
        if hit_stop:
            output.finish_reason, output.stop_string = FinishReason.STOP, slot.text.matched_stop
        elif slot.num_generated >= params.max_tokens or num_in_cache + 1 >= self._context_length:
            output.finish_reason, output.text = FinishReason.LENGTH, output.text + slot.text.flush()
        return token

    def _drop_cached_after(self, slot: _Slot, num_kept: int) -> None:
        """Remove the KV cells from position `num_kept` on (a rejected draft)."""
        if num_kept < len(slot.cached_tokens):
            if not ll.llama_memory_seq_rm(self._memory, slot.seq_id, num_kept, -1):
                raise RuntimeError(f"llama.cpp could not drop the rejected draft of sequence {slot.seq_id}")
            del slot.cached_tokens[num_kept:]

    def _next_token(self, slot: _Slot, index: int) -> int:
        if slot.error is not None:
            raise GrammarRejectedError(slot.error)
        if slot.grammar is None:
            if slot.pick is not None:
                return slot.pick.pick(self._logits_at(index))
            return ll.llama_sampler_sample(slot.sampler, self._ctx, index)
        return self._grammars.sample(slot.grammar, slot.sampler, self._ctx, index, slot.pick)

    def close(self) -> None:
        for slot in self._slots:
            self._release(slot)
        self._grammars.close()  # before the vocabulary it reads goes with the model
        if self._draft_model is not None:
            self._draft_model.close()
            self._draft_model = None
        free_native(self._batch, self._ctx, self._model)
        self._batch = self._ctx = self._model = None


def create_backend(settings: BackendSettings) -> LlamaCppBackend:
    return LlamaCppBackend(settings)
