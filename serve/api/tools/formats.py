"""How a model family writes tool calls, and which one a model uses.

    hermes       <tool_call>{"name": "f", "arguments": {...}}</tool_call>, one block per call
                 (Qwen 2.5/3, SmolLM3, Hermes, and most ChatML models trained for tools)
    llama3_json  {"name": "f", "parameters": {...}} as the whole answer, optionally after <|python_tag|>,
                 several calls separated by ';' (Llama 3.1-3.3)
    mistral      [TOOL_CALLS][{"name": "f", "arguments": {...}}, ...] (v0.3), or
                 [TOOL_CALLS]f[ARGS]{...} per call (v11+ tokenizers)
    phi4_mini_json  functools[{"name": "f", "arguments": {...}}, ...] (vLLM's phi4_mini_json parser), or
                 <|tool_call|>[...]<|/tool_call|> as Phi-4-mini writes it with its own template, which reads
                 the tools from the system message (render.py puts them there)
    gpt_oss      harmony (gpt-oss): a message on the commentary channel addressed to the function,
                 <|channel|>commentary to=functions.f <|constrain|>json<|message|>{...}; its messages are
                 taken apart first (serve/api/harmony.py), which hands the parser `to=functions.f<|message|>{...}`
    generic      for a model whose template knows no tools: the tools are described in a system message
                 (render.py) that asks for hermes' markup, which is parsed the same way

A catalog model states its format (tool_format in models.toml); any other model's is recognised from its
chat template's text: the markers it writes for tool calls in the conversation history.
"""
from __future__ import annotations

from dataclasses import dataclass



@dataclass(frozen=True)
class ToolFormat:
    name: str
    start_markers: tuple[str, ...]  # any of these starts a call (or a list of calls)
    end_marker: str = ""  # closes each call (hermes)
    can_start_bare: bool = False  # a call may open with its `{` as the first thing of the answer (Llama 3)
    uses_template_tools: bool = True  # the template renders `tools`; False: render.py describes them
    opens_list: bool = False  # the marker may be followed by a JSON list of call objects (mistral, phi4)
    args_marker: str = ""  # the marker may be followed by NAME, this, and the arguments (mistral v11, gpt-oss)
    list_end_marker: str = ""  # may close a list of calls (Phi-4-mini's <|/tool_call|>)
    tools_in_system_message: bool = False  # the template reads the tools as JSON text in the system message

    @property
    def trigger(self) -> str:
        """The text that starts a call; an `auto` grammar starts when it appears."""
        return self.start_markers[0]


HERMES = ToolFormat("hermes", ("<tool_call>",), end_marker="</tool_call>")
LLAMA3_JSON = ToolFormat("llama3_json", ("<|python_tag|>",), can_start_bare=True)
MISTRAL = ToolFormat("mistral", ("[TOOL_CALLS]",), opens_list=True, args_marker="[ARGS]")
PHI4_MINI_JSON = ToolFormat("phi4_mini_json", ("functools", "<|tool_call|>"), opens_list=True,
                            list_end_marker="<|/tool_call|>", tools_in_system_message=True)
GPT_OSS = ToolFormat("gpt_oss", ("to=functions.",), args_marker="<|message|>")
GENERIC = ToolFormat("generic", ("<tool_call>",), end_marker="</tool_call>", uses_template_tools=False)
FORMATS = {fmt.name: fmt for fmt in (HERMES, LLAMA3_JSON, MISTRAL, PHI4_MINI_JSON, GPT_OSS, GENERIC)}


def template_knows_tools(template: str) -> bool:
    """Whether the chat template renders a `tools` list (as Hugging Face's apply_chat_template passes it)."""
    return "tools" in template


def recognise_format(template: str) -> ToolFormat:
    """The format a chat template's own tool-call markup shows; generic when it shows none."""
    if "<tool_call>" in template:
        return HERMES if template_knows_tools(template) else GENERIC
    if "[TOOL_CALLS]" in template:
        return MISTRAL
    if "<|channel|>" in template and " to=" in template:  # harmony: a message's recipient in its header
        return GPT_OSS
    if "functools[" in template or ("<|tool|>" in template and "message['tools']" in template):
        return PHI4_MINI_JSON
    if "<|python_tag|>" in template or ('"parameters"' in template and "<|start_header_id|>" in template):
        return LLAMA3_JSON
    return GENERIC


def tool_format(catalog_format: str | None, template: str, model: str) -> ToolFormat:
    """The catalog's format for the model, else the one its template shows."""
    if catalog_format is None:
        return recognise_format(template)
    fmt = FORMATS[catalog_format]
    return fmt if template_knows_tools(template) else GENERIC
