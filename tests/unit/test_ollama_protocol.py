"""Ollama's request rules without a model: keep_alive, model names, strict fields and options, the Go
prompt-template subset, and how options become our SamplingParams."""
from __future__ import annotations

import re

import pytest

from serve.api.errors import validate
from serve.api.ollama.models import parameter_size, timestamp
from serve.api.ollama.protocol import (FOREVER, ChatRequest, GenerateRequest, ModelRequest, Options,
                                       normalize_model_name, ollama_model_name, parse_keep_alive)
from serve.api.ollama.request import sampling_params
from serve.api.ollama.template import TemplateError, render_prompt_template
from serve.errors import InvalidRequestError

CHATML = ("{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}<|im_start|>user\n"
          "{{ .Prompt }}<|im_end|>\n<|im_start|>assistant\n{{ .Response }}<|im_end|>\n")


# --- keep_alive ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, seconds", [
    ("5m", 300.0), ("1h30m", 5400.0), ("10s", 10.0), ("1.5h", 5400.0), ("250ms", 0.25), ("0", 0.0), (0, 0.0),
    (300, 300.0), (2.5, 2.5), ("300", 300.0), (" 5m ", 300.0), (None, None)])
def test_keep_alive_durations_and_seconds(value, seconds):
    assert parse_keep_alive(value) == seconds


@pytest.mark.parametrize("value", [-1, -1.0, "-1", "-1m", "-5s", -300])
def test_negative_keep_alive_means_forever(value):
    assert parse_keep_alive(value) == FOREVER


@pytest.mark.parametrize("value", ["", "abc", "5 minutes", "m5", "1x", "5m3", "nan", True, [], {"m": 5}])
def test_bad_keep_alive_is_refused_with_a_hint(value):
    with pytest.raises(ValueError, match="keep_alive"):
        parse_keep_alive(value)


def test_keep_alive_field_is_parsed_or_a_400_naming_it():
    assert validate(GenerateRequest, {"model": "m", "keep_alive": "1h"}).keep_alive == 3600.0
    assert validate(ChatRequest, {"model": "m", "keep_alive": -1}).keep_alive == FOREVER
    with pytest.raises(InvalidRequestError) as caught:
        validate(ChatRequest, {"model": "m", "keep_alive": "soon"})
    assert caught.value.message.startswith("keep_alive: invalid keep_alive 'soon'")


# --- names ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("given, served", [
    ("smollm2-135m:latest", "smollm2-135m"), ("smollm2-135m", "smollm2-135m"), (" qwen2.5-0.5b-q8 ", "qwen2.5-0.5b-q8"),
    ("hf.co/org/repo:Q4_K_M", "hf://org/repo:Q4_K_M"), ("hf.co/org/repo:latest", "hf://org/repo")])
def test_names_from_ollama_clients(given, served):
    assert normalize_model_name(given) == served


@pytest.mark.parametrize("served, shown", [
    ("smollm2-135m", "smollm2-135m:latest"), ("org/repo:Q4_K_M", "org/repo:Q4_K_M"),
    ("hf://org/repo:Q8_0", "hf.co/org/repo:Q8_0"), ("org/v1.0/model", "org/v1.0/model:latest")])
def test_names_shown_to_ollama_clients_have_a_tag(served, shown):
    assert ollama_model_name(served) == shown
    assert normalize_model_name(ollama_model_name(served)) == normalize_model_name(served)


# --- requests -------------------------------------------------------------------------------------------

def _error(model_cls, data: dict) -> str:
    with pytest.raises(InvalidRequestError) as caught:
        validate(model_cls, data)
    return caught.value.message


def test_defaults_follow_ollama():
    chat = validate(ChatRequest, {"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                  "future_field": 1})
    assert chat.can_stream and chat.keep_alive is None and chat.options is None
    generate = validate(GenerateRequest, {"model": "m"})
    assert generate.prompt == "" and generate.can_stream and not generate.raw
    assert not validate(GenerateRequest, {"model": "m", "stream": False}).can_stream


def test_format_is_json_or_a_schema():
    for fmt in ("json", {"type": "object", "properties": {"age": {"type": "integer"}}}):
        assert validate(ChatRequest, {"model": "m", "format": fmt}).format == fmt
        assert validate(GenerateRequest, {"model": "m", "format": fmt}).format == fmt
    assert _error(GenerateRequest, {"model": "m", "format": "xml"}).startswith("format: format must be")
    assert validate(GenerateRequest, {"model": "m", "format": ""}).format is None


@pytest.mark.parametrize("data, fragment", [
    ({"model": "m", "images": ["aGVsbG8="]}, "images: images are not supported"),
    ({"model": "m", "suffix": "end"}, "suffix: suffix"),
    ({"model": "m", "context": [1, 2, 3]}, "context: context"),
    ({"model": "m", "think": "hard"}, "think: think must be true, false"),
    ({"model": "m", "top_logprobs": 3}, "top_logprobs: logprobs are not supported"),
    ({"model": "m", "prompt": 42}, "prompt: Input should be a valid string"),
    ({"model": "m", "stream": "yes"}, "stream: Input should be a valid boolean"),
    ({"model": "m", "options": "hot"}, "options: Input should be"),
    ({"model": ""}, "model:"),
    ({}, "model: Field required")])
def test_bad_generate_fields_name_the_field(data, fragment):
    assert fragment in _error(GenerateRequest, data)


@pytest.mark.parametrize("messages, fragment", [
    ([{"role": "user", "content": "hi", "images": ["aGVsbG8="]}], "messages.0.images: images are not supported"),
    ([{"role": "robot", "content": "hi"}], "messages.0.role"),
    ([{"role": "user", "content": ["parts"]}], "messages.0.content"),
    ("hello", "messages: Input should be a valid list")])
def test_bad_chat_messages_name_the_field(messages, fragment):
    assert fragment in _error(ChatRequest, {"model": "m", "messages": messages}).replace("[0]", ".0")


def test_chat_tools_are_checked_when_the_prompt_is_made():
    from serve.api.ollama.request import tool_request

    body = validate(ChatRequest, {"model": "m", "tools": [{"x": 1}]})
    with pytest.raises(InvalidRequestError, match=r"tools\[0\] must be"):
        tool_request(body)
    assert tool_request(validate(ChatRequest, {"model": "m", "tools": []})) is None
    weather = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    request = tool_request(validate(ChatRequest, {"model": "m", "tools": [weather]}))
    assert request.choice == "auto" and [t.name for t in request.tools] == ["get_weather"]


def test_chat_messages_become_template_messages():
    body = validate(ChatRequest, {"model": "m", "messages": [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "hi", "images": None},
        {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f", "arguments": {}}}]},
        {"role": "tool", "content": "42", "tool_name": "f"}]})
    assert [m.to_template_dict() for m in body.messages] == [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": {}}}]},
        {"role": "tool", "content": "42", "name": "f"}]


@pytest.mark.parametrize("options, fragment", [
    ({"temperature": "hot"}, "options.temperature: Input should be a valid number"),
    ({"temperature": True}, "options.temperature: Input should be a valid number"),
    ({"temperature": -0.5}, "options.temperature: Input should be greater than or equal to 0"),
    ({"num_predict": 1.5}, "options.num_predict: Input should be a valid integer"),
    ({"num_predict": "10"}, "options.num_predict: Input should be a valid integer"),
    ({"top_p": 1.5}, "options.top_p"), ({"top_k": -3}, "options.top_k"), ({"min_p": 2}, "options.min_p"),
    ({"stop": [1, 2]}, "options.stop: Input should be a string or a list of strings"),
    ({"num_ctx": 0}, "options.num_ctx"), ({"use_mmap": "no"}, "options.use_mmap: Input should be a valid boolean"),
    ({"num_thread": "4"}, "options.num_thread")])
def test_option_types_are_checked_like_ollama(options, fragment):
    assert fragment in _error(GenerateRequest, {"model": "m", "options": options})


def test_options_accept_whole_floats_single_stop_and_name_unknown_ones():
    options = validate(GenerateRequest, {"model": "m", "options": {
        "num_predict": 64.0, "stop": "\n", "top_k": 0, "seed": -1, "num_gpu": 99}}).options
    assert options.num_predict == 64 and options.stop == ["\n"] and options.top_k == 0
    assert options.unsupported() is None
    unknown = validate(GenerateRequest, {"model": "m", "options": {"some_future_option": 1, "num_gpu": 1}}).options
    assert unknown.unsupported().startswith("unknown option(s): some_future_option;")


@pytest.mark.parametrize("options, fragment", [
    ({"mirostat": 2}, "mirostat"), ({"typical_p": 0.5}, "typical_p"), ({"repeat_last_n": 128}, "repeat_last_n"),
    ({"num_predict": 0}, "num_predict must be positive")])
def test_options_we_cannot_honour_are_named(options, fragment):
    assert fragment in Options.model_validate(options).unsupported()


def test_options_at_ollama_defaults_are_fine():
    assert Options.model_validate({"mirostat": 0, "typical_p": 1.0, "repeat_last_n": 64}).unsupported() is None


def test_model_requests_take_model_or_the_deprecated_name():
    assert ModelRequest.model_validate({"model": "a"}).model_name == "a"
    assert ModelRequest.model_validate({"name": "b"}).model_name == "b"
    assert ModelRequest.model_validate({}).model_name is None


# --- options -> SamplingParams --------------------------------------------------------------------------

def test_no_options_gives_ollamas_defaults():
    params = sampling_params(Options(), num_max_tokens=100)
    assert (params.max_tokens, params.temperature, params.top_k, params.top_p, params.min_p) == (100, 0.8, 40, 0.9, 0.0)
    assert (params.repeat_penalty, params.presence_penalty, params.frequency_penalty) == (1.1, 0.0, 0.0)
    assert params.seed is None and params.stop == ()


def test_given_options_map_one_to_one():
    options = Options.model_validate({"temperature": 0, "top_k": 0, "top_p": 0.5, "min_p": 0.05, "seed": 7,
                                      "repeat_penalty": 1.0, "presence_penalty": 0.5, "frequency_penalty": -0.5,
                                      "stop": ["\n\n", "", "User:"]})
    params = sampling_params(options, num_max_tokens=8)
    assert params.is_greedy and params.top_k == 0 and params.top_p == 0.5 and params.min_p == 0.05
    assert params.seed == 7 and params.repeat_penalty == 1.0
    assert (params.presence_penalty, params.frequency_penalty) == (0.5, -0.5)
    assert params.stop == ("\n\n", "User:")  # an empty stop string would stop at once: dropped
    assert sampling_params(Options(seed=-1), 8).seed is None  # Ollama's -1: a random seed


# --- the template field ---------------------------------------------------------------------------------

def test_chatml_template_with_and_without_system():
    assert render_prompt_template(CHATML, prompt="Hi", system=None) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert render_prompt_template(CHATML, prompt="Hi", system="Be brief.") == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_trim_markers_else_branches_and_comments():
    source = ("{{/* a comment */}}{{ if .System }}S={{ .System }}{{ else if .Prompt }}P{{ else }}none{{ end }}"
              "  \n{{- .Prompt -}}  \n!")
    assert render_prompt_template(source, prompt="x", system="y") == "S=yx!"
    assert render_prompt_template(source, prompt="x", system="") == "Px!"
    assert render_prompt_template(source, prompt="", system="") == "none!"


def test_everything_after_the_response_is_the_models_to_write():
    assert render_prompt_template("[{{ .Prompt }}]{{ if .Prompt }}>{{ .Response }}<{{ end }}tail", prompt="q",
                                  system=None) == "[q]>"


@pytest.mark.parametrize("source, fragment", [
    ("{{ range .Messages }}{{ .Content }}{{ end }}", "range .Messages"), ("{{ .Tools }}", ".Tools"),
    ("{{ if .System }}open", "has no {{ end }}"), ("{{ end }}", "unexpected {{ end }}"),
    ("{{ .Prompt ", "unclosed"), ("{{ if .System }}a{{ else }}b{{ else }}c{{ end }}", "nothing may follow")])
def test_unsupported_or_broken_templates_are_named(source, fragment):
    with pytest.raises(TemplateError, match=re.escape(fragment)):
        render_prompt_template(source, prompt="p", system="s")


# --- shapes ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("num, text", [(134_515_008, "134.52M"), (8_030_261_248, "8.0B"), (7_000_000_000, "7B"),
                                       (494_032_768, "494.03M"), (2_500, "2.50K"), (12, "12")])
def test_parameter_size_like_ollama(num, text):
    assert parameter_size(num) == text


def test_timestamps_are_rfc3339_utc():
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", timestamp())
    assert timestamp(0) == "1970-01-01T00:00:00.000000Z"
