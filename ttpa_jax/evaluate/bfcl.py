"""BFCL (Berkeley Function Calling Leaderboard) test sets, scored AST-style with ESM.

Questions and possible answers are read from the data files of the installed ``bfcl-eval``
package (``bfcl_eval/data/BFCL_v4_<category>.json`` and ``possible_answer/BFCL_v4_<category>.json``,
one JSON object per line); nothing is downloaded. Install it without its dependencies, which the
data files do not need: ``pip install --no-deps bfcl-eval``.

Conversion: BFCL function schemas use ``"type": "dict"`` and Python type names; they become JSON
Schema (``dict`` -> ``object``, ``float`` -> ``number``, ``tuple`` -> ``array``, ``any`` -> no type
constraint) wrapped as OpenAI tools. Each possible answer ``{name: {arg: [acceptable values]}}``
becomes a gold call whose argument values are lists of acceptable values (``gold_values``; ``""``
means the argument may be left out), so ESM applies BFCL's rules: any order for parallel calls,
light string normalisation, ints accepted for floats.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from ttpa_jax.evaluate.evaluator import EvalItem
from ttpa_jax.core.jsonl import DataError, iter_jsonl, where

INSTALL_HINT = "pip install --no-deps bfcl-eval"

# Category names accepted by --bfcl, and the file stem each reads (Python AST categories).
CATEGORIES = {
    "simple": "simple_python",
    "simple_python": "simple_python",
    "multiple": "multiple",
    "parallel": "parallel",
    "parallel_multiple": "parallel_multiple",
    "live_simple": "live_simple",
    "live_multiple": "live_multiple",
    "live_parallel": "live_parallel",
    "live_parallel_multiple": "live_parallel_multiple",
}

_TYPES = {
    "dict": "object",
    "object": "object",
    "float": "number",
    "double": "number",
    "number": "number",
    "integer": "integer",
    "int": "integer",
    "long": "integer",
    "boolean": "boolean",
    "bool": "boolean",
    "string": "string",
    "str": "string",
    "array": "array",
    "list": "array",
    "tuple": "array",
    "null": "null",
    "any": None,
}


class BFCLNotInstalled(DataError):
    """The bfcl-eval package (its data files) cannot be found."""


def data_dir(package: str = "bfcl_eval") -> Path:
    """The ``data`` directory of the installed bfcl-eval package (located without importing it)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        path = Path(loc) / "data"
        if path.is_dir():
            return path
    raise BFCLNotInstalled(f"the BFCL data files come with the bfcl-eval package, which is not installed: {INSTALL_HINT}")


def to_json_schema(schema: Any) -> Any:
    """A BFCL parameter schema as JSON Schema (recursively: properties, items, additionalProperties)."""
    if not isinstance(schema, dict):
        return schema
    out = {k: v for k, v in schema.items() if k not in ("type", "properties", "items", "additionalProperties", "optional")}
    if "type" in schema:
        t = schema["type"]
        if t not in _TYPES:
            raise DataError(f"BFCL type {t!r} has no JSON Schema equivalent")
        if _TYPES[t] is not None:
            out["type"] = _TYPES[t]
    if isinstance(schema.get("properties"), dict):
        out["properties"] = {k: to_json_schema(v) for k, v in schema["properties"].items()}
    if "items" in schema:
        out["items"] = to_json_schema(schema["items"])
    if "additionalProperties" in schema:
        out["additionalProperties"] = to_json_schema(schema["additionalProperties"])
    return out


def to_tool(function: dict[str, Any]) -> dict[str, Any]:
    """A BFCL function description as an OpenAI tool schema."""
    params = to_json_schema(function.get("parameters") or {"type": "dict", "properties": {}})
    params.setdefault("type", "object")
    fn = {"name": function["name"], "description": function.get("description", ""), "parameters": params}
    return {"type": "function", "function": fn}


def to_gold_calls(ground_truth: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """BFCL possible answers ``[{name: {arg: [acceptable values]}}]`` as gold calls."""
    calls = []
    for entry in ground_truth:
        (name, args), = entry.items()
        calls.append({"name": name, "arguments": dict(args)})
    return calls


def _read(path: Path) -> list[tuple[str, dict[str, Any]]]:
    return [(where(path, lineno), obj) for lineno, obj in iter_jsonl(path)]


def load_items(categories: list[str], root: Path | None = None) -> list[EvalItem]:
    """The entries of the given BFCL categories as evaluation items (one tool-call turn each).

    The prompt is the entry's question (its one turn of messages); ``turn`` is the index the
    answer would take, i.e. the number of prompt messages.
    """
    root = root if root is not None else data_dir()
    items = []
    for category in categories:
        if category not in CATEGORIES:
            raise DataError(f"unknown BFCL category {category!r} (known: {', '.join(CATEGORIES)})")
        stem = CATEGORIES[category]
        questions = _read(root / f"BFCL_v4_{stem}.json")
        answers = {obj.get("id"): obj for _, obj in _read(root / "possible_answer" / f"BFCL_v4_{stem}.json")}
        for at, q in questions:
            if q.get("id") not in answers:
                raise DataError(f"{at}: no possible answer for {q.get('id')!r}")
            turns = q.get("question")
            if not isinstance(turns, list) or len(turns) != 1:
                raise DataError(f"{at}: expected a single-turn question")
            prompt = [dict(m) for m in turns[0]]
            tools = [to_tool(f) for f in q.get("function", [])]
            gold = to_gold_calls(answers[q["id"]]["ground_truth"])
            items.append(EvalItem(str(q["id"]), len(prompt), "tool_call", prompt, tools, gold, category=category))
    return items

