"""The metrics of ``python -m ttpa_jax.evaluate`` (listed in ``evaluator``'s docstring): evaluation
items from SFT records, predictions read from JSONL, the per-turn verdicts and their rates, and the
markdown table. Pure Python: ``evaluator`` (the command), ``bfcl`` and ``leaderboard`` build on it.

Answer turns follow ``tools.return_values`` (its module doc is the rule, checkable by hand):

return_value_accuracy       judged answer turns answered correctly (``judge_answer``)
return_value_accuracy_v1    the earlier rule (``check_answer``), over its own judged turns
                            (``judged_answer_turns_v1``), kept so reports can say what changed
answer_turn_tool_call_rate  judged answer turns whose prediction holds a tool call
answer_echo_rate            judged answer turns whose prediction echoes the tool output
answer_turn_tool_calls, answer_echoes_tool_output, answer_missing_values: the same as counts; with
the correct ones they add up to ``judged_answer_turns``

``rescore`` recomputes an earlier evaluation's metrics from the predictions its ``per_turn`` kept.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ttpa_jax.core.conversation import iter_turns, mae_masked_messages, normalize_record
from ttpa_jax.core.jsonl import DataError, iter_jsonl, where
from ttpa_jax.core.records import iter_numbered
from ttpa_jax.tools import esm
from ttpa_jax.tools.calls import Format, calls_from_message, parse, parse_value
from ttpa_jax.tools.return_values import check_answer, judge_answer

Prediction = str | list[Any]
Key = tuple[str, int]


@dataclass(frozen=True)
class EvalItem:
    """One assistant turn to evaluate.

    id, turn:     the key predictions use (``turn``: the assistant message's index in the record).
    kind:         ``tool_call``, ``answer`` or ``text`` (see ``conversation.Turn``).
    prompt/tools: what the model is given.
    gold_calls:   ``{"name", "arguments"}``; arguments may list acceptable values (``gold_values``).
    reference:    the reference text of answer turns.
    tool_results: tool message contents the answer should draw on.
    category:     a group label (the BFCL category), empty for SFT data.
    """

    id: str
    turn: int
    kind: str
    prompt: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    gold_calls: list[dict[str, Any]] = field(default_factory=list)
    reference: str = ""
    tool_results: list[str] = field(default_factory=list)
    category: str = ""


def items_from_records(records: Sequence[Mapping[str, Any]]) -> list[EvalItem]:
    """Every assistant turn of normalised SFT records but failed calls (tool feedback is an error).
    A record without ``id`` is keyed by its 1-based position in ``records``."""
    items = []
    for pos, record in enumerate(records, start=1):
        rid = str(record.get("id", pos))
        failed = mae_masked_messages(record["messages"])
        for t in iter_turns(record):
            if t.index in failed:
                continue
            items.append(
                EvalItem(rid, t.index, t.kind, t.prompt, record["tools"], calls_from_message(t.message),
                         t.message.get("content") or "", t.tool_results)
            )
    return items


def _rate(hits: int, total: int) -> float | None:
    return hits / total if total else None


def evaluate_items(items: Sequence[EvalItem], predictions: Mapping[Key, Prediction], format: Format = "auto",
                   weights: esm.ErrorWeights | None = None) -> dict[str, Any]:
    """Metrics (see the module doc) for ``predictions`` keyed by ``(id, turn)``, ESM scored with
    ``weights`` (``--esm.*``; None: the defaults). Pure."""
    errors: Counter = Counter({t: 0 for t in esm.ERROR_TYPES})
    kinds = Counter(item.kind for item in items)
    tally: Counter = Counter()
    scores: list[float] = []
    per_turn = []
    for item in items:
        pred = predictions.get((item.id, item.turn))
        if pred is None:
            tally["missing"] += 1
            continue
        row: dict[str, Any] = {"id": item.id, "turn": item.turn, "kind": item.kind, "prediction": pred}
        if item.category:
            row["category"] = item.category
        if item.kind == "tool_call":
            r = esm.score(pred, item.gold_calls, item.tools, weights, format=format)
            e = r.errors
            selected = not (e["format"] or e["tool_hallucination"] or e["wrong_tool"])
            named = selected and not e["param_name"]
            tally.update(tool_call=1, selected=selected, named=named, exact=r.exact, valid=r.parse_status == "ok")
            errors.update(e)
            scores.append(r.score)
            row.update(score=r.score, errors=e, parse_status=r.parse_status, messages=r.messages)
        elif item.kind == "answer":
            needed, found = check_answer(pred if isinstance(pred, str) else "", item.reference, item.tool_results)
            if needed:
                tally.update(answer_v1=1, answer_ok_v1=len(found) == len(needed))
            verdict = judge_answer(pred, item.reference, item.tool_results, item.prompt, format)
            if verdict.judged:
                tally.update(["answer", f"answer_{verdict.reason}"])  # answer_ok, answer_echo, ...
            else:
                tally["answer_unjudged"] += 1
            row.update(return_values={"needed": verdict.needed, "found": verdict.found, "reason": verdict.reason})
        else:
            no_call = not (parse(pred, format) if isinstance(pred, str) else parse_value(pred)).calls
            tally.update(text=1, text_ok=no_call)
            row.update(no_call=no_call)
        per_turn.append(row)
    n = tally["tool_call"]
    return {
        "tool_selection_accuracy": _rate(tally["selected"], n),
        "param_name_accuracy": _rate(tally["named"], n),
        "param_value_accuracy": _rate(tally["exact"], n),
        "format_validity": _rate(tally["valid"], n),
        "esm_score": sum(scores) / len(scores) if scores else None,
        "return_value_accuracy": _rate(tally["answer_ok"], tally["answer"]),
        "return_value_accuracy_v1": _rate(tally["answer_ok_v1"], tally["answer_v1"]),
        "answer_turn_tool_call_rate": _rate(tally["answer_tool_call"], tally["answer"]),
        "answer_echo_rate": _rate(tally["answer_echo"], tally["answer"]),
        "no_call_accuracy": _rate(tally["text_ok"], tally["text"]),
        "errors": dict(errors),
        "esm_weights": dataclasses.asdict(weights or esm.ErrorWeights()),  # what the esm_score was scored with
        "turns": {"tool_call": kinds["tool_call"], "answer": kinds["answer"], "text": kinds["text"]},
        "scored_tool_call_turns": n,
        "judged_answer_turns": tally["answer"],
        "unjudged_answer_turns": tally["answer_unjudged"],
        "judged_answer_turns_v1": tally["answer_v1"],
        "answer_turn_tool_calls": tally["answer_tool_call"],
        "answer_echoes_tool_output": tally["answer_echo"],
        "answer_missing_values": tally["answer_missing_values"],
        "missing_predictions": tally["missing"],
        "per_turn": per_turn,
    }


def evaluate_predictions(records: Sequence[Mapping[str, Any]], predictions: Mapping[Key, Prediction], format: Format = "auto") -> dict[str, Any]:
    """Metrics for normalised SFT ``records`` and ``predictions`` keyed by ``(id, turn)``. Pure."""
    return evaluate_items(items_from_records(records), predictions, format)


def rescore(evaluation: Mapping[str, Any], items: Sequence[EvalItem], format: Format = "auto",
            weights: esm.ErrorWeights | None = None) -> dict[str, Any]:
    """One system's earlier metrics (``evaluate_items``' output, as ``--out`` wrote it under the
    system's name) recomputed under the current rules from the predictions its ``per_turn`` kept."""
    predictions = {(str(row["id"]), row["turn"]): row["prediction"] for row in evaluation["per_turn"]}
    return evaluate_items(items, predictions, format, weights)


_ROWS = [
    ("Tool selection", "tool_selection_accuracy", "pct"),
    ("Parameter names", "param_name_accuracy", "pct"),
    ("Parameter values", "param_value_accuracy", "pct"),
    ("Return-value parsing", "return_value_accuracy", "pct"),
    ("Return-value parsing, earlier rule (v1)", "return_value_accuracy_v1", "pct"),
    ("Answer turns that call a tool", "answer_turn_tool_call_rate", "pct"),
    ("Answer turns that echo the tool output", "answer_echo_rate", "pct"),
    ("No call when none needed", "no_call_accuracy", "pct"),
    ("Format validity", "format_validity", "pct"),
    ("ESM score (mean)", "esm_score", "float"),
] + [(f"Errors: {t}", t, "count") for t in esm.ERROR_TYPES] + [
    ("Tool-call turns scored", "scored_tool_call_turns", "count"),
    ("Answer turns judged", "judged_answer_turns", "count"),
    ("Answer turns unjudged (the reference mentions no result value beyond the inputs)", "unjudged_answer_turns", "count"),
    ("Judged answer turns: tool call", "answer_turn_tool_calls", "count"),
    ("Judged answer turns: echo of the tool output", "answer_echoes_tool_output", "count"),
    ("Judged answer turns: values missing", "answer_missing_values", "count"),
    ("Missing predictions", "missing_predictions", "count"),
]


def _cell(result: Mapping[str, Any], key: str, kind: str) -> str:
    value = result.get("errors", {}).get(key) if kind == "count" and key in esm.ERROR_TYPES else result.get(key)
    if value is None:
        return "–"
    if kind == "pct":
        return f"{100 * value:.1f}%"
    if kind == "float":
        return f"{value:.3f}"
    return str(int(value))


def format_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """A markdown table: one row per metric, one column per system (``{name: metrics}``).

    Rows whose metric is undefined for every system (e.g. no answer turns) are left out.
    """
    names = list(results)
    lines = ["| Metric | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for label, key, kind in _ROWS:
        cells = [_cell(results[n], key, kind) for n in names]
        if all(c == "–" for c in cells):
            continue
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def read_predictions(path: str | Path, items: Sequence[EvalItem]) -> dict[Key, Prediction]:
    """Predictions JSONL: ``{"id", "turn", "prediction"}`` per line (see docs/formats.md).

    ``turn`` may be left out for a record with one evaluated turn. Every line must name a turn of
    the test set, once; ``prediction`` is raw model text or a list of ``{"name", "arguments"}``.
    """
    turns_of: dict[str, list[int]] = {}
    for item in items:
        turns_of.setdefault(item.id, []).append(item.turn)
    out: dict[Key, Prediction] = {}
    for lineno, obj in iter_jsonl(path):
        at = where(path, lineno)
        if not isinstance(obj.get("id"), (str, int)) or isinstance(obj.get("id"), bool):
            raise DataError(f"{at}: 'id' missing or not a string")
        rid = str(obj["id"])
        if rid not in turns_of:
            raise DataError(f"{at}: id {rid!r} is not in the test set")
        turn = obj.get("turn")
        if turn is None:
            if len(turns_of[rid]) != 1:
                raise DataError(f"{at}: 'turn' missing and record {rid!r} has {len(turns_of[rid])} turns to evaluate")
            turn = turns_of[rid][0]
        if not isinstance(turn, int) or isinstance(turn, bool):
            raise DataError(f"{at}: 'turn' must be an integer, got {turn!r}")
        if turn not in turns_of[rid]:
            raise DataError(f"{at}: record {rid!r} has no assistant turn {turn} (turns: {turns_of[rid]})")
        pred = obj.get("prediction")
        if not isinstance(pred, (str, list)):
            raise DataError(f"{at}: 'prediction' must be model text or a list of calls, got {type(pred).__name__}")
        if (rid, turn) in out:
            raise DataError(f"{at}: a second prediction for record {rid!r} turn {turn}")
        out[rid, turn] = pred
    return out


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Normalised SFT records of a JSONL file, a datasets directory or parquet file(s) (errors name
    file:line or row, and field). A record without ``id`` gets its line (row) number as id, the key its
    predictions use."""
    return [{"id": str(n), **normalize_record(obj, at)} for n, at, obj in iter_numbered(path)]
