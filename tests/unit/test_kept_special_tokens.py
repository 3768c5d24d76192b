"""The seam that keeps a tool-call marker in the text when it is a special token of the model's vocabulary
(Mistral's `[TOOL_CALLS]`): the API asks for the format's markers on every request that offers tools, and the
vLLM backend then turns off skip_special_tokens (as vLLM's own tool parsers do), but only when one of them is
a special token of its tokenizer. The llama.cpp side runs on a real model in
tests/integration/test_mistral_marker.py."""
from __future__ import annotations

import pytest

from backends.vllm import sampling_kwargs, special_token_texts
from serve.sequence import SamplingParams
from tests.unit.test_generation import MODEL, client_for
from tests.unit.test_tool_generation import QUESTION, WEATHER, FakeToolEngine


def test_a_request_with_tools_keeps_its_formats_markers():
    engine = FakeToolEngine()
    client_for(engine).post("/v1/chat/completions", json={"model": MODEL, "messages": QUESTION, "tools": [WEATHER]})
    assert engine.requests[-1].params.kept_special_tokens == ("<tool_call>",)


@pytest.mark.parametrize("body", [{}, {"tools": [WEATHER], "tool_choice": "none"}])
def test_a_request_without_active_tools_keeps_none(body):
    engine = FakeToolEngine()
    client_for(engine).post("/v1/chat/completions", json={"model": MODEL, "messages": QUESTION, **body})
    assert engine.requests[-1].params.kept_special_tokens == ()


def test_vllm_shows_special_tokens_only_for_a_kept_special_marker():
    special = frozenset({"</s>", "[TOOL_CALLS]"})
    assert sampling_kwargs(SamplingParams(), special)["skip_special_tokens"] is True
    assert sampling_kwargs(SamplingParams(kept_special_tokens=("<tool_call>",)), special)["skip_special_tokens"] is True
    kept = SamplingParams(kept_special_tokens=("[TOOL_CALLS]",))
    assert sampling_kwargs(kept, special)["skip_special_tokens"] is False


def test_special_token_texts_of_a_real_tokenizer():
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    vocabulary = tokenizers.Tokenizer(tokenizers.models.WordLevel({"[UNK]": 0, "hello": 1}, unk_token="[UNK]"))
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=vocabulary, unk_token="[UNK]")
    tokenizer.add_special_tokens({"additional_special_tokens": ["[TOOL_CALLS]"]})
    tokenizer.add_tokens(["<tool_call>"])  # an added token that is not special: it is text already
    texts = special_token_texts(tokenizer)
    assert "[TOOL_CALLS]" in texts and "[UNK]" in texts and "<tool_call>" not in texts
