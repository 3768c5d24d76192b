"""The `template` field of Ollama's /api/generate: the subset of Go's text/template that prompt templates use.

Ollama's classic templates look like

    {{ if .System }}<|im_start|>system
    {{ .System }}<|im_end|>
    {{ end }}<|im_start|>user
    {{ .Prompt }}<|im_end|>
    <|im_start|>assistant
    {{ .Response }}<|im_end|>

Supported: `.System`, `.Prompt`, `.Response`, `if`/`else if`/`else`/`end` on those, trim markers `{{-` / `-}}`
and comments. As Ollama does when generating, everything from `{{ .Response }}` on is cut: the model writes
the response. Anything else (`range .Messages`, functions, other fields) is refused with a clear error
instead of being rendered wrongly.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.DOTALL)
_FIELDS = (".System", ".Prompt", ".Response")


class TemplateError(ValueError):
    """The template uses something outside the supported subset, or is malformed."""


class _ResponseReached(Exception):
    """Rendering stops at {{ .Response }}: what follows it is the model's to write."""


@dataclass
class _Branch:
    condition: str | None  # a field name, or None for `else`
    body: list = field(default_factory=list)


@dataclass
class _If:
    branches: list[_Branch]


def _tokens(source: str) -> list[tuple[str, str]]:
    """("text", ...) and ("action", ...) tokens with Go's whitespace trimming applied."""
    tokens: list[tuple[str, str]] = []
    position, trim_next = 0, False
    for match in _ACTION.finditer(source):
        text = source[position:match.start()]
        if trim_next:
            text = text.lstrip()
        if match.group(1):
            text = text.rstrip()
        tokens.append(("text", text))
        tokens.append(("action", match.group(2).strip()))
        position, trim_next = match.end(), bool(match.group(3))
    tail = source[position:]
    tokens.append(("text", tail.lstrip() if trim_next else tail))
    if "{{" in "".join(t for kind, t in tokens if kind == "text"):
        raise TemplateError("template: unclosed action (a '{{' without its '}}')")
    return tokens


def _field(expression: str) -> str:
    if expression not in _FIELDS:
        raise TemplateError(f"template: {{{{ {expression} }}}} is not supported here; templates may use "
                            f"{', '.join(_FIELDS)} and if/else/end")
    return expression


def _parse(tokens: list[tuple[str, str]], index: int, nested: bool) -> tuple[list, int, str | None]:
    """Nodes until `end`/`else` (when nested) or the end; returns (nodes, next index, the closing action)."""
    nodes: list = []
    while index < len(tokens):
        kind, value = tokens[index]
        index += 1
        if kind == "text":
            nodes.append(value)
        elif value.startswith("/*"):
            continue  # a comment
        elif value.startswith("if "):
            node, index = _parse_if(tokens, index, _field(value[3:].strip()))
            nodes.append(node)
        elif value == "end" or value == "else" or value.startswith("else if "):
            if not nested:
                raise TemplateError(f"template: unexpected {{{{ {value} }}}}")
            return nodes, index, value
        else:
            nodes.append(("field", _field(value)))
    if nested:
        raise TemplateError("template: an {{ if }} has no {{ end }}")
    return nodes, index, None


def _parse_if(tokens: list[tuple[str, str]], index: int, condition: str) -> tuple[_If, int]:
    branches = [_Branch(condition)]
    while True:
        body, index, closing = _parse(tokens, index, nested=True)
        branches[-1].body = body
        if closing == "end":
            return _If(branches), index
        if branches[-1].condition is None:
            raise TemplateError("template: nothing may follow {{ else }} but {{ end }}")
        branches.append(_Branch(_field(closing[len("else if "):].strip()) if closing != "else" else None))


def _render(nodes: list, values: dict[str, str], out: list[str]) -> None:
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, _If):
            for branch in node.branches:
                if branch.condition is None or values.get(branch.condition):
                    _render(branch.body, values, out)
                    break
        elif node[1] == ".Response":
            raise _ResponseReached
        else:
            out.append(values.get(node[1], ""))


def render_prompt_template(source: str, *, prompt: str, system: str | None) -> str:
    """The prompt `source` produces for this prompt and system message (text after .Response is cut)."""
    nodes, _, _ = _parse(_tokens(source), 0, nested=False)
    out: list[str] = []
    try:
        _render(nodes, {".System": system or "", ".Prompt": prompt}, out)
    except _ResponseReached:
        pass
    return "".join(out)
