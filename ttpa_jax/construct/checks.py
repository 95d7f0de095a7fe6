"""Checks on a constructed SFT record. Each failed check is a ``Rejection`` with a reason name.

Rules (docs/construction.md explains them with examples):

- **No leaked names** (``query_names_tool``, ``query_names_parameter``). No user message may name a
  tool of the record's candidate set, nor a parameter of one. A name is matched as its words in
  order, case-insensitive, joined by nothing, spaces, ``_`` or ``-``, on word boundaries: for
  ``get_weather`` that is "get_weather", "get weather", "get-weather", "GetWeather" and
  "getweather". Tool names are always checked. A parameter name is checked only when it is made of
  two or more words (``departure_date``, ``maxPrice``); a single-word name (``city``, ``date``,
  ``amount``) is an everyday word that a natural request has to be free to use.
- **Valid calls** (``unknown_tool``, ``invalid_call``): every call names a candidate tool and its
  arguments validate against that tool's JSON Schema (formats checked).
- **Results used** (``answer_missing_values``): for every call whose result is not an error and has
  salient values (see ``salient_items``), the turn's final answer mentions at least one of them
  (``tools.return_values.mentions``, the rule the evaluation's return-value metric uses too).
- **Facts recoverable** (``unrecoverable_argument``): every string and number in a call's
  arguments appears in the user messages so far or in an earlier tool result of the record
  (booleans are exempt: a request implies them without spelling them).
- **Failed calls corrected** (``invalid_recovery``): the calls that ``meta["failed_calls"]`` names
  (indices over the record's calls, in order) each have an error result (a JSON object with an
  ``"error"`` key), and the next call of the same turn calls the same tool with other arguments and
  succeeds: an error-recovery episode. A failed call's wrong values (those its correction does not
  repeat) need not be recoverable, its error result is no earlier result for later calls, and it
  does not count toward the number of calls.
- **Shape** (``malformed_record``, ``empty_text``, ``call_count``): user, assistant tool-call, tool
  and answer messages in order; non-empty queries and answers; the number of calls in bounds.

``python -m ttpa_jax.validate FILE`` (``ttpa_jax.construct.validate``) applies the checks to any SFT
JSONL file and reports them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any

from ttpa_jax.core.jsonl import DataError
from ttpa_jax.tools.library import Tool, argument_errors, make_tool
from ttpa_jax.tools.return_values import mentions  # the one rule, shared with the evaluation

REASONS = ("malformed_record", "empty_text", "call_count", "unknown_tool", "invalid_call",
           "query_names_tool", "query_names_parameter", "answer_missing_values",
           "unrecoverable_argument", "invalid_recovery")
MAX_SALIENT_DEPTH = 3


@dataclass(frozen=True)
class Rejection:
    reason: str
    detail: str


# ---------------------------------------------------------------- names in text

def identifier_words(name: str) -> list[str]:
    """``get_weather`` / ``getWeather`` / ``get-weather`` -> ``["get", "weather"]``."""
    words: list[str] = []
    for part in re.split(r"[^A-Za-z0-9]+", name):
        words += re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+", part)
    return [w.lower() for w in words]


@cache
def name_regex(name: str) -> re.Pattern[str]:
    """Matches ``name`` in any of its split-word forms (applied to case-folded text)."""
    words = identifier_words(name)
    return re.compile(r"(?<![a-z0-9])" + r"[\s_\-]*".join(map(re.escape, words)) + r"(?![a-z0-9])")


def leaked_names(text: str, tools: Iterable[Tool]) -> tuple[list[str], list[str]]:
    """(tool names, multi-word parameter names) that ``text`` mentions."""
    folded = text.casefold()
    tools = list(tools)
    tool_hits = sorted({t.name for t in tools if name_regex(t.name).search(folded)})
    params = {p for t in tools for p in t.param_names if len(identifier_words(p)) >= 2}
    param_hits = sorted(p for p in params if name_regex(p).search(folded))
    return tool_hits, param_hits


# ---------------------------------------------------------------- values in text

def render_number(x: int | float) -> str:
    """Numbers as a person writes them: 12, 12.5 (never 12.0 or 1e-05)."""
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    text = repr(x)
    return format(x, ".10f").rstrip("0").rstrip(".") if "e" in text else text


def leaves(obj: Any) -> list[Any]:
    """Every scalar inside a JSON value."""
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in leaves(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in leaves(v)]
    return [obj]


def salient_items(result: Any, arguments: dict[str, Any] | None = None) -> list[tuple[str, Any]]:
    """The values of a tool result an answer should report, as ``(key, value)`` pairs.

    Strings and numbers of the result (top level, nested objects, and the first element of each
    list; up to three elements of a list of scalars), in order, except values that only echo the
    call's arguments. Booleans and nulls are left out.
    """
    echoes = {json.dumps(v) for v in leaves(arguments or {})}
    items: list[tuple[str, Any]] = []

    def visit(obj: Any, key: str, depth: int) -> None:
        if depth > MAX_SALIENT_DEPTH:
            return
        if isinstance(obj, dict):
            for k, v in obj.items():
                visit(v, k, depth + 1)
        elif isinstance(obj, list):
            scalars = all(not isinstance(v, (dict, list)) for v in obj)
            for v in obj[:3] if scalars else obj[:1]:
                visit(v, key, depth + 1)
        elif isinstance(obj, (int, float, str)) and not isinstance(obj, bool):
            if json.dumps(obj) not in echoes and str(obj).strip():
                items.append((key, obj))

    if isinstance(result, dict) and "error" not in result:
        visit(result, "", 0)
    return items


# ---------------------------------------------------------------- record structure

@dataclass
class ParsedStep:
    """One call and its result; ``correction`` is set on a failed call (``meta["failed_calls"]``)."""

    name: str
    arguments: Any
    result: Any
    correction: ParsedStep | None = None

    @property
    def failed(self) -> bool:
        return self.correction is not None


@dataclass
class ParsedTurn:
    query: str
    steps: list[ParsedStep]
    answer: str


def parse_result(content: Any) -> Any:
    try:
        return json.loads(content) if isinstance(content, str) else content
    except json.JSONDecodeError:
        return content


def parse_turns(messages: list[dict[str, Any]]) -> list[ParsedTurn]:
    """Split messages into user turns; raises ``DataError`` when the order is not
    user -> (assistant tool call -> tool)* -> assistant answer, repeated."""
    turns: list[ParsedTurn] = []
    pending: dict[str, ParsedStep] = {}
    for i, m in enumerate(messages):
        role = m.get("role")
        if role == "system" and i == 0:
            continue
        if role == "user":
            if turns and not turns[-1].answer:
                raise DataError(f"message {i}: user message before the previous turn's answer")
            turns.append(ParsedTurn(query=m.get("content") or "", steps=[], answer=""))
        elif not turns or turns[-1].answer:
            raise DataError(f"message {i}: {role} message outside a user turn")
        elif role == "assistant" and m.get("tool_calls"):
            for tc in m["tool_calls"]:
                fn = tc.get("function", {})
                args = fn.get("arguments")
                args = parse_result(args) if isinstance(args, str) else args
                step = ParsedStep(name=fn.get("name", ""), arguments=args, result=None)
                turns[-1].steps.append(step)
                pending[tc.get("id", "")] = step
        elif role == "assistant":
            if pending:
                raise DataError(f"message {i}: answer before every tool call has its result")
            turns[-1].answer = m.get("content") or ""
        elif role == "tool":
            step = pending.pop(m.get("tool_call_id", ""), None)
            if step is None:
                raise DataError(f"message {i}: tool message answers no pending call")
            step.result = parse_result(m.get("content"))
        else:
            raise DataError(f"message {i}: unexpected role {role!r}")
    if not turns or not turns[-1].answer:
        raise DataError("the record does not end with an assistant answer")
    return turns


def is_error_result(result: Any) -> bool:
    """A tool result that reports an error: a JSON object with an ``"error"`` key."""
    return isinstance(result, dict) and "error" in result


def _recovery_problem(calls: list[tuple[int, ParsedStep]], i: int) -> str | None:
    """Why call ``i`` (with its turn number) is not a failed call followed by its correction."""
    if not 0 <= i < len(calls) - 1:
        return "there is no such call followed by another"
    (turn, step), (next_turn, correction) = calls[i], calls[i + 1]
    if not is_error_result(step.result):
        return "its result is not an error"
    if next_turn != turn or correction.name != step.name:
        return f"the next call of its turn does not call {step.name} again"
    if is_error_result(correction.result):
        return "its correction fails too"
    if correction.arguments == step.arguments:
        return "its correction repeats its arguments"
    return None


def mark_failed_calls(turns: list[ParsedTurn], failed: Any) -> list[Rejection]:
    """Link each call that ``failed`` (``meta["failed_calls"]``) names to its correction, the next
    call; a rejection for each that is not a failed call followed by its correction."""
    if not isinstance(failed, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in failed):
        return [Rejection("invalid_recovery", "meta.failed_calls must be a list of call indices")]
    calls = [(k, step) for k, turn in enumerate(turns) for step in turn.steps]
    out = []
    for i in sorted(set(failed)):
        problem = _recovery_problem(calls, i)
        if problem:
            out.append(Rejection("invalid_recovery", f"call {i}: {problem}"))
        else:
            calls[i][1].correction = calls[i + 1][1]
    return out


# ---------------------------------------------------------------- the checks

def check_record(record: dict[str, Any], min_calls: int = 1, max_calls: int | None = None) -> list[Rejection]:
    """Every rule the record breaks (empty when it passes)."""
    try:
        tools = [make_tool(t, f"tools[{i}]") for i, t in enumerate(record.get("tools") or [])]
        turns = parse_turns(record.get("messages") or [])
    except DataError as e:
        return [Rejection("malformed_record", str(e))]
    by_name = {t.name: t for t in tools}
    meta = record.get("meta")
    out = mark_failed_calls(turns, meta.get("failed_calls", []) if isinstance(meta, dict) else [])
    n_calls = sum(not step.failed for t in turns for step in t.steps)
    if n_calls < min_calls or (max_calls is not None and n_calls > max_calls):
        out.append(Rejection("call_count", f"{n_calls} calls, expected {min_calls}..{max_calls}"))
    user_text = ""
    earlier_results = ""
    for k, turn in enumerate(turns):
        if not turn.query.strip() or not turn.answer.strip():
            out.append(Rejection("empty_text", f"turn {k}: empty query or answer"))
        tool_hits, param_hits = leaked_names(turn.query, tools)
        if tool_hits:
            out.append(Rejection("query_names_tool", f"turn {k}: {', '.join(tool_hits)}"))
        if param_hits:
            out.append(Rejection("query_names_parameter", f"turn {k}: {', '.join(param_hits)}"))
        user_text += "\n" + turn.query
        for step in turn.steps:
            out += _check_call(step, by_name, user_text, earlier_results)
            if not step.failed:
                earlier_results += "\n" + json.dumps(step.result, ensure_ascii=False)
        for step in turn.steps:
            salient = [(k, v) for k, v in salient_items(step.result, step.arguments if isinstance(step.arguments, dict)
                                                        else {}) if v != ""]  # an empty value states nothing
            if salient and not any(mentions(turn.answer, v) for _, v in salient):
                out.append(Rejection("answer_missing_values",
                                     f"turn {k}: no value of the {step.name} result in the answer"))
    return out


def _check_call(step: ParsedStep, by_name: dict[str, Tool], user_text: str, earlier: str) -> list[Rejection]:
    tool = by_name.get(step.name)
    if tool is None:
        return [Rejection("unknown_tool", f"{step.name!r} is not among the record's tools")]
    errors = argument_errors(tool, step.arguments)
    if errors:
        return [Rejection("invalid_call", f"{step.name}: {'; '.join(errors)}")]
    wrong = _wrong_values(step)
    missing = [v for v in leaves(step.arguments)
               if not isinstance(v, bool) and v is not None and v != "" and json.dumps(v) not in wrong
               and not mentions(user_text, v) and not mentions(earlier, v)]
    if missing:
        return [Rejection("unrecoverable_argument",
                          f"{step.name}: {', '.join(map(repr, missing))} not in the query or earlier results")]
    return []


def _wrong_values(step: ParsedStep) -> set[str]:
    """JSON of a failed call's argument values that its correction does not repeat."""
    if step.correction is None:
        return set()
    kept = {json.dumps(v) for v in leaves(step.correction.arguments)}
    return {json.dumps(v) for v in leaves(step.arguments)} - kept
