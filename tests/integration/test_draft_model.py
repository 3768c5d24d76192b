"""Draft-model speculative decoding through the real server: an F16 SmolLM2-135M (made locally from the
shipped GGUF) served with the shipped Q4_1 as its draft (`--draft-model`). Greedy output is the same as
without drafts (streamed too), max_tokens and stop strings cut exactly, `"speculative": false` opts out,
drafted and accepted tokens are counted, a draft with another vocabulary is refused in one line, and
`serve probe` names the draft. Answers are compared with the prompt's KV cache in the same state on both
sides (`same_cache`, as tests/integration/test_speculative.py explains)."""
from __future__ import annotations

import subprocess
import sys

import httpx
import llama_cpp.llama_cpp as ll
import pytest

from backends.base import BackendSettings
from backends.llamacpp import LlamaCppBackend
from serve.models.catalog import embedded_model_path
from serve.runtime.scheduler import Scheduler
from serve.sequence import Request, SamplingParams, Sequence
from tests.fixtures_gguf import f16_gguf, mistral_marked_gguf
from tests.integration.conftest import start_llamacpp_server
from tests.integration.server import REPO_ROOT, free_port
from tests.integration.test_speculative import COPY_PROMPTS, OPEN_PROMPTS, chat, drafted_and_accepted, same_cache, text_of

MAX_TOKENS = 48  # an F16 target on a loaded 2-core machine is slow: short answers


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # --speculative draft: drafts whatever they cost. At 135M a draft decode costs about what the target's
    # does, so the default (drafting where the measured cost pays) would draft next to nothing here.
    args = ["--model", str(f16_gguf()), "--draft-model", str(embedded_model_path()), "--speculative", "draft",
            "--parallel", "1", "--ctx", "2048"]
    with start_llamacpp_server(tmp_path_factory, "draft-model", args) as running:
        yield running


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.base_url, timeout=900) as client:
        yield client


def test_the_server_says_which_drafter_it_uses(server):
    log = server.log_path.read_text()
    assert "speculative decoding: the draft model" in log and "SmolLM2-135M-Instruct.Q4_1.gguf" in log


def test_greedy_output_is_the_same_with_and_without_the_draft_model(http):
    for prompt in COPY_PROMPTS[:2] + OPEN_PROMPTS[:1]:
        same_cache(http, prompt)
        with_drafts = chat(http, prompt, max_tokens=MAX_TOKENS)
        without = chat(http, prompt, max_tokens=MAX_TOKENS, speculative=False)
        assert text_of(with_drafts) == text_of(without), prompt
        assert with_drafts["usage"]["completion_tokens"] == without["usage"]["completion_tokens"]
        assert with_drafts["choices"][0]["finish_reason"] == without["choices"][0]["finish_reason"]


def test_drafts_are_made_accepted_and_counted_and_false_opts_out(http, server):
    before = drafted_and_accepted(http)
    chat(http, COPY_PROMPTS[0], max_tokens=MAX_TOKENS)
    after = drafted_and_accepted(http)
    drafted, accepted = after[0] - before[0], after[1] - before[1]
    assert drafted > 0 and 0 < accepted <= drafted
    assert accepted >= 0.5 * drafted, (drafted, accepted)  # the draft is the same model, quantized
    assert " drafted=" in server.log_path.read_text()
    chat(http, COPY_PROMPTS[0], max_tokens=MAX_TOKENS, speculative=False)
    assert drafted_and_accepted(http) == after


def test_streamed_steps_carry_several_tokens_and_the_same_text(server, http):
    same_cache(http, COPY_PROMPTS[0])
    with server.openai(timeout=900) as client:
        stream = client.chat.completions.create(
            model=server.model, messages=[{"role": "user", "content": COPY_PROMPTS[0]}], temperature=0,
            max_tokens=MAX_TOKENS, stream=True, stream_options={"include_usage": True})
        chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == text_of(chat(http, COPY_PROMPTS[0], max_tokens=MAX_TOKENS, speculative=False))
    assert len(pieces) < chunks[-1].usage.completion_tokens  # some steps delivered more than one token


@pytest.mark.parametrize("max_tokens", [1, 2, 7])
def test_max_tokens_is_exact(http, max_tokens):
    same_cache(http, COPY_PROMPTS[1])
    answer = chat(http, COPY_PROMPTS[1], max_tokens=max_tokens)
    assert answer["usage"]["completion_tokens"] == max_tokens
    assert answer["choices"][0]["finish_reason"] == "length"
    assert text_of(answer) == text_of(chat(http, COPY_PROMPTS[1], max_tokens=max_tokens, speculative=False))


def test_stop_strings_cut_exactly(http):
    same_cache(http, COPY_PROMPTS[1])
    full = text_of(chat(http, COPY_PROMPTS[1], max_tokens=MAX_TOKENS, speculative=False))
    assert len(full) > 60
    for stop in (full[len(full) // 3:][:5], full[-15:-9]):  # cut inside steps
        answer = chat(http, COPY_PROMPTS[1], max_tokens=MAX_TOKENS, stop=[stop])
        assert text_of(answer) == full[:full.index(stop)]
        assert answer["choices"][0]["finish_reason"] == "stop"


def _serve(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "serve.cli", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_a_draft_with_another_vocabulary_is_refused_in_one_line():
    """The Mistral-marked copy renames token 7 (`<gh_stars>` -> `[TOOL_CALLS]`): llama.cpp's own check
    (common_speculative_are_compatible) compares every token's text, and so does quantserve."""
    done = _serve("up", "--port", str(free_port()), "--model", str(f16_gguf()), "--draft-model", str(mistral_marked_gguf()),
                  "--parallel", "1", "--ctx", "512")
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: the draft model {mistral_marked_gguf().name} cannot draft for {f16_gguf().name}: "
                      "token 7 is '[TOOL_CALLS]' in the draft, '<gh_stars>' in the target; a draft must share the "
                      "target's tokenizer (a smaller or more quantized model of the same family)"], done.stderr
    assert "Traceback" not in done.stderr


def test_serve_probe_names_the_draft_model():
    done = _serve("probe", "--model", str(f16_gguf()), "--draft-model", str(embedded_model_path()))
    assert done.returncode == 0, done.stderr
    assert f"speculative draft (draft model {embedded_model_path()})" in done.stdout
    assert "chosen because --draft-model names a draft model" in done.stdout


def _run_backend(speculative: str, prompts: list[str], check_caches: bool = False) -> dict[str, str]:
    """Two sequences through the real backend and scheduler; the answers by request id. With
    `check_caches`, after every step each sequence's KV cells end where its token list does, in the
    model's context and in the draft's (rejected drafts leave nothing behind in either)."""
    settings = BackendSettings(model_path=f16_gguf(), context_length=1024, num_parallel=2, num_threads=2,
                               speculative=speculative, draft_model_path=embedded_model_path(), draft_always=True)
    backend = LlamaCppBackend(settings)
    caps = backend.capabilities
    scheduler = Scheduler(num_parallel=2, max_waiting=4, max_batch_tokens=caps.max_batch_tokens,
                          max_prefill_tokens_while_decoding=caps.max_prefill_tokens_while_decoding,
                          admit=backend.admit, max_draft_tokens_per_step=caps.max_draft_tokens_per_step)
    outputs = []
    try:
        for i, prompt in enumerate(prompts):
            text = backend.render_chat([{"role": "user", "content": prompt}])
            request = Request(f"r{i}", "m", text, backend.tokenize(text), SamplingParams(max_tokens=24, temperature=0))
            scheduler.add(Sequence(request, deliver=outputs.append))
        while scheduler.has_work:
            batch = scheduler.schedule()
            scheduler.postprocess(batch, backend.step(batch))
            draft = backend._draft_model
            for slot in backend._slots if check_caches else ():
                assert ll.llama_memory_seq_pos_max(backend._memory, slot.seq_id) + 1 == len(slot.cached_tokens)
                cached = draft._cached[slot.seq_id]
                assert ll.llama_memory_seq_pos_max(draft._memory, slot.seq_id) + 1 == len(cached)
    finally:
        backend.close()
    if check_caches:
        assert sum(output.num_accepted_tokens for output in outputs) > 0
    answers: dict[str, str] = {}
    for output in outputs:
        answers[output.request_id] = answers.get(output.request_id, "") + output.text
    return answers


def test_two_sequences_draft_together_and_both_caches_hold_exactly_their_tokens():
    prompts = [COPY_PROMPTS[0], OPEN_PROMPTS[1]]
    assert _run_backend("draft", prompts, check_caches=True) == _run_backend("off", prompts)
