"""Argument values drawn from a JSON Schema, for the template generator and the tests.

Order of precedence for one parameter: the tool spec's value source (a list or a function of the
rng), then the schema (``enum``, numeric bounds, ``format``), then pools chosen by the parameter's
name (cities for ``city``/``origin``, people for ``*_name``, ...). A string with a ``pattern`` must
have a value source: drawing from a regular expression is not attempted.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from ttpa_jax.construct.toolbox import vocab
from ttpa_jax.construct.toolbox.registry import ValueSource

OPTIONAL_RATE = 0.5
# Pools picked by a word in the parameter name, checked in this order.
NAME_POOLS: list[tuple[str, Any]] = [
    ("email", vocab.email), ("recipient", vocab.email), ("country", vocab.COUNTRIES),
    ("city", vocab.CITIES), ("origin", vocab.CITIES), ("destination", vocab.CITIES),
    ("region", vocab.REGIONS), ("address", vocab.address), ("product", vocab.PRODUCT_QUERIES),
    ("name", vocab.person),
    ("phone", vocab.phone), ("dish", vocab.DISHES), ("food", vocab.FOODS), ("query", vocab.PRODUCT_QUERIES),
    ("title", vocab.EVENT_TITLES), ("subject", vocab.EMAIL_SUBJECTS), ("reason", vocab.VISIT_REASONS),
]
GENERIC_WORDS = ["blue", "north", "garden", "river", "summit", "maple", "harbor", "lantern"]


def draw(source: ValueSource, rng: random.Random) -> Any:
    return source(rng) if callable(source) else rng.choice(list(source))


def _number(schema: Mapping[str, Any], rng: random.Random, integer: bool) -> int | float:
    lo = schema.get("minimum", schema.get("exclusiveMinimum", 1 if integer else 0))
    hi = schema.get("maximum", schema.get("exclusiveMaximum", lo + (20 if integer else 500)))
    hi = min(hi, lo + (50 if integer else 1000))
    if integer:
        lo += "exclusiveMinimum" in schema
        return rng.randint(int(lo), int(hi) - ("exclusiveMaximum" in schema))
    value = round(rng.uniform(lo, hi), 2)
    if value <= schema.get("exclusiveMinimum", float("-inf")) or value >= schema.get("exclusiveMaximum", float("inf")):
        value = round((lo + hi) / 2, 2)
    return value


def _string(name: str, schema: Mapping[str, Any], rng: random.Random) -> str:
    fmt = schema.get("format")
    if fmt == "date":
        return vocab.day(rng)
    if fmt == "email":
        return vocab.email(rng)
    if "pattern" in schema:
        if name.endswith("time") or name == "time":
            return vocab.clock(rng)
        raise ValueError(f"parameter {name!r} has a pattern; give the tool spec a value source for it")
    for word, pool in NAME_POOLS:
        if word in name:
            return draw(pool, rng)
    return rng.choice(GENERIC_WORDS)


def sample_value(name: str, schema: Mapping[str, Any], rng: random.Random,
                 sources: Mapping[str, ValueSource] | None = None) -> Any:
    """One value for parameter ``name`` that satisfies ``schema``."""
    if sources and name in sources:
        return draw(sources[name], rng)
    if "enum" in schema:
        return rng.choice(schema["enum"])
    kind = schema.get("type")
    if kind == "boolean":
        return rng.random() < 0.5
    if kind in ("integer", "number"):
        return _number(schema, rng, kind == "integer")
    if kind == "array":
        return _array(name, schema, rng)
    if kind == "object":
        return sample_object(schema, rng, OPTIONAL_RATE)
    return _string(name, schema, rng)


def _array(name: str, schema: Mapping[str, Any], rng: random.Random) -> list[Any]:
    items = schema.get("items", {"type": "string"})
    lo = schema.get("minItems", 1)
    hi = max(lo, min(schema.get("maxItems", lo + 2), lo + 2))
    count = rng.randint(lo, hi)
    if "enum" in items:
        return rng.sample(items["enum"], min(count, len(items["enum"])))
    out: list[Any] = []
    for _ in range(count * 4):
        value = sample_value(name, items, rng)
        if not schema.get("uniqueItems") or value not in out:
            out.append(value)
        if len(out) == count:
            break
    return out


def sample_object(schema: Mapping[str, Any], rng: random.Random, optional_rate: float = OPTIONAL_RATE,
                  sources: Mapping[str, ValueSource] | None = None, skip: frozenset[str] = frozenset(),
                  joint: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Values for the properties of an object schema, in schema order.

    Required properties always get a value, optional ones with probability ``optional_rate``.
    ``skip`` names properties left out (they are filled later from tool results); ``joint`` gives
    values drawn together (two distinct cities) and wins over single-parameter draws.
    """
    required = set(schema.get("required", []))
    out: dict[str, Any] = {}
    for name, sub in schema.get("properties", {}).items():
        if name in skip:
            continue
        if name not in required and rng.random() >= optional_rate:
            continue
        out[name] = joint[name] if joint and name in joint else sample_value(name, sub, rng, sources)
    return out
