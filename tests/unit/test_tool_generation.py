"""Tool calls through the real app and generation core over a fake engine whose "model" writes recorded
hermes markup: the OpenAI body and stream, Ollama's shape, the grammar handed to the backend (forced from
the first token, lazy for auto only where the backend can start one), the prompt the template got."""
from __future__ import annotations

import json
from dataclasses import dataclass

from serve.sequence import FinishReason, StepOutput
from tests.unit.test_generation import CONTEXT_LENGTH, FakeEngine, client_for, ndjson, sse

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
QUESTION = [{"role": "user", "content": "weather?"}]
# The model's output, as the backend hands it over: markers cut between outputs.
CALL_OUTPUTS = [StepOutput("r", "Sure.\n<tool_", 1), StepOutput("r", 'call>\n{"name": "get_weather", "argu', 1),
                StepOutput("r", 'ments": {"city": "Pa', 1), StepOutput("r", 'ris"}}\n</tool_call>', 1, FinishReason.STOP)]


@dataclass(frozen=True)
class ToolCapabilities:
    context_length: int = CONTEXT_LENGTH
    can_start_grammar_on_trigger: bool = True
    can_start_tagged_grammar: bool = False


class FakeToolEngine(FakeEngine):
    """A model whose chat template knows no tools (the generic format), like the embedded SmolLM2."""

    chat_template = "{% for m in messages %}{{ m.content }}{% endfor %}"
    tool_format = None

    def __init__(self, outputs=CALL_OUTPUTS, *, can_start_lazily: bool = True, can_start_tagged: bool = False):
        super().__init__(outputs)
        self.capabilities = ToolCapabilities(can_start_grammar_on_trigger=can_start_lazily,
                                             can_start_tagged_grammar=can_start_tagged)
        self.rendered: list[tuple[list, list | None]] = []

    def render_chat(self, messages, tools=None, **template_kwargs) -> str:
        self.rendered.append((messages, tools))
        return super().render_chat(messages, **template_kwargs)


def _post(engine, body):
    return client_for(engine).post("/v1/chat/completions", json={"messages": QUESTION, "tools": [WEATHER], **body})


def test_collected_calls_and_the_grammar_of_a_forced_choice():
    engine = FakeToolEngine()
    body = _post(engine, {"tool_choice": "required", "parallel_tool_calls": False}).json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] == "Sure."
    [call] = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    constraint = engine.requests[0].params.constraint
    assert not constraint.is_lazy and constraint.gbnf.startswith("root ::= call\n")
    messages, tools = engine.rendered[0]
    assert tools is None and "get_weather" in messages[0]["content"] and messages[0]["role"] == "system"


def test_auto_is_lazy_where_the_backend_can_start_a_grammar_and_free_where_not():
    engine = FakeToolEngine()
    _post(engine, {})
    assert engine.requests[0].params.constraint.trigger_patterns == ("<tool_call>",)
    engine = FakeToolEngine(can_start_lazily=False)
    assert _post(engine, {}).json()["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert engine.requests[0].params.constraint is None
    engine = FakeToolEngine(can_start_lazily=False, can_start_tagged=True)  # vLLM: the generic format has a tag
    _post(engine, {})
    assert '"triggers": ["<tool_call>"]' in engine.requests[0].params.constraint.structural_tag


def test_none_shows_no_tools_and_parses_nothing():
    engine = FakeToolEngine()
    message = _post(engine, {"tool_choice": "none"}).json()["choices"][0]["message"]
    assert message["tool_calls"] is None and "<tool_call>" in message["content"]
    assert engine.requests[0].params.constraint is None and "get_weather" not in engine.rendered[0][0][0]["content"]


def test_streamed_name_first_then_argument_fragments():
    chunks = sse(_post(FakeToolEngine(), {"stream": True}))
    assert chunks[-1] == "[DONE]"
    deltas = [c["choices"][0]["delta"] for c in chunks[:-1]]
    assert deltas[1] == {"content": "Sure."}
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert calls[0]["function"] == {"name": "get_weather", "arguments": ""} and calls[0]["id"].startswith("call_")
    assert all("name" not in c["function"] and "id" not in c for c in calls[1:])
    assert json.loads("".join(c["function"]["arguments"] for c in calls)) == {"city": "Paris"}
    assert len(calls) >= 3  # fragments as they were generated, not one chunk at the end
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"


def test_ollama_gets_whole_calls_with_object_arguments():
    body = {"model": "fake-model", "messages": QUESTION, "tools": [WEATHER]}
    reply = client_for(FakeToolEngine()).post("/api/chat", json={**body, "stream": False}).json()
    assert reply["message"]["tool_calls"] == [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]
    assert reply["done_reason"] == "stop" and reply["message"]["content"] == "Sure."
    lines = ndjson(client_for(FakeToolEngine()).post("/api/chat", json=body))
    [with_call] = [line for line in lines if line["message"].get("tool_calls")]
    assert with_call["message"]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"} and not with_call["done"]


def test_history_calls_and_results_reach_the_template():
    engine = FakeToolEngine([StepOutput("r", "It is sunny.", 1, FinishReason.STOP)])
    history = [*QUESTION, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    body = _post(engine, {"messages": history}).json()
    assert body["choices"][0]["message"]["content"] == "It is sunny." and body["choices"][0]["finish_reason"] == "stop"
    messages = engine.rendered[0][0]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert '{"name": "get_weather", "arguments": {"city": "Paris"}}' in messages[2]["content"]
    assert messages[3]["content"] == "<tool_response>\nsunny\n</tool_response>"


def test_a_bad_schema_is_refused_even_where_no_grammar_is_used():
    bad = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "a": {"type": "strin"}}}}}
    for choice, can_start_lazily in (("auto", False), ("none", True)):
        response = _post(FakeToolEngine(can_start_lazily=can_start_lazily), {"tools": [bad], "tool_choice": choice})
        assert response.status_code == 400 and response.json()["error"]["param"] == "tools[0].function.parameters"
