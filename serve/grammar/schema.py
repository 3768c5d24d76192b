"""JSON Schema -> GBNF, refusing what the grammar would not enforce.

The conversion is llama-cpp-python's port of llama.cpp's json-schema-to-grammar (`SchemaConverter`),
extended here where it is silently looser than the schema: integer bounds (serve/grammar/integers.py),
nullable and multi-type schemas (it would drop every keyword beside a type list), arrays with item counts
but no `items`, oneOf (written as anyOf: accepted only when its branches are exclusive, one_of.py). Every keyword the result would not enforce is refused before conversion, with its place
in the schema, so a request never gets a silently looser grammar. Conversions are cached per schema text.
"""
from __future__ import annotations

import functools
import json
import math
from typing import Any

from llama_cpp.llama_grammar import RESERVED_NAMES, BuiltinRule, SchemaConverter

from serve.grammar.integers import IntegerRange, integer_gbnf
from serve.grammar.one_of import OverlapError, check_exclusive

# Keywords that describe and never constrain (or hold definitions reached through $ref).
ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$schema", "$id", "$comment",
                         "deprecated", "readOnly", "writeOnly", "$defs", "definitions"})
ENFORCED = {
    "object": {"type", "properties", "required", "additionalProperties"},
    "array": {"type", "items", "prefixItems", "minItems", "maxItems"},
    "string": {"type", "pattern", "format", "minLength", "maxLength"},
    "integer": {"type", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"},
    "number": {"type"},
    "boolean": {"type"},
    "null": {"type"},
}
STRING_FORMATS = ("date", "time", "date-time", "uuid")
INTEGER_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
MAX_CACHED_SCHEMAS = 256
# A character inside a JSON string. The port's own rule lets raw control characters (a newline) through,
# which JSON forbids; llama.cpp's current converter excludes them, as this does.
JSON_STRING_CHAR = BuiltinRule(r'[^"\\\x7F\x00-\x1F] | [\\] (["\\bfnrt/] | "u" [0-9a-fA-F]{4})', [])


class SchemaFeatureError(ValueError):
    """A schema the grammar cannot enforce exactly; the message names the keyword and where it is."""


def _where(path: str) -> str:
    return f"at {path}" if path else "at the top level"


def _implied_types(node: dict) -> list[str]:
    """The types a schema without `type` stands for, as the converter reads it."""
    if "properties" in node or "additionalProperties" in node:
        return ["object"]
    if "items" in node or "prefixItems" in node:
        return ["array"]
    if "pattern" in node or "format" in node:
        return ["string"]
    return []


def _check_string(node: dict, path: str) -> None:
    groups = [g for g, keys in (("pattern", {"pattern"}), ("format", {"format"}),
                                ("minLength/maxLength", {"minLength", "maxLength"})) if keys & node.keys()]
    if len(groups) > 1:
        raise SchemaFeatureError(f"{' and '.join(groups)} together {_where(path)} cannot be enforced together; "
                                 "keep one of them")
    pattern = node.get("pattern")
    if pattern is not None and not (pattern.startswith("^") and pattern.endswith("$")):
        raise SchemaFeatureError(f"pattern {pattern!r} {_where(path)} must be anchored (^...$) to be enforced "
                                 "as a grammar")
    if "format" in node and node["format"] not in STRING_FORMATS:
        raise SchemaFeatureError(f"string format {node['format']!r} {_where(path)} cannot be enforced; "
                                 f"supported formats: {', '.join(STRING_FORMATS)}")


def _check_typed(node: dict, keys: set[str], path: str) -> None:
    declared = node.get("type")
    types = declared if isinstance(declared, list) else [declared] if declared else _implied_types(node)
    if not types:
        if keys:
            raise SchemaFeatureError(f"{', '.join(sorted(keys))} {_where(path)} cannot be enforced without a "
                                     "type; add one")
        return
    unknown = keys - set().union(*(ENFORCED[t] for t in types)) - {"nullable"}
    if "number" in types and unknown & set(INTEGER_BOUNDS):
        raise SchemaFeatureError(f"bounds on a number ({', '.join(sorted(unknown & set(INTEGER_BOUNDS)))}) "
                                 f"{_where(path)} cannot be enforced; use type integer for bounded whole numbers")
    if unknown:
        raise SchemaFeatureError(f"{', '.join(sorted(unknown))} {_where(path)} cannot be enforced; remove it")
    if "string" in types:
        _check_string(node, path)
    if "prefixItems" in node or isinstance(node.get("items"), list):
        if {"minItems", "maxItems"} & keys or ("prefixItems" in node and "items" in node):
            raise SchemaFeatureError(f"a tuple (prefixItems) {_where(path)} cannot have items, minItems or "
                                     "maxItems here; list every position in prefixItems")
    missing = set(node.get("required", ())) - set(node.get("properties", {}))
    if missing:
        raise SchemaFeatureError(f"required {', '.join(sorted(missing))} {_where(path)} not in properties; "
                                 "declare them in properties")


def _check_node(node: Any, path: str, root: Any) -> None:
    """Refuse what the converter would not enforce at this node (its children are walked separately)."""
    if node is True or node == {}:
        return
    if not isinstance(node, dict):
        raise SchemaFeatureError(f"the schema {node!r} {_where(path)} cannot be enforced; use an object schema")
    keys = set(node) - ANNOTATIONS
    for branch in ("$ref", "anyOf", "oneOf"):
        if branch in keys:
            others = keys - {branch, "nullable"}
            if others:
                raise SchemaFeatureError(f"{', '.join(sorted(others))} beside {branch} {_where(path)} cannot be "
                                         f"enforced; move them into the {branch} alternatives")
            if branch == "$ref" and not str(node["$ref"]).startswith("#/"):
                raise SchemaFeatureError(f"$ref {node['$ref']!r} {_where(path)}: only local references "
                                         "(#/$defs/...) are supported")
            if branch == "oneOf":  # written as a choice (anyOf): exact only for exclusive branches
                try:
                    check_exclusive(node["oneOf"], root, _where(path))
                except OverlapError as exc:
                    raise SchemaFeatureError(str(exc)) from None
            return
    if "const" in keys or "enum" in keys:
        others = keys - {"const", "enum", "type", "nullable"}
        if others:
            raise SchemaFeatureError(f"{', '.join(sorted(others))} beside enum/const {_where(path)} cannot be "
                                     "enforced; remove them")
        return
    _check_typed(node, keys, path)


def _children(node: Any, path: str):
    """(subschema, its path) for every subschema directly under `node`."""
    if not isinstance(node, dict):
        return
    prefix = f"{path}." if path else ""
    for key in ("properties", "$defs", "definitions"):
        for name, child in (node.get(key) or {}).items():
            yield child, f"{prefix}{key}.{name}"
    for key in ("anyOf", "oneOf", "prefixItems"):
        for index, child in enumerate(node.get(key) or ()):
            yield child, f"{prefix}{key}[{index}]"
    items = node.get("items")
    for index, child in enumerate(items if isinstance(items, list) else [items] if items is not None else []):
        yield child, f"{prefix}items" + (f"[{index}]" if isinstance(items, list) else "")
    if isinstance(node.get("additionalProperties"), dict):
        yield node["additionalProperties"], f"{prefix}additionalProperties"


def check_enforceable(schema: Any, path: str = "", root: Any = None) -> None:
    """Raise SchemaFeatureError for the first keyword the grammar would not enforce (`root`: the whole
    schema, whose definitions local references point into)."""
    root = schema if root is None else root
    _check_node(schema, path, root)
    for child, child_path in _children(schema, path):
        check_enforceable(child, child_path, root)


def _integer_bounds(node: dict) -> IntegerRange:
    low = [math.ceil(node["minimum"])] if "minimum" in node else []
    low += [math.floor(node["exclusiveMinimum"]) + 1] if "exclusiveMinimum" in node else []
    high = [math.floor(node["maximum"])] if "maximum" in node else []
    high += [math.ceil(node["exclusiveMaximum"]) - 1] if "exclusiveMaximum" in node else []
    return IntegerRange(max(low) if low else None, min(high) if high else None)


def _normalized(node: Any) -> Any:
    """The same schema in the shapes the converter enforces whole."""
    if not isinstance(node, dict):
        return {} if node is True else node
    if node.get("nullable") is True:
        rest = {k: v for k, v in node.items() if k != "nullable"}
        return {"anyOf": [rest, {"type": "null"}]}
    if isinstance(node.get("type"), list):
        rest = {k: v for k, v in node.items() if k != "type"}
        return {"anyOf": [{**rest, "type": t} for t in node["type"]]}
    if node.get("type") == "array" and "items" not in node and "prefixItems" not in node:
        return {**node, "items": True}  # the converter reads an empty items schema as absent
    return node


class _Converter(SchemaConverter):
    def visit(self, schema, name):
        schema = _normalized(schema)
        if isinstance(schema, dict) and schema.get("type") == "integer" and set(INTEGER_BOUNDS) & schema.keys():
            rule_name = name + "-" if name in RESERVED_NAMES else name or "root"
            return self._add_rule(rule_name, f"({integer_gbnf(_integer_bounds(schema))}) space")
        return super().visit(schema, name)

    def _add_primitive(self, name: str, rule: BuiltinRule):
        return super()._add_primitive(name, JSON_STRING_CHAR if name == "char" else rule)


@functools.lru_cache(maxsize=MAX_CACHED_SCHEMAS)
def schema_to_gbnf(schema_text: str) -> str:
    """The GBNF of a schema (as canonical JSON text, the cache key) that check_enforceable accepted.
    Raises SchemaFeatureError when the converter fails on it (a pattern it cannot translate)."""
    converter = _Converter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    try:
        schema = converter.resolve_refs(json.loads(schema_text), "input")
        converter.visit(schema, "")
    except (AssertionError, ValueError, KeyError, RecursionError) as exc:
        raise SchemaFeatureError(f"the schema cannot be turned into a grammar: {exc}") from None
    return converter.format_grammar()
