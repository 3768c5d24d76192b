"""Render a model's own Jinja chat template (from GGUF metadata or tokenizer_config.json).

Mirrors what Hugging Face transformers does, so prompts match the model's training format: a sandboxed
environment, trim/lstrip blocks, `raise_exception`, `strftime_now`, and non-ASCII-preserving `tojson`.
"""
from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment


class ChatTemplateError(ValueError):
    """The template rejected the messages (e.g. roles out of order)."""


class _GenerationTag(jinja2.ext.Extension):
    """transformers' `{% generation %}` marker: render its body as is."""

    tags = {"generation"}

    def parse(self, parser):
        parser.stream.skip(1)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _raise(message: str) -> None:
    raise ChatTemplateError(message)


class ChatTemplate:
    def __init__(self, source: str, bos_token: str, eos_token: str):
        self.source = source  # the API recognises a tool-call format from its text
        env = ImmutableSandboxedEnvironment(loader=jinja2.BaseLoader(), trim_blocks=True, lstrip_blocks=True,
                                            extensions=[_GenerationTag, jinja2.ext.loopcontrols])
        env.filters["tojson"] = _tojson
        self._template = env.from_string(source)
        self._bos_token = bos_token
        self._eos_token = eos_token

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
               tools: list[dict[str, Any]] | None = None, **template_kwargs: Any) -> str:
        """`tools` as Hugging Face passes them: OpenAI's tool shape, None when the request has none;
        `template_kwargs` (enable_thinking, reasoning_effort, ...) become variables of the template."""
        try:
            return self._template.render(
                **template_kwargs, messages=messages, tools=tools, bos_token=self._bos_token, eos_token=self._eos_token,
                add_generation_prompt=add_generation_prompt, raise_exception=_raise,
                strftime_now=lambda fmt: datetime.now().strftime(fmt))
        except ChatTemplateError:
            raise
        except jinja2.TemplateError as exc:
            raise ChatTemplateError(f"the model's chat template failed: {exc}") from None


# Used when a GGUF has no template: ChatML, which most small instruct models understand.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
