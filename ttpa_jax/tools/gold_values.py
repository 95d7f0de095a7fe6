"""Gold argument values: which predicted values a gold call accepts.

The convention (BFCL's, made unambiguous for arrays):

* At an *argument position* (a top-level argument, or a property of an object at any depth) the
  gold value is either one literal value or a **list of acceptable values**. ``""`` among the
  acceptable values means the argument may be left out.
* A gold list at an argument position is a list of acceptable values, except for a parameter
  whose schema type is ``array``: there a list is one literal array, and it is a list of
  acceptable values only when it is a non-empty list of lists (``""`` entries allowed), e.g.
  ``[[1, 2, 3]]`` or ``[["a"], ["b"], ""]``. One fallback: a list that does not fit the array's
  item schema as a literal (BFCL writes a Python variable name as ``["data['x']"]``) is read as
  acceptable values. An array of arrays is given wrapped: ``[[[1, 2], [3, 4]]]``.
* Inside a literal array, elements are literals; an object element's properties are argument
  positions again (BFCL's list-of-dicts answers).

Comparison: strings after BFCL's normalisation (``standardize_string``), numbers by value
(``3 == 3.0``), booleans apart from numbers, arrays element-wise in order, objects key by key.
"""

from __future__ import annotations

import math
import re
from typing import Any

from ttpa_jax.tools.schema import is_number, schema_violation

_BFCL_DROPPED = re.compile(r"[ ,./\-_*^]")


def standardize_string(text: str) -> str:
    """BFCL's string normalisation (``standardize_string`` in bfcl-eval's AST checker): spaces and
    ``,./-_*^`` dropped, lowercased, single quotes turned into double quotes.

    ``"April 1, 2024"``, ``"april 1,2024"`` and ``"April 1 2024"`` are equal; every other character
    counts, so ``"C#"`` differs from ``"C"`` and ``"a@b.com"`` from ``"a b com"``. One rule for our
    test sets and BFCL keeps the two comparable.
    """
    return _BFCL_DROPPED.sub("", text).lower().replace("'", '"')


def property_schema(schema: Any, key: str) -> Any:
    """The schema of ``key`` in an object schema (``properties``, else ``additionalProperties``)."""
    if not isinstance(schema, dict):
        return None
    props = schema.get("properties")
    if isinstance(props, dict) and key in props:
        return props[key]
    extra = schema.get("additionalProperties")
    return extra if isinstance(extra, dict) else None


def item_schema(schema: Any, index: int) -> Any:
    """The schema of element ``index`` of an array schema."""
    if not isinstance(schema, dict):
        return None
    items = schema.get("items")
    if isinstance(items, list):
        return items[index] if index < len(items) else None
    return items


def _is_array_schema(schema: Any) -> bool:
    if not isinstance(schema, dict):
        return False
    t = schema.get("type")
    return t == "array" or (isinstance(t, list) and "array" in t)


def alternatives(gold: Any, schema: Any) -> list[Any]:
    """The acceptable values a gold value at an argument position stands for (see module doc)."""
    if not isinstance(gold, list) or not gold:
        return [gold]
    if not _is_array_schema(schema):
        return gold
    if all(isinstance(g, list) or g == "" for g in gold):
        return gold
    if schema_violation(gold, schema) is not None:
        return gold
    return [gold]


def may_omit(gold: Any, schema: Any) -> bool:
    """Whether the gold lets the argument be left out (``""`` among its acceptable values)."""
    return isinstance(gold, list) and any(isinstance(a, str) and a == "" for a in alternatives(gold, schema))


def matches_gold(value: Any, gold: Any, schema: Any) -> bool:
    """Whether ``value`` equals one of the acceptable values of ``gold`` (an argument position)."""
    return any(value_equals(value, alt, schema) for alt in alternatives(gold, schema))


def value_equals(value: Any, gold: Any, schema: Any) -> bool:
    """Whether ``value`` equals the literal gold value ``gold`` (see module doc for the rules)."""
    if isinstance(gold, dict):
        return isinstance(value, dict) and arguments_match(value, gold, schema)
    if isinstance(gold, list):
        return (
            isinstance(value, list)
            and len(value) == len(gold)
            and all(value_equals(v, g, item_schema(schema, i)) for i, (v, g) in enumerate(zip(value, gold)))
        )
    if isinstance(gold, str):
        return isinstance(value, str) and standardize_string(value) == standardize_string(gold)
    if is_number(gold):
        return is_number(value) and _numbers_equal(value, gold)
    if isinstance(gold, bool):
        return isinstance(value, bool) and value == gold
    return value is None and gold is None


def arguments_match(value: dict[str, Any], gold: dict[str, Any], schema: Any) -> bool:
    """Whether an object matches a gold object: no extra keys, every needed key acceptable."""
    if any(k not in gold for k in value):
        return False
    for key, g in gold.items():
        sub = property_schema(schema, key)
        if key in value:
            if not matches_gold(value[key], g, sub):
                return False
        elif not may_omit(g, sub):
            return False
    return True


def _numbers_equal(a: float, b: float) -> bool:
    if a == b:
        return True
    try:
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
    except OverflowError:
        return False


def first_acceptable(gold: Any, schema: Any) -> tuple[bool, Any]:
    """``(present, value)``: the first acceptable value, resolved all the way down.

    ``present`` is ``False`` when the first acceptable value is ``""`` (leave the argument out).
    """
    first = alternatives(gold, schema)[0]
    if isinstance(gold, list) and isinstance(first, str) and first == "":
        return False, None
    return True, concrete_value(first, schema)


def concrete_value(gold: Any, schema: Any) -> Any:
    """A literal gold value with every nested argument position resolved to its first value."""
    if isinstance(gold, dict):
        out = {}
        for key, g in gold.items():
            present, value = first_acceptable(g, property_schema(schema, key))
            if present:
                out[key] = value
        return out
    if isinstance(gold, list):
        return [concrete_value(g, item_schema(schema, i)) for i, g in enumerate(gold)]
    return gold
