"""Constrained sampling of the llama.cpp backend (real SmolLM2 model): llguidance's tokenizer built in the
background equals llguidance's own, the compacted candidate list picks what the masked vocabulary picks,
and llama.cpp's check-then-mask fallback ends in schema-valid output after rejected samples."""
from __future__ import annotations

import json
import threading

import jsonschema
import llama_cpp.llama_cpp as ll
import numpy as np
import pytest

from backends.base import BackendSettings
from backends.llamacpp import LlamaCppBackend
from backends.llamacpp_grammar import Candidates, GuidanceGrammar, LlamaGrammar
from backends.llamacpp_sampler import draws_from_the_whole_distribution, make_sampler
from backends.llguidance_tokenizer import token_bytes
from serve.grammar import schema_constraint
from serve.models.catalog import embedded_model_path
from serve.sequence import Batch, PrefillChunk, Request, SamplingParams, Sequence

SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 120}},
          "required": ["name", "age"], "additionalProperties": False}
PROSE = "Write a short poem about the sea."  # the model starts with words, never with `{`


@pytest.fixture(scope="module")
def backend():
    backend = LlamaCppBackend(BackendSettings(model_path=embedded_model_path(), context_length=512, num_parallel=2,
                                              num_threads=1, max_batch_tokens=128))
    yield backend
    backend.close()


def _sequence(backend, request_id: str, params: SamplingParams, outputs: list) -> Sequence:
    prompt = backend.tokenize(backend.render_chat([{"role": "user", "content": PROSE}]))
    return Sequence(Request(request_id, "m", "", prompt, params), deliver=outputs.append)


def _run(backend, sequence: Sequence, outputs: list) -> tuple[str, type]:
    """Prefill, then decode until the sequence ends; its text and the kind of grammar it was sampled with."""
    num_cached = backend.admit(sequence)
    grammar_kind = type(backend._slot_of[sequence.request_id].grammar)
    step_outputs = backend.step(Batch(prefill=[PrefillChunk(sequence, num_cached, sequence.num_prompt_tokens)]))
    while not step_outputs[-1].finish_reason:
        outputs.extend(step_outputs)
        step_outputs = backend.step(Batch(decode=[sequence]))
    outputs.extend(step_outputs)
    assert all(output.error is None for output in outputs), [output.error for output in outputs]
    return "".join(output.text for output in outputs), grammar_kind


def _prefill(backend, sequence: Sequence) -> int:
    """Compute the sequence's prompt; the batch index of its last position, whose logits stay readable."""
    num_cached = backend.admit(sequence)
    backend.step(Batch(prefill=[PrefillChunk(sequence, num_cached, sequence.num_prompt_tokens)]))
    return sequence.num_prompt_tokens - num_cached - 1


# llguidance's own loop calls llama-cpp-python's deprecated llama_token_get_attr once per token (ours does not).
@pytest.mark.filterwarnings("ignore:llama_token_get_attr is deprecated:DeprecationWarning")
def test_the_background_tokenizer_equals_llguidances_own(backend):
    import llguidance.llamacpp

    ours = backend._grammars._tokenizer_build.result()
    theirs = llguidance.llamacpp.lltokenizer_from_vocab(backend._vocab)
    assert ours.vocab_size == theirs.vocab_size == backend._num_vocab
    for token in range(backend._num_vocab):
        assert ours.decode_bytes([token]) == theirs.decode_bytes([token]), token
        assert ours.is_special_token(token) == theirs.is_special_token(token), token
    assert ours.tokenize_str('{"name": "Ada"}') == theirs.tokenize_str('{"name": "Ada"}')


def test_token_bytes_stops_when_cancelled(backend):
    cancelled = threading.Event()
    cancelled.set()
    assert token_bytes(backend._vocab, cancelled) is None


def test_closing_the_backend_while_the_tokenizer_builds_stops_the_build():
    backend = LlamaCppBackend(BackendSettings(model_path=embedded_model_path(), context_length=256, num_parallel=1,
                                              num_threads=1, max_batch_tokens=64))
    build = backend._grammars._tokenizer_build
    backend.close()  # at once: the build is cancelled (or done) before the vocabulary goes
    assert not build._thread.is_alive()


def _mask(num_vocab: int, allowed: list[int]) -> np.ndarray:
    mask = np.zeros((num_vocab + 31) // 32, dtype=np.uint32)
    for token in allowed:
        mask[token // 32] |= np.uint32(1 << (token % 32))
    return mask.view(np.int32)  # llguidance's layout: bit t % 32 of word t // 32


@pytest.mark.parametrize("params", [
    dict(temperature=0.0), dict(temperature=0.8), dict(temperature=1.5, top_k=40, top_p=0.9, min_p=0.02),
    dict(temperature=0.8, repeat_penalty=1.3, logit_bias={2: 5.0})])
def test_the_compacted_candidates_pick_what_the_masked_vocabulary_picks(backend, params):
    """The same seed, the same logits: the allowed tokens alone vs all tokens with the rest at -inf."""
    sequence = _sequence(backend, "compact", SamplingParams(max_tokens=1), [])
    index = _prefill(backend, sequence)
    num_vocab = backend._num_vocab
    logits = np.ctypeslib.as_array(ll.llama_get_logits_ith(backend._ctx, index), shape=(num_vocab,))
    likely = [int(t) for t in np.argsort(logits)[-40:]]
    rng = np.random.default_rng(0)
    candidates = Candidates(num_vocab)
    for trial in range(40):
        # A few likely tokens and some unlikely ones, bit 31 of a word and the last token included.
        allowed = sorted({*rng.choice(likely, size=rng.integers(1, 12)), *rng.integers(0, num_vocab, size=20),
                          31, num_vocab - 1})
        mask = _mask(num_vocab, allowed)
        picks = []
        for compact in (True, False):
            chain = make_sampler(SamplingParams(seed=trial, **params), num_vocab, frozenset())
            if compact:
                pointer = candidates.fill_allowed(backend._ctx, index, mask)
                assert candidates.array.size == len(allowed)
            else:
                bits = np.unpackbits(mask.view(np.uint8), bitorder="little")[:num_vocab]
                pointer = candidates.fill(backend._ctx, index, bits)
            ll.llama_sampler_apply(chain, pointer)
            picks.append(candidates.selected())
            ll.llama_sampler_free(chain)
        assert picks[0] == picks[1] and picks[0] in allowed, (trial, picks)
    backend.step(Batch(released=[sequence]))


def test_a_mask_allowing_most_tokens_fills_the_whole_vocabulary(backend):
    num_vocab = backend._num_vocab
    candidates = Candidates(num_vocab)
    sequence = _sequence(backend, "wide", SamplingParams(max_tokens=1), [])
    index = _prefill(backend, sequence)
    mask = np.full((num_vocab + 31) // 32, -1, dtype=np.int32)
    mask[0] = 0  # tokens 0-31 excluded
    candidates.fill_allowed(backend._ctx, index, mask)
    assert candidates.array.size == num_vocab
    assert np.isneginf(candidates._view["logit"][:32]).all() and np.isfinite(candidates._view["logit"][32:]).all()
    backend.step(Batch(released=[sequence]))


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_llguidance_samples_schema_valid_output(backend, temperature):
    outputs = []
    sequence = _sequence(backend, f"guided-{temperature}", SamplingParams(
        max_tokens=120, temperature=temperature, seed=3, constraint=schema_constraint(SCHEMA, "p")), outputs)
    text, grammar_kind = _run(backend, sequence, outputs)
    assert grammar_kind is GuidanceGrammar
    assert outputs[-1].finish_reason.value == "stop", text
    jsonschema.validate(json.loads(text), SCHEMA)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_rejected_first_sample_falls_back_to_the_grammar_masked_distribution(backend, monkeypatch, seed):
    """llama.cpp's grammar sampler (lazy grammars, or a GBNF llguidance cannot take): the chain's pick is
    checked against the grammar; rejected (the model wants prose, the grammar `{`), the chain picks again
    among the tokens the grammar allows. The answer is valid under the schema."""
    def no_llguidance(gbnf):
        raise ValueError("llguidance disabled for this test")
    monkeypatch.setattr(backend._grammars, "_matcher", no_llguidance)
    checks = []
    original = Candidates.is_allowed

    def recording_is_allowed(self, grammar, token):
        checks.append(original(self, grammar, token))
        return checks[-1]
    monkeypatch.setattr(Candidates, "is_allowed", recording_is_allowed)
    outputs = []
    sequence = _sequence(backend, f"fallback-{seed}", SamplingParams(
        max_tokens=120, temperature=0.8, seed=seed, constraint=schema_constraint(SCHEMA, "p")), outputs)
    text, grammar_kind = _run(backend, sequence, outputs)
    assert grammar_kind is LlamaGrammar
    assert checks[0] is False  # the first pick (prose) was rejected by the grammar
    assert outputs[-1].finish_reason.value == "stop", text
    jsonschema.validate(json.loads(text), SCHEMA)


@pytest.mark.parametrize("params, expected", [
    (dict(temperature=0.8), True), (dict(temperature=0.0), True), (dict(temperature=0.8, logit_bias={2: 1.0}), True),
    (dict(temperature=0.8, top_k=40), False), (dict(temperature=0.8, top_p=0.9), False),
    (dict(temperature=0.8, min_p=0.05), False), (dict(temperature=0.0, repeat_penalty=1.1), False),
    (dict(temperature=0.8, presence_penalty=0.5), False)])
def test_a_pick_is_checked_first_only_where_that_keeps_the_masked_distribution(params, expected):
    assert draws_from_the_whole_distribution(SamplingParams(**params)) is expected


class FakeMatcher:
    """A seam for GuidanceGrammar: a grammar allowing a fixed set of tokens at every position."""

    def __init__(self, allowed: set[int]):
        self.allowed = allowed

    def validate_tokens(self, tokens):
        return int(tokens[0] in self.allowed)

    def try_consume_tokens(self, tokens):
        return int(tokens[0] in self.allowed)

    def consume_token(self, token):
        return token in self.allowed


def test_checking_the_pick_first_samples_the_masked_distribution(backend):
    """A rejected draw followed by a draw among the allowed tokens gives each allowed token p(t) / Z: over
    2,000 seeds, the checked-first picks follow the exact masked softmax as closely as the masked picks."""
    sequence = _sequence(backend, "check-first", SamplingParams(max_tokens=1), [])
    index = _prefill(backend, sequence)
    num_vocab = backend._num_vocab
    logits = np.ctypeslib.as_array(ll.llama_get_logits_ith(backend._ctx, index), shape=(num_vocab,)).copy()
    ranked = [int(t) for t in np.argsort(logits)[::-1]]
    allowed = set(ranked[1:12:2])  # the most likely token and every other one excluded: many rejections
    exact = np.exp(logits[sorted(allowed)] - logits[sorted(allowed)].max())
    exact /= exact.sum()
    mask = _mask(num_vocab, sorted(allowed))
    candidates = Candidates(num_vocab)
    frequencies = {}
    for probes in ((), tuple(sorted(allowed)[:2])):
        grammar = GuidanceGrammar(FakeMatcher(allowed), candidates, num_vocab, probes)
        grammar._fill_mask = lambda matcher, bitmask, row: bitmask.__setitem__(row, mask)
        counts = dict.fromkeys(sorted(allowed), 0)
        for seed in range(2000):
            chain = make_sampler(SamplingParams(temperature=1.0, seed=seed), num_vocab, frozenset())
            counts[grammar.sample(chain, backend._ctx, index)] += 1
            ll.llama_sampler_free(chain)
        frequencies[probes] = np.array(list(counts.values())) / 2000
        assert grammar.num_checked == (2000 if probes else 0)
    assert grammar.num_rejected > 300  # the most likely token, excluded, is drawn often
    for observed in frequencies.values():
        assert 0.5 * np.abs(observed - exact).sum() < 0.05, (observed, exact)
    backend.step(Batch(released=[sequence]))


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_checking_first_inside_strings_gives_schema_valid_output_and_greedy_is_unchanged(backend, monkeypatch,
                                                                                         temperature):
    """Greedy: the constrained argmax either way, so the same text with and without checking first."""
    texts, grammars = [], []
    create = backend._grammars.create

    def recording_create(constraint, can_check_first=False):
        grammars.append(create(constraint, can_check_first)[0])
        return grammars[-1], None
    monkeypatch.setattr(backend._grammars, "create", recording_create)
    for can_check_first in (True, False):
        monkeypatch.setattr("backends.llamacpp.draws_from_the_whole_distribution", lambda params: can_check_first)
        outputs = []
        sequence = _sequence(backend, f"probe-{temperature}-{can_check_first}", SamplingParams(
            max_tokens=120, temperature=temperature, seed=5, constraint=schema_constraint(SCHEMA, "p")), outputs)
        text, _ = _run(backend, sequence, outputs)
        jsonschema.validate(json.loads(text), SCHEMA)
        texts.append(text)
    checked = [grammar.num_checked for grammar in grammars]
    assert checked[0] > 0 and checked[1] == 0  # the name string was sampled by checking first
    if temperature == 0.0:
        assert texts[0] == texts[1]


def test_a_speculative_draft_is_cut_where_the_grammar_stops_allowing_it(backend):
    """A drafted token the grammar forbids could never be accepted, so it is not verified (llamacpp._drafts)."""
    grammar, error = backend._grammars.create(schema_constraint(SCHEMA, "p"), True)
    assert isinstance(grammar, GuidanceGrammar) and error is None
    valid = backend.tokenize('{"name": "Ada", "age"')
    draft = valid + backend.tokenize("\n\nWell")
    assert backend._grammars.valid_prefix(grammar, draft) == valid
    assert backend._grammars.valid_prefix(grammar, valid) == valid  # nothing was consumed by checking
    assert backend._grammars.valid_prefix(grammar, backend.tokenize("Sure")) == []
