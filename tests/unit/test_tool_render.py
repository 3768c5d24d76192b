"""Tool requests validated (each 400 says what to change), formats recognised from chat templates, and the
history and tools as a template receives them, through the real Jinja renderer."""
from __future__ import annotations

import json

import pytest

from backends.chat_template import ChatTemplate
from serve.api.tools.formats import (GENERIC, GPT_OSS, HERMES, LLAMA3_JSON, MISTRAL, PHI4_MINI_JSON, recognise_format,
                                     tool_format)
from serve.api.tools.render import history_tool_call, template_inputs, tool_call_arguments
from serve.api.tools.spec import make_tool, make_tool_request
from serve.errors import InvalidRequestError

WEATHER = make_tool(0, "get_weather", "Weather of a city",
                    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
SMOLLM2_TEMPLATE = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                    "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
                    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                    "{% endif %}")
# The tool part of Qwen 2.5's template, shortened.
HERMES_TEMPLATE = ("{% if tools %}<|im_start|>system\n# Tools\n<tools>{% for tool in tools %}\n{{ tool | tojson }}"
                   "{% endfor %}\n</tools>\nFor each call: <tool_call>{\"name\": ..., \"arguments\": ...}</tool_call>"
                   "<|im_end|>\n{% endif %}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
                   "{% for call in m.tool_calls or [] %}<tool_call>\n{{ call.function | tojson }}\n</tool_call>"
                   "{% endfor %}<|im_end|>\n{% endfor %}<|im_start|>assistant\n")


@pytest.mark.parametrize("kwargs,message", [
    (dict(tools=[], choice="required", named=None, parallel=None), "tool_choice 'required' needs at least one tool"),
    (dict(tools=[WEATHER], choice=None, named="get_time", parallel=None),
     "tool_choice names the function 'get_time', which is not in tools (offered: get_weather)"),
    (dict(tools=[WEATHER, WEATHER], choice=None, named=None, parallel=None), "get_weather is defined more than once"),
])
def test_bad_tool_requests(kwargs, message):
    with pytest.raises(InvalidRequestError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_tool_request(**kwargs)


@pytest.mark.parametrize("name,parameters,message", [
    ("get weather", None, "name must be 1 to 64 letters"),
    ("f", {"type": "array"}, "must describe an object"),
    ("f", [1], "must be a JSON schema object, got list"),
    ("f", {"type": "object", "properties": {"a": 3}}, "must map each argument name to a schema"),
])
def test_bad_tool_definitions(name, parameters, message):
    with pytest.raises(InvalidRequestError, match=message) as caught:
        make_tool(2, name, "", parameters)
    assert caught.value.param.startswith("tools[2].function")


def test_choices():
    assert make_tool_request([], None, None, None) is None
    request = make_tool_request([WEATHER], None, "get_weather", False)
    assert request.choice == "named" and request.is_forced and request.max_calls == 1
    assert make_tool_request([WEATHER], "none", None, None).is_active is False
    assert make_tool(0, "f", None, None).parameters == {"type": "object", "properties": {}}


def test_formats_recognised_from_templates():
    assert recognise_format(HERMES_TEMPLATE) is HERMES
    assert recognise_format(SMOLLM2_TEMPLATE) is GENERIC
    assert recognise_format("{{ '[AVAILABLE_TOOLS]' + tools|tojson }}[TOOL_CALLS]") is MISTRAL
    assert recognise_format("{% if tools %}<|start_header_id|>ipython<|python_tag|>{% endif %}") is LLAMA3_JSON
    assert tool_format("hermes", SMOLLM2_TEMPLATE, "m") is GENERIC  # the template cannot show the tools
    assert tool_format("gpt_oss", HERMES_TEMPLATE, "gpt-oss-20b") is GPT_OSS
    assert tool_format("phi4_mini_json", HERMES_TEMPLATE, "phi-4-mini") is PHI4_MINI_JSON


HISTORY = [{"role": "user", "content": "Weather in Paris?"},
           {"role": "assistant", "content": "", "tool_calls": [history_tool_call("call_1", "get_weather",
                                                                                 {"city": "Paris"})]},
           {"role": "tool", "content": '{"celsius": 21}', "tool_call_id": "call_1"},
           {"role": "tool", "content": '{"wind": 3}', "tool_call_id": "call_2"}]


def test_generic_format_describes_the_tools_and_writes_the_history_as_text():
    request = make_tool_request([WEATHER], "required", None, None)
    messages, tools = template_inputs(HISTORY, GENERIC, request)
    assert tools is None and [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert '"name": "get_weather"' in messages[0]["content"] and "You must call at least one tool" in messages[0]["content"]
    assert json.loads(messages[2]["content"].split("\n")[1]) == {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert messages[3]["content"].count("<tool_response>") == 2
    prompt = ChatTemplate(SMOLLM2_TEMPLATE, "", "<|im_end|>").render(messages, tools=tools)
    assert "SmolLM" not in prompt and "<tool_call>" in prompt and prompt.endswith("<|im_start|>assistant\n")


def test_a_template_that_knows_tools_gets_them():
    request = make_tool_request([WEATHER], "auto", None, None)
    messages, tools = template_inputs(HISTORY[:2], HERMES, request)
    assert messages == HISTORY[:2] and tools == [WEATHER.as_template_dict()]
    prompt = ChatTemplate(HERMES_TEMPLATE, "", "").render(messages, tools=tools)
    assert '"name": "get_weather"' in prompt and '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}' in prompt
    assert template_inputs(HISTORY[:2], HERMES, make_tool_request([WEATHER], "none", None, None))[1] is None


def test_history_arguments():
    assert tool_call_arguments('{"a": 1}', "w") == {"a": 1} and tool_call_arguments({"a": 1}, "w") == {"a": 1}
    assert tool_call_arguments("", "w") == {}
    with pytest.raises(InvalidRequestError, match="messages\\[1\\].tool_calls\\[0\\].function.arguments is not valid JSON"):
        tool_call_arguments("{oops", "messages[1].tool_calls[0].function.arguments")
