"""Does a JSON value fit a JSON Schema? The type checks that ESM's ``param_type`` error rests on.

A small checker of our own rather than a full validator: it covers what decides whether a tool
receives a value of the right *kind*, and returns a reason a person can read.

Checked keywords: ``type`` (one name or a list), ``enum``, ``const``, ``items`` (a schema or a
list of schemas), ``properties``, ``required``, ``additionalProperties`` (``false`` or a schema),
``anyOf``/``oneOf`` (some branch fits), ``allOf`` (every branch fits). Range, length and pattern
keywords are not type questions and are left to value comparison.

Type rules follow JSON Schema: ``integer`` is a number with no fractional part (``3`` and ``3.0``),
``number`` is any number, booleans are neither, ``null`` is ``None``. Enum and const membership is
JSON equality (``1 == 1.0``, ``true != 1``).
"""

from __future__ import annotations

import math
from typing import Any

_TYPE_NAMES = ("null", "boolean", "integer", "number", "string", "array", "object")


def is_number(value: Any) -> bool:
    """A JSON number: int or float, finite or not, but never a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def fits_type(value: Any, type_name: str) -> bool:
    """Whether ``value`` is of the JSON Schema type ``type_name``; unknown names accept anything."""
    if type_name == "null":
        return value is None
    if type_name == "boolean":
        return isinstance(value, bool)
    if type_name == "integer":
        return is_number(value) and (isinstance(value, int) or (math.isfinite(value) and value.is_integer()))
    if type_name == "number":
        return is_number(value)
    if type_name == "string":
        return isinstance(value, str)
    if type_name == "array":
        return isinstance(value, list)
    if type_name == "object":
        return isinstance(value, dict)
    return True


def json_equal(a: Any, b: Any) -> bool:
    """JSON equality: numbers by value, booleans apart from numbers, containers element-wise."""
    if is_number(a) and is_number(b):
        return a == b
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    return a == b


def _type_names(schema: dict[str, Any]) -> list[str]:
    t = schema.get("type")
    names = t if isinstance(t, list) else [t] if isinstance(t, str) else []
    return [n for n in names if n in _TYPE_NAMES]


def schema_violation(value: Any, schema: Any, path: str = "") -> str | None:
    """The first way ``value`` does not fit ``schema``, as a readable reason, or ``None`` if it fits.

    ``path`` prefixes the reason (e.g. ``"unit"`` or ``"items[2].city"``). A schema that is not a
    dict (``True``, missing) accepts everything.
    """
    if not isinstance(schema, dict):
        return None if schema is not False else f"{path or 'value'}: no value is allowed here"
    where = path or "value"
    names = _type_names(schema)
    if names and not any(fits_type(value, n) for n in names):
        return f"{where}: expected {' or '.join(names)}, got {_json_type(value)} {_short(value)}"
    if "enum" in schema and isinstance(schema["enum"], list):
        if not any(json_equal(value, e) for e in schema["enum"]):
            return f"{where}: {_short(value)} is not one of {_short(schema['enum'])}"
    if "const" in schema and not json_equal(value, schema["const"]):
        return f"{where}: {_short(value)} is not {_short(schema['const'])}"
    for key in ("anyOf", "oneOf"):
        branches = schema.get(key)
        if isinstance(branches, list) and branches:
            if all(schema_violation(value, b, path) for b in branches):
                return f"{where}: {_short(value)} fits none of the {key} branches"
    for branch in schema.get("allOf") or []:
        reason = schema_violation(value, branch, path)
        if reason:
            return reason
    if isinstance(value, list):
        return _array_violation(value, schema, where)
    if isinstance(value, dict):
        return _object_violation(value, schema, path)
    return None


def _array_violation(value: list, schema: dict[str, Any], where: str) -> str | None:
    items = schema.get("items", schema.get("prefixItems"))
    for i, item in enumerate(value):
        if isinstance(items, list):
            item_schema = items[i] if i < len(items) else None
        else:
            item_schema = items
        reason = schema_violation(item, item_schema, f"{where}[{i}]")
        if reason:
            return reason
    return None


def _object_violation(value: dict, schema: dict[str, Any], path: str) -> str | None:
    props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    prefix = f"{path}." if path else ""
    for key in schema.get("required") or []:
        if isinstance(key, str) and key not in value:
            return f"{path or 'object'}: missing required key {key!r}"
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        if key in props:
            sub = props[key]
        elif extra is False:
            return f"{path or 'object'}: unexpected key {key!r}"
        else:
            sub = extra
        reason = schema_violation(item, sub, prefix + str(key))
        if reason:
            return reason
    return None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
