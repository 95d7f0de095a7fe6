"""BFCL (Berkeley Function Calling Leaderboard) single-turn test sets, read from the installed package.

Questions and possible answers come from the data files of ``bfcl-eval``
(``bfcl_eval/data/BFCL_v4_<category>.json`` and ``possible_answer/BFCL_v4_<category>.json``, one
JSON object per line); nothing is downloaded. Install it without its dependencies, which neither the
data files nor the checker need: ``pip install --no-deps bfcl-eval``.

Categories are BFCL's own names (``bfcl_checker.CATEGORIES``); ``simple`` stands for the three
simple sets (python, java, javascript, which the leaderboard's "Simple" averages), ``non_live``,
``live`` and ``all`` for the groups.

An entry keeps the functions twice: as in the data file (what the checker reads) and with BFCL's
language-specific hints (what the model reads, as BFCL's generation adds them: a note on the syntax
in each description, Java/JavaScript parameters typed as strings). For the model they become
OpenAI tools (function-calling mode) or BFCL's system prompt (prompt mode); for ESM, JSON Schema
(``dict`` -> ``object``, ``float`` -> ``number``, ``tuple`` -> ``array``, ``any`` -> no type) and
gold calls whose values list the acceptable ones (``gold_values``; ``""`` means it may be left out).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ttpa_jax.core.jsonl import DataError, iter_jsonl, where
from ttpa_jax.evaluate.bfcl_checker import (
    CATEGORIES,
    LIVE,
    NON_LIVE,
    BFCLNotInstalled,
    is_relevance_category,
    package_dir,
    system_prompt_messages,
)
from ttpa_jax.evaluate.metrics import EvalItem

__all__ = ["BFCLNotInstalled", "CATEGORIES", "Entry", "data_dir", "expand_categories", "load_entries", "to_items"]

Mode = Literal["fc", "prompt"]
GROUPS = {
    "simple": ("simple_python", "simple_java", "simple_javascript"),
    "non_live": NON_LIVE,
    "live": LIVE,
    "all": CATEGORIES,
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


def data_dir(package: str = "bfcl_eval") -> Path:
    """The ``data`` directory of the installed bfcl-eval package (located without importing it)."""
    return package_dir(package) / "data"


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


def with_language_hints(functions: list[dict[str, Any]], category: str) -> list[dict[str, Any]]:
    """The functions as BFCL's generation shows them (``bfcl_eval.utils``' language-specific hints)."""
    from bfcl_eval.utils import _func_doc_language_specific_pre_processing  # deferred: optional dependency (bfcl-eval)

    return _func_doc_language_specific_pre_processing(copy.deepcopy(functions), category)


@dataclass(frozen=True)
class Entry:
    """One BFCL test entry.

    question:     the messages of its one turn.
    functions:    the function docs as in the data file (the checker's input).
    hinted:       the same with BFCL's language-specific hints (the model's input).
    ground_truth: the possible answer ``[{name: {arg: [acceptable]}}]``; None for (ir)relevance.
    """

    id: str
    category: str
    question: list[dict[str, Any]]
    functions: list[dict[str, Any]]
    hinted: list[dict[str, Any]]
    ground_truth: list[dict[str, Any]] | None


def expand_categories(names: list[str]) -> list[str]:
    """Category names and groups as BFCL categories, in the leaderboard's order, each once."""
    chosen = set()
    for name in names:
        if name in GROUPS:
            chosen.update(GROUPS[name])
        elif name in CATEGORIES:
            chosen.add(name)
        else:
            known = ", ".join([*CATEGORIES, *GROUPS])
            raise DataError(f"unknown BFCL category {name!r} (known: {known})")
    return [c for c in CATEGORIES if c in chosen]


def _read(path: Path) -> list[tuple[str, dict[str, Any]]]:
    if not path.is_file():
        raise BFCLNotInstalled(f"{path}: BFCL data file not found (pip install --no-deps bfcl-eval==2026.3.23)")
    return [(where(path, lineno), obj) for lineno, obj in iter_jsonl(path)]


def load_entries(categories: list[str], limit: int | None = None, root: Path | None = None) -> list[Entry]:
    """The entries of the given categories (or groups), the first ``limit`` of each when given."""
    if limit is not None and limit < 1:
        raise DataError(f"--limit must be at least 1, got {limit}")
    root = root if root is not None else data_dir()
    entries = []
    for category in expand_categories(categories):
        questions = _read(root / f"BFCL_v4_{category}.json")[:limit]
        answers = {} if is_relevance_category(category) else {
            obj.get("id"): obj for _, obj in _read(root / "possible_answer" / f"BFCL_v4_{category}.json")}
        for at, q in questions:
            turns = q.get("question")
            if not isinstance(turns, list) or len(turns) != 1 or not isinstance(q.get("function"), list):
                raise DataError(f"{at}: expected a single-turn question with a 'function' list")
            gold = None
            if not is_relevance_category(category):
                if q.get("id") not in answers:
                    raise DataError(f"{at}: no possible answer for {q.get('id')!r}")
                gold = answers[q["id"]]["ground_truth"]
            functions = q["function"]
            entries.append(Entry(str(q["id"]), category, [dict(m) for m in turns[0]], functions,
                                 with_language_hints(functions, category), gold))
    return entries


def prompt_of(entry: Entry, mode: Mode) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(messages, tools)`` the model is given: the question with the functions as tools (``fc``), or
    BFCL's system prompt listing them and no tools (``prompt``)."""
    if mode == "fc":
        return entry.question, [to_tool(f) for f in entry.hinted]
    return system_prompt_messages(entry.question, entry.hinted, entry.id), []


def to_items(entries: list[Entry]) -> list[EvalItem]:
    """Evaluation items for ESM and for keying predictions (one turn each; ``turn`` = number of
    question messages; ``prompt`` the question, ``tools`` the hinted functions as OpenAI tools): a
    tool-call turn with gold calls, or a ``text`` turn (no call wanted) for irrelevance;
    live_relevance, which has no possible answer, is a tool-call turn without gold calls."""
    items = []
    for e in entries:
        if e.ground_truth is not None:
            kind, gold = "tool_call", to_gold_calls(e.ground_truth)
        else:
            kind, gold = ("text" if "irrelevance" in e.category else "tool_call"), []
        items.append(EvalItem(e.id, len(e.question), kind, e.question, [to_tool(f) for f in e.hinted], gold,
                              category=e.category))
    return items


def load_items(categories: list[str], root: Path | None = None, limit: int | None = None) -> list[EvalItem]:
    """``to_items(load_entries(...))``: the entries as evaluation items."""
    return to_items(load_entries(categories, limit, root))
