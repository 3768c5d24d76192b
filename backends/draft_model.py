"""Draft-model speculative decoding: a smaller or more quantized sibling of the target model drafts the
tokens that the target then verifies (`--draft-model`, `--speculative draft`).

The draft model has its own llama context, created like the target's (one KV stream per sequence) and
driven on the engine thread inside the target's step: each speculating request keeps the same sequence id
in both contexts. Before a step's target decode, `DraftModel.drafts` brings every drafting sequence's
draft cache in step with the target's tokens (the cells after their common prefix, i.e. the drafts the
target rejected, are dropped; the tokens the target accepted or emitted since are fed, the pending one
last), then drafts greedily for all of them together, one batched draft decode per drafted position, as
llama.cpp's draft-simple does: up to `--draft-max` tokens (8), stopping a sequence's draft before a token
whose probability under the draft falls below DRAFT_MIN_PROBABILITY (llama.cpp's p_min), or after an
end-of-generation token. How many tokens a sequence may draft follows what a drafted token costs
(backends/draft_policy.py's DraftModelCost: verifying it, plus a draft decode, measured against a target
decode step as the server runs) and how often its drafts are accepted, as for prompt lookup: the k-th
token is drafted while rate**k exceeds the cost. Where even a sure token costs more than it saves (a draft
as slow as its target), nothing is drafted. `--speculative draft` drafts whatever a draft decode costs. The target verifies the drafts in its ordinary batched decode and samples each
position in turn (backends/speculative.py), so the output is the same with or without a draft model.

A draft must share the target's vocabulary (`vocabulary_mismatch`, after llama.cpp's
common_speculative_are_compatible): its token ids are fed to the target as they are.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import llama_cpp.llama_cpp as ll
import numpy as np

from backends.base import DRAFT_MAX_TOKENS, BackendSettings
from backends.draft_policy import Acceptance, DraftModelCost, paying_length
from backends.llamacpp_context import ContextShape, create_context, free_native, load_model
from backends.llamacpp_vocab import Vocabulary
from backends.slot_choice import common_prefix_length
from backends.speculative import DraftLength, accepted_run, share_budget
from serve.errors import ConfigError

log = logging.getLogger(__name__)

# A draft stops before a token the draft model gives less than this probability: such a token is likely
# rejected, and every drafted token costs a draft decode and a verified position (llama.cpp's p_min).
DRAFT_MIN_PROBABILITY = 0.5
VOCAB_MAX_SIZE_DIFFERENCE = 128  # llama.cpp's SPEC_VOCAB_MAX_SIZE_DIFFERENCE
VOCAB_CHECK_START_TOKEN = 5  # llama.cpp's SPEC_VOCAB_CHECK_START_TOKEN_ID: the first ids are often specials


def vocabulary_mismatch(target_model, draft_model) -> str | None:
    """Why the draft's tokens cannot stand for the target's (None: they can): the vocabulary type, BOS and
    EOS, the number of tokens (within VOCAB_MAX_SIZE_DIFFERENCE) and every shared token's text."""
    target, draft = ll.llama_model_get_vocab(target_model), ll.llama_model_get_vocab(draft_model)
    if ll.llama_vocab_type(target) != ll.llama_vocab_type(draft):
        return (f"its tokenizer is of another type ({ll.llama_vocab_type(draft)} against the target's "
                f"{ll.llama_vocab_type(target)})")
    for name, adds, token in (("BOS", ll.llama_vocab_get_add_bos, ll.llama_vocab_bos),
                              ("EOS", ll.llama_vocab_get_add_eos, ll.llama_vocab_eos)):
        if adds(target) != adds(draft) or (adds(target) and token(target) != token(draft)):
            return f"its {name} token differs ({token(draft)} against the target's {token(target)})"
    num_target, num_draft = ll.llama_vocab_n_tokens(target), ll.llama_vocab_n_tokens(draft)
    if abs(num_target - num_draft) > VOCAB_MAX_SIZE_DIFFERENCE:
        return f"its vocabulary has {num_draft} tokens, the target's {num_target}"
    for token in range(VOCAB_CHECK_START_TOKEN, min(num_target, num_draft)):
        target_text, draft_text = ll.llama_vocab_get_text(target, token), ll.llama_vocab_get_text(draft, token)
        if target_text != draft_text:
            return (f"token {token} is {draft_text.decode('utf-8', 'replace')!r} in the draft, "
                    f"{target_text.decode('utf-8', 'replace')!r} in the target")
    return None


class DraftedSequence:
    """One sequence's record of draft-model speculation: how long it drafts next and how its drafts fared
    (the counterpart of backends/speculative.py's Speculation, whose drafts come from a lookup)."""

    def __init__(self, max_tokens: int) -> None:
        self._max_tokens = max_tokens
        self._length = DraftLength(current=max_tokens)
        self._acceptance = Acceptance()
        self.num_drafted = 0
        self.num_accepted = 0

    def wanted(self, room: int, token_cost: float = 0.0) -> int:
        """Tokens to draft this step (call once per step): 0 while drafts keep failing (DraftLength), and
        only as many as pay for themselves when a drafted token costs `token_cost` decode tokens."""
        self._acceptance.next_step()
        length = max(min(self._length.next_length(), self._max_tokens, room), 0)
        return paying_length(self._acceptance.rate, token_cost, length)

    def record(self, drafted: list[int], emitted: list[int]) -> int:
        """The step's outcome; returns how many drafted tokens were accepted."""
        num_accepted = accepted_run(drafted, emitted)
        self._length.record(len(drafted), num_accepted)
        self._acceptance.record(len(drafted), num_accepted)
        self.num_drafted += len(drafted)
        self.num_accepted += num_accepted
        return num_accepted


class DraftModel:
    """The draft model and its context: each sequence id's cached tokens, kept in step with the target's
    before every draft."""

    @classmethod
    def for_target(cls, settings: BackendSettings, target_model, shape: ContextShape) -> "DraftModel":
        """The draft model `settings` name, for the target model loaded from them."""
        if settings.draft_model_path is None:
            raise ConfigError("--speculative draft needs a draft model: give --draft-model MODEL")
        return cls(settings.draft_model_path, target_model, shape, settings.n_gpu_layers,
                   target_name=settings.model_path.name if settings.model_path else "the model",
                   max_tokens=settings.draft_max_tokens, always=settings.draft_always)

    def __init__(self, path: Path, target_model, shape: ContextShape, n_gpu_layers: int = 0,
                 target_name: str = "the model", max_tokens: int = DRAFT_MAX_TOKENS, always: bool = False):
        self.max_tokens = max_tokens
        self._model = load_model(path, n_gpu_layers, "draft model")
        self._ctx = self._batch = None
        try:
            mismatch = vocabulary_mismatch(target_model, self._model)
            if mismatch:
                raise ConfigError(f"the draft model {path.name} cannot draft for {target_name}: {mismatch}; a draft "
                                  "must share the target's tokenizer (a smaller or more quantized model of the same "
                                  "family)")
            self._ctx = create_context(self._model, shape)
        except BaseException:
            self.close()
            raise
        self._memory = ll.llama_get_memory(self._ctx)
        self._capacity = shape.batch_capacity
        self._batch = ll.llama_batch_init(self._capacity, 0, 1)
        vocabulary = Vocabulary(self._model)
        self._num_vocab, self._eog_tokens = vocabulary.num_tokens, vocabulary.eog_tokens
        self._cached: list[list[int]] = [[] for _ in range(shape.num_parallel)]  # per sequence id
        self.cost = DraftModelCost(counts_draft=not always)  # the backend reports its decode steps' times to it

    def new_sequence(self) -> DraftedSequence:
        return DraftedSequence(self.max_tokens)

    def drafts(self, sequences: dict[int, tuple[list[int], int]], budget: int,
               num_decoding: int = 1) -> dict[int, list[int]]:
        """Drafts for sequences given as seq id -> (every token so far, the last being the one the target
        decodes next; tokens wanted), within the step's draft budget shared between them, in a step where
        `num_decoding` sequences decode."""
        if not self.cost.drafting_pays(num_decoding):
            return {}
        grants = share_budget({seq_id: wanted for seq_id, (_, wanted) in sequences.items()}, budget)
        limits = {seq_id: count for seq_id, count in grants.items() if count > 0}
        if not limits:
            return {}
        logits_at = self._catch_up({seq_id: sequences[seq_id][0] for seq_id in limits})
        drafts: dict[int, list[int]] = {seq_id: [] for seq_id in limits}
        while logits_at:
            following = {}
            for seq_id, index in logits_at.items():
                token, probability = self._most_likely(index)
                if probability < DRAFT_MIN_PROBABILITY:
                    continue
                drafts[seq_id].append(token)
                if len(drafts[seq_id]) < limits[seq_id] and token not in self._eog_tokens:
                    following[seq_id] = [token]
            logits_at = self._decode(following) if following else {}
        return {seq_id: tokens for seq_id, tokens in drafts.items() if tokens}

    def _catch_up(self, sequences: dict[int, list[int]]) -> dict[int, int]:
        """Make each sequence's draft cache hold its tokens: cells after the common prefix go (a rejected
        draft, or another request's tokens in a reused slot), the tokens after it are fed. Returns the
        batch index of each sequence's last-token logits."""
        to_feed = {}
        for seq_id, tokens in sequences.items():
            cached = self._cached[seq_id]
            kept = min(common_prefix_length(cached, tokens), len(tokens) - 1)  # the last token is always fed
            if kept < len(cached):
                if not ll.llama_memory_seq_rm(self._memory, seq_id, kept, -1):
                    ll.llama_memory_seq_rm(self._memory, seq_id, -1, -1)  # cannot cut partially: start over
                    kept = 0
                del cached[kept:]
            to_feed[seq_id] = tokens[kept:]
        if sum(len(tokens) for tokens in to_feed.values()) > self._capacity:
            # More than one decode holds (a new prompt): everything but the last tokens first, in chunks,
            # so that the last decode gives every sequence's logits.
            self._feed_in_chunks({seq_id: tokens[:-1] for seq_id, tokens in to_feed.items()})
            to_feed = {seq_id: tokens[-1:] for seq_id, tokens in to_feed.items()}
        return self._decode(to_feed)

    def _feed_in_chunks(self, sequences: dict[int, list[int]]) -> None:
        pending = [(seq_id, token) for seq_id in sorted(sequences) for token in sequences[seq_id]]
        for start in range(0, len(pending), self._capacity):
            chunk: dict[int, list[int]] = {}
            for seq_id, token in pending[start:start + self._capacity]:
                chunk.setdefault(seq_id, []).append(token)
            self._decode(chunk, with_logits=False)

    def _decode(self, sequences: dict[int, list[int]], with_logits: bool = True) -> dict[int, int]:
        """One llama_decode of each sequence's tokens (in ascending sequence ids: one micro-batch, as in
        the target's step); returns the batch index of each sequence's last token."""
        batch, last_index = self._batch, {}
        batch.n_tokens = 0
        for seq_id in sorted(sequences):
            cached = self._cached[seq_id]
            for offset, token in enumerate(sequences[seq_id]):
                i = batch.n_tokens
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, len(cached), 1
                batch.seq_id[i][0] = seq_id
                is_last = offset == len(sequences[seq_id]) - 1
                batch.logits[i] = 1 if with_logits and is_last else 0
                batch.n_tokens = i + 1
                cached.append(token)
            last_index[seq_id] = batch.n_tokens - 1
        started = time.perf_counter()
        status = ll.llama_decode(self._ctx, batch)
        if status != 0:
            raise RuntimeError(f"llama_decode of the draft model failed with status {status}")
        if with_logits and max(len(tokens) for tokens in sequences.values()) <= 2:  # a drafting decode
            self.cost.observe_draft(time.perf_counter() - started)
        return last_index

    def _most_likely(self, index: int) -> tuple[int, float]:
        """The draft's greedy token at the batch position and its probability."""
        logits = np.ctypeslib.as_array(ll.llama_get_logits_ith(self._ctx, index), shape=(self._num_vocab,))
        best = int(logits.argmax())
        return best, float(1.0 / np.exp(logits - logits[best]).sum())

    def close(self) -> None:
        free_native(self._batch, self._ctx, self._model)
        self._batch = self._ctx = self._model = None
