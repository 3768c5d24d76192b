"""oneOf: a value must match exactly one branch. A grammar can only say "one of these shapes" (the
converter writes oneOf like anyOf), which is exact when no JSON value can match two branches. That is
decided here, pair by pair, where it can be:

    different types         {"type": "string"} / {"type": "integer"}           (integer is a kind of number)
    consts and enums        a branch's values, none valid under the other branch (checked with jsonschema)
    a discriminator         both require "kind", with disjoint schemas for it (e.g. different consts)
    closed objects          one has additionalProperties false and the other requires a property it lacks

Branches that may overlap are refused (a 400 naming oneOf), never enforced as the looser anyOf.
"""
from __future__ import annotations

from itertools import combinations
from typing import Any

MAX_REF_DEPTH = 32
_ALTERNATIVES = ("anyOf", "oneOf")


class OverlapError(ValueError):
    """Two oneOf branches may match the same value."""


def check_exclusive(branches: list[Any], root: Any, where: str) -> None:
    """Raise OverlapError (naming the branches) unless every pair of branches is disjoint."""
    for (i, first), (j, second) in combinations(enumerate(branches), 2):
        if not are_disjoint(first, second, root):
            raise OverlapError(
                f"oneOf {where}: branches {i} and {j} may both match the same value, and a grammar can only hold "
                "the output to at least one of them; make the branches exclusive (different types, consts or "
                "enums, a required property with a different const in each, or additionalProperties false with "
                "a property only the other requires), or send anyOf")


def are_disjoint(first: Any, second: Any, root: Any) -> bool:
    """True only when no JSON value is valid under both schemas (False: they may overlap, or it is unknown)."""
    first, second = _plain(_resolved(first, root)), _plain(_resolved(second, root))
    if not isinstance(first, dict) or not isinstance(second, dict):
        return first is False or second is False  # True / {} / an unresolvable $ref: anything may match
    types = _types(first, root), _types(second, root)
    if None not in types and not _types_meet(*types):
        return True
    for values, other in ((_values(first), second), (_values(second), first)):
        if values is not None:
            return not any(_is_valid(value, other, root) for value in values)
    for node, other in ((first, second), (second, first)):
        for key in _ALTERNATIVES:
            if key in node:
                return all(are_disjoint(branch, other, root) for branch in node[key])
    return _objects_disjoint(first, second, root)


def _resolved(node: Any, root: Any) -> Any:
    """The schema a local $ref (#/...) points to, followed to its end; None when it cannot be followed."""
    for _ in range(MAX_REF_DEPTH):
        if not isinstance(node, dict) or "$ref" not in node:
            return node
        ref = str(node["$ref"])
        if not ref.startswith("#"):
            return None
        node = root
        for part in filter(None, ref[1:].split("/")):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
    return None


def _plain(node: Any) -> Any:
    """OpenAPI's nullable as the alternative it stands for."""
    if isinstance(node, dict) and node.get("nullable") is True:
        return {"anyOf": [{k: v for k, v in node.items() if k != "nullable"}, {"type": "null"}]}
    return node


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return "integer"
    if isinstance(value, float):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), "unknown")


def _values(node: dict) -> list[Any] | None:
    """The only values a const or enum schema allows; None for any other schema."""
    if "const" in node:
        return [node["const"]]
    if "enum" in node:
        return list(node["enum"])
    return None


def _types(node: dict, root: Any) -> set[str] | None:
    """The JSON types a schema admits; None when it admits any (or it is not known)."""
    values = _values(node)
    if values is not None:
        return {_json_type(value) for value in values}
    for key in _ALTERNATIVES:
        if key in node:
            branches = [_plain(_resolved(branch, root)) for branch in node[key]]
            found = [_types(b, root) if isinstance(b, dict) else None for b in branches]
            return None if None in found else set().union(*found)
    declared = node.get("type")
    types = set(declared) if isinstance(declared, list) else {declared} if declared else _implied_types(node)
    return types or None


def _implied_types(node: dict) -> set[str]:
    if "properties" in node or "additionalProperties" in node or "required" in node:
        return {"object"}
    if "items" in node or "prefixItems" in node:
        return {"array"}
    if "pattern" in node or "format" in node:
        return {"string"}
    return set()


def _types_meet(first: set[str], second: set[str]) -> bool:
    return bool(first & second) or ("integer" in first and "number" in second) or (
        "number" in first and "integer" in second)


def _is_valid(value: Any, schema: dict, root: Any) -> bool:
    """Whether `value` is valid under `schema` (its local $refs resolved against the root's definitions); a
    schema jsonschema cannot evaluate counts as matching (the overlap is then not ruled out)."""
    import jsonschema

    document = {**schema}
    if isinstance(root, dict):
        for key in ("$defs", "definitions"):
            if key in root and key not in document:
                document[key] = root[key]
    try:
        return jsonschema.validators.validator_for(document)(document).is_valid(value)
    except Exception:  # noqa: BLE001 - an unresolvable reference: assume the worst
        return True


def _objects_disjoint(first: dict, second: dict, root: Any) -> bool:
    """Two object schemas no object satisfies both: a discriminator, or a closed one missing a required key."""
    if _types(first, root) != {"object"} or _types(second, root) != {"object"}:
        return False
    properties = first.get("properties") or {}, second.get("properties") or {}
    required = set(first.get("required") or ()), set(second.get("required") or ())
    for name in required[0] & required[1]:
        if name in properties[0] and name in properties[1] and are_disjoint(properties[0][name],
                                                                            properties[1][name], root):
            return True
    for node, own, other_required in ((first, properties[0], required[1]), (second, properties[1], required[0])):
        if node.get("additionalProperties") is False and other_required - set(own):
            return True
    return False
