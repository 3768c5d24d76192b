"""Turning a reasoning model's thinking off prevents it, not just hides it: OpenAI's
chat_template_kwargs.enable_thinking and reasoning_effort "none", Ollama's think false and Anthropic's thinking
disabled reach the chat template (rendered by the real Jinja renderer, backends/chat_template.py) as
enable_thinking=False, as Qwen3's template reads it; a template that opens the <think> block in the prompt
(DeepSeek-R1 distills) gets it closed; a template that can do neither still thinks, and its thinking is left
out of the answer. The engine is a Fake replaying recorded outputs (the 135M test model does not think)."""
from __future__ import annotations

import pytest

from backends.chat_template import ChatTemplate
from tests.unit.test_generation import MODEL, FakeEngine, client_for, ndjson, sse
from serve.sequence import FinishReason, StepOutput

# The end of Qwen3's chat template, as the Hub ships it: thinking off writes an empty block itself.
QWEN3_TEMPLATE = (
    "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}")
# DeepSeek-R1-Distill's: the prompt opens the block; the template knows no enable_thinking.
R1_TEMPLATE = ("{% for message in messages %}<｜{{ message.role }}｜>{{ message.content }}{% endfor %}"
               "{% if add_generation_prompt %}<｜Assistant｜><think>\n{% endif %}")
# A template that neither reads enable_thinking nor opens the block.
PLAIN_TEMPLATE = "{% for message in messages %}{{ message.role }}: {{ message.content }}\n{% endfor %}assistant:"
# gpt-oss reads a reasoning level.
EFFORT_TEMPLATE = "Reasoning: {{ reasoning_effort | default('medium') }}\n{{ messages[-1].content }}"

QWEN3_ANSWER = [StepOutput("r", "Paris.", 2, FinishReason.STOP)]
THOUGHT = [StepOutput("r", "<think>\nLet me see.\n</think>\n\n", 6), StepOutput("r", "Paris.", 2, FinishReason.STOP)]
QUESTION = [{"role": "user", "content": "Capital of France?"}]


class FakeTemplateEngine(FakeEngine):
    """A Fake engine with a real chat template: what it renders is what the model would read."""

    def __init__(self, template: str, outputs: list, reasoning_format: str | None = "think_tags"):
        super().__init__(outputs, reasoning_format=reasoning_format)
        self.chat_template = template
        self._template = ChatTemplate(template, "", "<|im_end|>")

    def render_chat(self, messages, tools=None, **template_kwargs) -> str:
        self.template_kwargs = template_kwargs
        return self._template.render(messages, tools=tools, **template_kwargs)

    @property
    def prompt(self) -> str:
        return self.requests[-1].prompt


def chat(engine: FakeTemplateEngine, **fields) -> dict:
    response = client_for(engine).post("/v1/chat/completions", json={"model": MODEL, "messages": QUESTION, **fields})
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]


def test_enable_thinking_false_reaches_a_qwen3_template():
    engine = FakeTemplateEngine(QWEN3_TEMPLATE, QWEN3_ANSWER)
    message = chat(engine, chat_template_kwargs={"enable_thinking": False})
    assert engine.template_kwargs == {"enable_thinking": False}
    assert engine.prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert message["content"] == "Paris." and message.get("reasoning_content") is None


def test_by_default_the_template_decides():
    engine = FakeTemplateEngine(QWEN3_TEMPLATE, THOUGHT)
    message = chat(engine)
    assert engine.template_kwargs == {} and engine.prompt.endswith("<|im_start|>assistant\n")
    assert (message["reasoning_content"], message["content"]) == ("Let me see.", "Paris.")


def test_reasoning_effort_none_turns_thinking_off():
    engine = FakeTemplateEngine(QWEN3_TEMPLATE, QWEN3_ANSWER)
    chat(engine, reasoning_effort="none")
    assert engine.prompt.endswith("<think>\n\n</think>\n\n")


def test_a_block_the_template_opens_is_closed_when_thinking_is_off():
    engine = FakeTemplateEngine(R1_TEMPLATE, QWEN3_ANSWER, reasoning_format=None)
    message = chat(engine, chat_template_kwargs={"enable_thinking": False})
    assert engine.prompt.endswith("<｜Assistant｜><think>\n</think>\n\n")
    assert message["content"] == "Paris." and message.get("reasoning_content") is None


def test_a_r1_template_thinks_by_default_from_inside_the_block():
    engine = FakeTemplateEngine(R1_TEMPLATE, [StepOutput("r", "Hm.\n</think>\n\nParis.", 5, FinishReason.STOP)],
                                reasoning_format=None)
    assert (chat(engine)["reasoning_content"], chat(engine)["content"]) == ("Hm.", "Paris.")


@pytest.mark.parametrize("stream", [False, True])
def test_thinking_a_template_cannot_turn_off_is_left_out_of_the_answer(stream):
    engine = FakeTemplateEngine(PLAIN_TEMPLATE, THOUGHT)
    body = {"model": MODEL, "messages": QUESTION, "chat_template_kwargs": {"enable_thinking": False}, "stream": stream}
    response = client_for(engine).post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    if stream:
        chunks = [chunk for chunk in sse(response) if isinstance(chunk, dict) and chunk["choices"]]
        deltas = [chunk["choices"][0]["delta"] for chunk in chunks]
        assert "".join(d.get("content") or "" for d in deltas) == "Paris."
        assert not any(d.get("reasoning_content") or d.get("reasoning") for d in deltas)
    else:
        message = response.json()["choices"][0]["message"]
        assert message["content"] == "Paris." and message.get("reasoning_content") is None


def test_other_template_kwargs_reach_the_template():
    engine = FakeTemplateEngine(EFFORT_TEMPLATE, QWEN3_ANSWER, reasoning_format=None)
    chat(engine, chat_template_kwargs={"reasoning_effort": "high"})
    assert engine.prompt.startswith("Reasoning: high\n")
    chat(engine, reasoning_effort="low")
    assert engine.prompt.startswith("Reasoning: low\n")


@pytest.mark.parametrize("fields, param, message", [
    ({"chat_template_kwargs": {"enable_thinking": "no"}}, "chat_template_kwargs.enable_thinking",
     "chat_template_kwargs.enable_thinking must be true or false"),
    ({"chat_template_kwargs": {"messages": []}}, "chat_template_kwargs", "chat_template_kwargs may not set messages"),
    ({"reasoning_effort": "low"}, "reasoning_effort", "reasoning_effort 'low': this model's chat template has no"),
    ({"reasoning_effort": "none", "chat_template_kwargs": {"enable_thinking": True}}, "reasoning_effort",
     'reasoning_effort "none" turns thinking off'),
])
def test_a_thinking_choice_that_cannot_be_honoured_is_a_400_naming_it(fields, param, message):
    engine = FakeTemplateEngine(QWEN3_TEMPLATE, QWEN3_ANSWER)
    response = client_for(engine).post("/v1/chat/completions", json={"model": MODEL, "messages": QUESTION, **fields})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["message"].startswith(message), error


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate"])
def test_ollama_think_false_reaches_the_template(path):
    engine = FakeTemplateEngine(QWEN3_TEMPLATE, QWEN3_ANSWER)
    body = {"model": MODEL, "think": False, "stream": False,
            **({"messages": QUESTION} if path == "/api/chat" else {"prompt": QUESTION[0]["content"]})}
    reply = client_for(engine).post(path, json=body).json()
    assert engine.template_kwargs == {"enable_thinking": False}
    assert engine.prompt.endswith("<think>\n\n</think>\n\n")
    assert "thinking" not in reply.get("message", reply)


def test_ollama_think_false_on_a_template_that_cannot_hides_the_thinking():
    engine = FakeTemplateEngine(PLAIN_TEMPLATE, THOUGHT)
    lines = ndjson(client_for(engine).post("/api/chat", json={"model": MODEL, "messages": QUESTION, "think": False}))
    assert "".join(line["message"]["content"] for line in lines) == "Paris."
    assert not any(line["message"].get("thinking") for line in lines)


def test_anthropic_thinking_disabled_reaches_the_template():
    engine = FakeTemplateEngine(QWEN3_TEMPLATE, QWEN3_ANSWER)
    body = {"model": MODEL, "max_tokens": 16, "messages": QUESTION, "thinking": {"type": "disabled"}}
    response = client_for(engine).post("/v1/messages", json=body)
    assert response.status_code == 200, response.text
    assert engine.template_kwargs == {"enable_thinking": False} and engine.prompt.endswith("</think>\n\n")
    assert [block["type"] for block in response.json()["content"]] == ["text"]


def test_a_completion_is_never_split():
    engine = FakeTemplateEngine(QWEN3_TEMPLATE, THOUGHT)
    response = client_for(engine).post("/v1/completions", json={"model": MODEL, "prompt": "hi"})
    assert response.json()["choices"][0]["text"] == "<think>\nLet me see.\n</think>\n\nParis."
