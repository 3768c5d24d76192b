"""Ollama's `think` end to end with the official ollama client. SmolLM2-135M does not think by itself, so
honest checks only: on a server whose user catalog declares it a think_tags reasoning model, a raw prompt
that opens the `<think>` block (as R1 templates do) makes its output reasoning, answered in `thinking` and
hidden by think=false; a chat whose output has no block is answered unchanged. Asking the plain catalog's
model to think is Ollama's 400. The splitting itself is tested on recorded outputs in
tests/unit/test_ollama_thinking.py and tests/unit/test_reasoning.py."""
from __future__ import annotations

import textwrap

import ollama
import pytest

from tests.integration.conftest import start_llamacpp_server

MODEL = "smollm2-135m"
GREEDY = {"temperature": 0, "num_predict": 24}
OPENS_THINKING = "<|im_start|>user\nWhat is two plus two?<|im_end|>\n<|im_start|>assistant\n<think>\n"
QUESTION = [{"role": "user", "content": "Name three colors."}]


@pytest.fixture(scope="module")
def thinker(tmp_path_factory) -> ollama.Client:
    catalog = tmp_path_factory.mktemp("thinking-catalog") / "models.toml"
    catalog.write_text(textwrap.dedent(f"""
        [models.{MODEL}]
        gguf = {{ repo = "bartowski/SmolLM2-135M-Instruct-GGUF", quant = "Q4_K_M", embedded = true }}
        context_length = 8192
        num_params = 134_515_008
        license = "apache-2.0"
        download_bytes = 98_362_432
        capabilities = ["chat", "reasoning"]
        reasoning_format = "think_tags"
    """))
    with start_llamacpp_server(tmp_path_factory, "thinking", ["--ctx", "2048", "--catalog", str(catalog)]) as server:
        yield ollama.Client(host=server.base_url, timeout=120)


def test_output_inside_an_opened_block_is_thinking(thinker):
    shown = thinker.generate(model=MODEL, prompt=OPENS_THINKING, raw=True, think=True, options=GREEDY)
    assert shown.thinking and "<think>" not in shown.thinking and "</think>" not in shown.thinking
    streamed = list(thinker.generate(model=MODEL, prompt=OPENS_THINKING, raw=True, think=True, options=GREEDY,
                                     stream=True))
    assert "".join(part.thinking or "" for part in streamed) == shown.thinking
    assert "".join(part.response for part in streamed) == shown.response
    hidden = thinker.generate(model=MODEL, prompt=OPENS_THINKING, raw=True, think=False, options=GREEDY)
    assert not hidden.thinking and hidden.response == shown.response
    assert hidden.eval_count == shown.eval_count  # the thinking was generated, only not shown


def test_a_chat_without_a_think_block_is_answered_unchanged(thinker):
    default = thinker.chat(model=MODEL, messages=QUESTION, options=GREEDY)
    for think in (True, False):
        reply = thinker.chat(model=MODEL, messages=QUESTION, options=GREEDY, think=think)
        assert reply.message.content == default.message.content and not reply.message.thinking
    assert default.message.content


def test_think_on_a_model_that_does_not_reason_is_ollamas_400(server):
    client = ollama.Client(host=server.base_url, timeout=120)
    for think, message in ((True, "does not support thinking"), ("high", "does not support thinking levels")):
        with pytest.raises(ollama.ResponseError, match=message) as caught:
            client.chat(model=server.model, messages=QUESTION, think=think, options=GREEDY)
        assert caught.value.status_code == 400
    with pytest.raises(ollama.ResponseError, match="unrecognized request field"):
        client.generate(model=server.model, prompt="Hi", options=GREEDY, width=64)
