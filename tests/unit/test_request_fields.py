"""Nothing a request asks for is silently ignored: every field of every request model of the OpenAI
(chat, completions) and Ollama (chat, generate, options) dialects is implemented (named here with a test
that covers it), accepted because it changes no answer, or refused with a 400 naming it when given a value
that would change the answer; and an unknown key is a 400 naming it. Through the real app over a Fake pool.
A field added to a model without being sorted here fails the first test."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from serve.api.ollama.embed_protocol import EmbeddingsRequest as OllamaEmbeddings, EmbedRequest as OllamaEmbed
from serve.api.ollama.protocol import ChatRequest as OllamaChat, GenerateRequest as OllamaGenerate, Options
from serve.api.openai.embedding_protocol import EmbeddingRequest
from serve.api.openai.protocol import ChatCompletionRequest, CompletionRequest
from serve.api.rerank.protocol import RerankRequest
from tests.unit.test_generation import MODEL, FakeEngine, client_for

ROOT = Path(__file__).resolve().parents[2]
OPENAI_API, OLLAMA_API = "tests/integration/test_openai_api.py", "tests/integration/test_ollama_api.py"
STRUCTURED, LOGPROBS = "tests/integration/test_structured_output.py", "tests/integration/test_logprobs.py"
TOOLS, OLLAMA_UNIT = "tests/integration/test_tools.py", "tests/unit/test_ollama_protocol.py"
SPECULATIVE = "tests/integration/test_speculative.py"
SAMPLING = f"{OPENAI_API}::test_sampling_parameters_are_accepted"
OLLAMA_OPTIONS = f"{OLLAMA_API}::test_options_reach_the_sampler"

# OpenAI: implemented, with the test that covers it.
OPENAI_SHARED = {
    "model": "tests/integration/test_bad_input.py::test_unknown_model_is_404_naming_the_available_ones",
    "max_tokens": f"{OPENAI_API}::test_max_tokens_ends_with_length",
    "temperature": f"{OPENAI_API}::test_greedy_is_deterministic", "top_p": SAMPLING, "top_k": SAMPLING,
    "min_p": SAMPLING, "presence_penalty": SAMPLING, "frequency_penalty": SAMPLING, "repeat_penalty": SAMPLING,
    "logit_bias": f"{OPENAI_API}::test_max_tokens_ends_with_length",
    "stop": f"{OPENAI_API}::test_stop_list_cuts_at_the_earliest_match",
    "seed": f"{OPENAI_API}::test_same_seed_gives_same_sampled_output",
    "stream": f"{OPENAI_API}::test_chat_stream_sends_role_deltas_finish_usage_done",
    "stream_options": f"{OPENAI_API}::test_stream_without_include_usage_has_no_usage",
    "response_format": f"{STRUCTURED}::test_json_object",
    "json_schema": f"{STRUCTURED}::test_completions_with_json_schema_and_grammar",
    "grammar": f"{STRUCTURED}::test_completions_with_json_schema_and_grammar",
    "speculative": f"{SPECULATIVE}::test_speculative_false_drafts_nothing",
}
OPENAI_CHAT = {
    **OPENAI_SHARED, "messages": f"{OPENAI_API}::test_multi_turn_and_text_parts",
    "max_completion_tokens": "tests/unit/test_api_errors.py::test_protocol_normalizes_content_stop_and_roles",
    "logprobs": f"{LOGPROBS}::test_chat_logprobs_follow_the_greedy_choice",
    "top_logprobs": f"{LOGPROBS}::test_chat_logprobs_follow_the_greedy_choice",
    "tools": f"{TOOLS}::test_required_returns_one_valid_call",
    "tool_choice": f"{TOOLS}::test_named_choice_calls_that_tool",
    "parallel_tool_calls": f"{TOOLS}::test_parallel_calls_each_valid_with_their_own_ids",
    "chat_template_kwargs": "tests/unit/test_thinking.py::test_enable_thinking_false_reaches_a_qwen3_template",
    "reasoning_effort": "tests/unit/test_thinking.py::test_reasoning_effort_none_turns_thinking_off",
}
OPENAI_COMPLETIONS = {
    **OPENAI_SHARED, "prompt": f"{OPENAI_API}::test_completion_structure",
    "echo": f"{LOGPROBS}::test_completions_echo_scores_the_prompt_like_lm_eval",
    "logprobs": f"{LOGPROBS}::test_completions_echo_scores_the_prompt_like_lm_eval",
    "response_format": f"{STRUCTURED}::test_completions_with_response_format",
}
# Accepted because they change no answer (identifiers for abuse tracking and cache routing).
OPENAI_NO_EFFECT = {"user": "u-1", "safety_identifier": "s-1", "prompt_cache_key": "k-1",
                    "prompt_cache_retention": "24h"}
# Refused unless at their default: a value that would change the answer.
OPENAI_REFUSED = {
    "n": 2, "store": True, "metadata": {"k": "v"}, "service_tier": "flex",
    "audio": {"voice": "alloy", "format": "wav"}, "modalities": ["text", "audio"],
    "prediction": {"type": "content", "content": "x"}, "web_search_options": {},
    "functions": [{"name": "f", "parameters": {}}], "function_call": "auto", "reasoning_effort": "low",
    "verbosity": "low", "best_of": 2, "suffix": "end",
}
# What clients send at the default, accepted.
OPENAI_DEFAULTS = {"n": 1, "store": False, "metadata": {}, "service_tier": "auto", "modalities": ["text"],
                   "best_of": 1, "suffix": ""}

OLLAMA_SHARED = {
    "model": f"{OLLAMA_API}::test_errors_have_ollamas_shape_and_the_server_keeps_serving",
    "stream": f"{OLLAMA_API}::test_chat_streams_the_same_answer", "options": OLLAMA_OPTIONS,
    "format": f"{STRUCTURED}::test_ollama_format_json_and_schema",
    "keep_alive": f"{OLLAMA_API}::test_pull_from_the_hub_then_load_unload_and_reload",
    "think": "tests/unit/test_ollama_thinking.py::test_a_reasoning_models_thinking_is_its_own_field",
}
OLLAMA_CHAT = {**OLLAMA_SHARED, "messages": f"{OLLAMA_API}::test_chat_answers_in_one_object",
               "tools": f"{TOOLS}::test_ollama_tool_calls_in_ollama_shape"}
OLLAMA_GENERATE = {**OLLAMA_SHARED, "prompt": f"{OLLAMA_API}::test_generate_stream_and_not",
                   **dict.fromkeys(("system", "template", "raw"),
                                   f"{OLLAMA_API}::test_generate_raw_system_and_template")}
OLLAMA_REFUSED = {"logprobs": True, "top_logprobs": 3}
OLLAMA_GENERATE_REFUSED = {**OLLAMA_REFUSED, "suffix": "end", "context": [1, 2], "images": ["aGVsbG8="]}
OPTIONS_IMPLEMENTED = {
    **dict.fromkeys(("num_predict", "temperature", "top_k", "top_p", "min_p", "seed", "stop", "repeat_penalty",
                     "presence_penalty", "frequency_penalty"), f"{OLLAMA_UNIT}::test_given_options_map_one_to_one"),
    "num_ctx": f"{OLLAMA_API}::test_errors_have_ollamas_shape_and_the_server_keeps_serving",
    "speculative": f"{SPECULATIVE}::test_ollama_option_speculative_false_drafts_nothing",
}
OPTIONS_REFUSED = {"mirostat": 2, "typical_p": 0.5, "repeat_last_n": 128, "tfs_z": 0.5}
# Ollama's runner knobs (the server's plan decides these) and mirostat's own settings (mirostat is refused).
OPTIONS_NO_EFFECT = {"num_keep": 4, "penalize_newline": False, "numa": False, "num_batch": 512, "num_gpu": 99,
                     "main_gpu": 0, "low_vram": False, "f16_kv": True, "logits_all": False, "vocab_only": False,
                     "use_mmap": True, "use_mlock": False, "embedding_only": False, "num_thread": 2,
                     "mirostat_tau": 5.0, "mirostat_eta": 0.1}

EMBEDDINGS, RERANK = "tests/integration/test_embeddings.py", "tests/integration/test_rerank.py"
OPENAI_EMBEDDINGS = {
    "model": f"{EMBEDDINGS}::test_an_unknown_model_is_a_404",
    "input": f"{EMBEDDINGS}::test_a_batch_equals_its_inputs_one_by_one",
    "encoding_format": f"{EMBEDDINGS}::test_base64_round_trips_to_the_float_vectors",
    "dimensions": f"{RERANK}::test_an_embedding_only_model_serves_embeddings_and_matryoshka_dimensions",
}
RERANK_FIELDS = {
    "model": f"{RERANK}::test_rerank_on_a_chat_or_embedding_model_is_a_400_saying_what_to_use",
    **dict.fromkeys(("query", "documents"), f"{RERANK}::test_results_are_sorted_by_score_with_documents_and_usage"),
    **dict.fromkeys(("top_n", "return_documents"), f"{RERANK}::test_top_n_and_return_documents"),
}
OLLAMA_EMBED_SHARED = {
    "model": f"{EMBEDDINGS}::test_an_unknown_model_is_a_404",
    "keep_alive": f"{EMBEDDINGS}::test_ollama_embed_without_input_loads_the_model",
    "options": f"{EMBEDDINGS}::test_ollama_embed_truncates_by_default_and_refuses_when_asked_not_to",
}
OLLAMA_EMBED = {**OLLAMA_EMBED_SHARED, "input": f"{EMBEDDINGS}::test_ollama_embed_matches_openais_vectors",
                "truncate": f"{EMBEDDINGS}::test_ollama_embed_truncates_by_default_and_refuses_when_asked_not_to",
                "dimensions": f"{RERANK}::test_an_embedding_only_model_serves_embeddings_and_matryoshka_dimensions"}
OLLAMA_EMBEDDINGS = {**OLLAMA_EMBED_SHARED,
                     "prompt": f"{EMBEDDINGS}::test_ollama_embeddings_answers_the_models_own_vector"}

CASES = [  # (model, implemented, accepted without effect, refused)
    (ChatCompletionRequest, OPENAI_CHAT, OPENAI_NO_EFFECT, OPENAI_REFUSED),
    (CompletionRequest, OPENAI_COMPLETIONS, {"user": "u-1"}, OPENAI_REFUSED),
    (OllamaChat, OLLAMA_CHAT, {}, OLLAMA_REFUSED),
    (OllamaGenerate, OLLAMA_GENERATE, {}, OLLAMA_GENERATE_REFUSED),
    (Options, OPTIONS_IMPLEMENTED, OPTIONS_NO_EFFECT, OPTIONS_REFUSED),
    (EmbeddingRequest, OPENAI_EMBEDDINGS, {"user": "u-1"}, {}),
    (RerankRequest, RERANK_FIELDS, {}, {}),
    (OllamaEmbed, OLLAMA_EMBED, {}, {}),
    (OllamaEmbeddings, OLLAMA_EMBEDDINGS, {}, {}),
]
# The embedding and rerank routes refuse unknown keys before they look for a model.
POOLING_BASES = {"/v1/embeddings": {"input": "hello"}, "/v1/rerank": {"query": "q", "documents": ["d"]},
                 "/rerank": {"query": "q", "documents": ["d"]},
                 "/api/embed": {"model": MODEL, "input": "hello"}, "/api/embeddings": {"model": MODEL, "prompt": "hi"}}
BASES = {"/v1/chat/completions": {"messages": [{"role": "user", "content": "hello"}]},
         "/v1/completions": {"prompt": "hello"},
         "/api/chat": {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "stream": False},
         "/api/generate": {"model": MODEL, "prompt": "hello", "stream": False}}


@pytest.fixture(scope="module")
def client():
    return client_for(FakeEngine())


def _test_names(path: str) -> set[str]:
    tree = ast.parse((ROOT / path).read_text())
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}


@pytest.mark.parametrize("model, implemented, no_effect, refused", CASES,
                         ids=lambda case: getattr(case, "__name__", ""))
def test_every_field_is_implemented_accepted_or_refused(model, implemented, no_effect, refused):
    fields = set(model.model_fields)
    sorted_here = set(implemented) | set(no_effect) | {name for name in refused if name in fields}
    assert fields == sorted_here, f"not sorted: {fields - sorted_here}; gone: {sorted_here - fields}"
    for field, test in implemented.items():
        path, name = test.split("::")
        assert name in _test_names(path), f"{model.__name__}.{field}: {test} does not exist"


def _openai_fields(path: str) -> set[str]:
    return set((ChatCompletionRequest if path == "/v1/chat/completions" else CompletionRequest).model_fields)


def _refusals(path: str) -> list[tuple[str, object]]:
    if path.startswith("/v1/"):
        return [(name, value) for name, value in OPENAI_REFUSED.items() if name in _openai_fields(path)]
    return list((OLLAMA_REFUSED if path == "/api/chat" else OLLAMA_GENERATE_REFUSED).items())


@pytest.mark.parametrize("path, field, value", [(path, *refusal) for path in BASES for refusal in _refusals(path)])
def test_a_field_that_would_change_the_answer_is_a_400_naming_it(client, path, field, value):
    response = client.post(path, json={**BASES[path], field: value})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    message = error if path.startswith("/api/") else error["message"]
    assert message.startswith(f"{field}"), message
    if not path.startswith("/api/"):
        assert error["param"] == field and error["type"] == "invalid_request_error"


@pytest.mark.parametrize("path", list(BASES))
def test_an_unknown_field_is_a_400_naming_it(client, path):
    response = client.post(path, json={**BASES[path], "frobnicate": 1, "best_guess": None})
    assert response.status_code == 400
    error = response.json()["error"]
    message = error if path.startswith("/api/") else error["message"]
    assert message.startswith("unrecognized request field(s): best_guess, frobnicate;"), message


@pytest.mark.parametrize("path", list(POOLING_BASES))
def test_an_unknown_field_of_an_embedding_or_rerank_request_is_a_400_naming_it(client, path):
    response = client.post(path, json={**POOLING_BASES[path], "frobnicate": 1, "best_guess": None})
    assert response.status_code == 400
    error = response.json()["error"]
    message = error if path.startswith("/api/") else error["message"]
    assert message.startswith("unrecognized request field(s): best_guess, frobnicate;"), message


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_openai_fields_at_their_default_or_without_effect_are_accepted(client, path):
    known = _openai_fields(path)
    nulls = {name: None for name in OPENAI_REFUSED if name in known}
    given = {name: value for name, value in {**OPENAI_NO_EFFECT, **OPENAI_DEFAULTS}.items() if name in known}
    response = client.post(path, json={**BASES[path], **nulls, **given})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("option, value", [*OPTIONS_REFUSED.items(), ("some_future_option", 1)])
def test_an_ollama_option_that_would_change_the_answer_is_a_400_naming_it(client, option, value):
    response = client.post("/api/generate", json={**BASES["/api/generate"], "options": {option: value}})
    assert response.status_code == 400 and option in response.json()["error"], response.text


def test_ollama_runner_options_are_accepted(client):
    response = client.post("/api/generate", json={**BASES["/api/generate"], "options": OPTIONS_NO_EFFECT})
    assert response.status_code == 200, response.text
