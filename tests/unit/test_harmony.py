"""gpt-oss (harmony) and Phi-4-mini tool calls, and harmony's reasoning, on recorded outputs in the models'
own formats, fed whole and cut at every chunk boundary; then through the real app over a Fake engine that
renders gpt-oss's real chat template (tests/unit/fixtures/gpt-oss-chat-template.jinja, from llama.cpp's
models/templates) and replays a recorded output."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from serve.api.harmony import HarmonySplitter
from serve.api.tools.formats import GPT_OSS, PHI4_MINI_JSON, recognise_format
from serve.api.tools.parser import ToolCallParser, parse_all
from serve.sequence import FinishReason, StepOutput
from tests.unit.test_generation import MODEL, client_for, ndjson, sse
from tests.unit.test_thinking import FakeTemplateEngine

GPT_OSS_TEMPLATE = (Path(__file__).parent / "fixtures" / "gpt-oss-chat-template.jinja").read_text()

# What gpt-oss writes after its prompt's `<|start|>assistant` (<|return|> and <|call|> end generation: no text).
ANSWER = ("<|channel|>analysis<|message|>User asks for the capital of France. Simple.<|end|>"
          "<|start|>assistant<|channel|>final<|message|>The capital of France is Paris.")
CALL_IN_CHANNEL = ("<|channel|>analysis<|message|>Need to use get_weather for Paris.<|end|>"
                   "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json"
                   '<|message|>{"city":"Paris"}')
CALL_IN_ROLE = ("<|channel|>analysis<|message|>Weather lookup.<|end|>"
                '<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Paris"}')
PREAMBLE_AND_CALL = ("<|channel|>commentary<|message|>Let me check the weather.<|end|>"
                     "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json"
                     '<|message|>{"city":"Paris"}')
BUILTIN_TOOL = ("<|channel|>analysis<|message|>Search.<|end|><|start|>assistant<|channel|>commentary "
                'to=browser.search <|constrain|>json<|message|>{"query":"x"}<|end|>'
                "<|start|>assistant<|channel|>final<|message|>Done.")
# Phi-4-mini with its own template, and as vLLM's phi4_mini_json parser reads it.
PHI4_OWN = '<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris"}}]<|/tool_call|>'
PHI4_FUNCTOOLS = ('functools[{"name": "get_weather", "arguments": {"city": "Paris"}}, '
                  '{"name": "get_time", "arguments": {"zone": "CET"}}]')


def split(text: str, cut: int | None = None, shows_reasoning: bool = True) -> tuple[str, str]:
    splitter = HarmonySplitter(shows_reasoning)
    chunks = [text] if cut is None else [text[:cut], text[cut:]]
    parts = [splitter.feed(chunk) for chunk in chunks] + [splitter.flush()]
    return "".join(r for r, _ in parts), "".join(c for _, c in parts)


def calls_of(text: str, cut: int | None = None) -> tuple[str, str, list]:
    """Split, then parse the content for calls, as the generation core does."""
    splitter, parser = HarmonySplitter(), ToolCallParser(GPT_OSS)
    chunks = [text] if cut is None else [text[:cut], text[cut:]]
    reasoning, events = "", []
    for index, chunk in enumerate(chunks + [None]):
        r, c = splitter.feed(chunk) if chunk is not None else splitter.flush()
        reasoning += r
        events += parser.feed(c) + (parser.finish() if chunk is None else [])
    return reasoning, "".join(e for e in events if isinstance(e, str)), parser.calls


@pytest.mark.parametrize("cut", range(len(ANSWER) + 1))
def test_analysis_is_reasoning_and_final_is_content_cut_anywhere(cut):
    assert split(ANSWER, cut) == ("User asks for the capital of France. Simple.", "The capital of France is Paris.")


@pytest.mark.parametrize("recorded", [CALL_IN_CHANNEL, CALL_IN_ROLE, PREAMBLE_AND_CALL])
def test_a_commentary_message_to_a_function_is_a_tool_call_cut_anywhere(recorded):
    for cut in range(len(recorded) + 1):
        reasoning, content, calls = calls_of(recorded, cut)
        assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris"})], cut
        assert "<|" not in content and "<|" not in reasoning
        assert content == ("Let me check the weather." if recorded is PREAMBLE_AND_CALL else "")


def test_messages_to_builtin_tools_are_dropped():
    assert split(BUILTIN_TOOL) == ("Search.", "Done.")


def test_output_that_is_not_harmony_is_content():
    assert split("Paris is the capital.") == ("", "Paris is the capital.")
    assert split("assistant: hi") == ("", "assistant: hi")


def test_thinking_turned_off_is_hidden():
    assert split(ANSWER, shows_reasoning=False) == ("", "The capital of France is Paris.")


@pytest.mark.parametrize("recorded", [PHI4_OWN, PHI4_FUNCTOOLS])
def test_phi4_mini_calls_in_either_spelling(recorded):
    for cut in range(len(recorded) + 1):
        parser = ToolCallParser(PHI4_MINI_JSON)
        events = parser.feed(recorded[:cut]) + parser.feed(recorded[cut:]) + parser.finish()
        assert "".join(e for e in events if isinstance(e, str)) == "", cut
        assert parser.calls[0].name == "get_weather" and json.loads(parser.calls[0].arguments) == {"city": "Paris"}
    assert [c.name for c in parse_all(PHI4_MINI_JSON, PHI4_FUNCTOOLS)[1]] == ["get_weather", "get_time"]


def test_phi4_text_that_only_mentions_the_marker_is_content():
    assert parse_all(PHI4_MINI_JSON, "Use functools to do it.") == ("Use functools to do it.", [])


def test_formats_recognised_from_real_templates():
    assert recognise_format(GPT_OSS_TEMPLATE) is GPT_OSS
    phi4 = ("{% for message in messages %}{% if message['role'] == 'system' and 'tools' in message %}"
            "{{ '<|system|>' + message['content'] + '<|tool|>' + message['tools'] + '<|/tool|><|end|>' }}{% endif %}"
            "{% endfor %}")
    assert recognise_format(phi4) is PHI4_MINI_JSON


# --- through the app -----------------------------------------------------------------------------------

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
QUESTION = [{"role": "user", "content": "Weather in Paris?"}]


def gpt_oss(recorded: str) -> FakeTemplateEngine:
    chunks = [recorded[i:i + 7] for i in range(0, len(recorded), 7)]
    outputs = [StepOutput("r", chunk, 1) for chunk in chunks[:-1]]
    outputs.append(StepOutput("r", chunks[-1], 1, FinishReason.STOP))
    return FakeTemplateEngine(GPT_OSS_TEMPLATE, outputs, reasoning_format="harmony")


def test_a_gpt_oss_call_through_the_openai_route():
    engine = gpt_oss(CALL_IN_CHANNEL)
    body = {"model": MODEL, "messages": QUESTION, "tools": [WEATHER], "reasoning_effort": "high"}
    choice = client_for(engine).post("/v1/chat/completions", json=body).json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["reasoning_content"] == "Need to use get_weather for Paris."
    (call,) = choice["message"]["tool_calls"]
    assert (call["function"]["name"], json.loads(call["function"]["arguments"])) == ("get_weather", {"city": "Paris"})
    assert "Reasoning: high" in engine.prompt and "type get_weather" in engine.prompt
    kept = engine.requests[-1].params.kept_special_tokens
    assert {"<|channel|>", "<|message|>", "<|start|>", "<|end|>", "<|constrain|>"} <= set(kept)


def test_a_gpt_oss_answer_streams_reasoning_then_content():
    chunks = [c for c in sse(client_for(gpt_oss(ANSWER)).post(
        "/v1/chat/completions", json={"model": MODEL, "messages": QUESTION, "stream": True})) if isinstance(c, dict)]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert "".join(d.get("reasoning_content") or "" for d in deltas) == "User asks for the capital of France. Simple."
    assert "".join(d.get("content") or "" for d in deltas) == "The capital of France is Paris."


def test_ollama_think_levels_reach_a_harmony_template():
    engine = gpt_oss(ANSWER)
    reply = client_for(engine).post("/api/chat", json={"model": MODEL, "messages": QUESTION, "think": "low",
                                                      "stream": False}).json()
    assert "Reasoning: low" in engine.prompt
    assert reply["message"]["thinking"] == "User asks for the capital of France. Simple."
    lines = ndjson(client_for(gpt_oss(ANSWER)).post("/api/chat", json={"model": MODEL, "messages": QUESTION,
                                                                        "think": False}))
    assert not any(line["message"].get("thinking") for line in lines)
    assert "".join(line["message"]["content"] for line in lines) == "The capital of France is Paris."


def test_phi4_reads_its_tools_from_the_system_message_and_earlier_calls_as_text():
    from serve.api.tools.render import history_tool_call, template_inputs
    from serve.api.tools.spec import make_tool, make_tool_request

    request = make_tool_request([make_tool(0, "get_weather", "Weather", WEATHER["function"]["parameters"])],
                                None, None, None)
    history = [*QUESTION, {"role": "assistant", "content": "",
                           "tool_calls": [history_tool_call("c1", "get_weather", {"city": "Paris"})]},
               {"role": "tool", "content": "21", "tool_call_id": "c1"}]
    messages, tools = template_inputs(history, PHI4_MINI_JSON, request)
    assert messages[0]["role"] == "system" and messages[0]["content"] == "You are a helpful assistant with some tools."
    assert json.loads(messages[0]["tools"])[0]["name"] == "get_weather"
    assert tools[0]["function"]["name"] == "get_weather"
    assert messages[2] == {"role": "assistant", "content": '<|tool_call|>[{"name": "get_weather", "arguments": '
                                                           '{"city": "Paris"}}]<|/tool_call|>'}
