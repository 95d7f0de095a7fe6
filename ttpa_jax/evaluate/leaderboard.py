"""``evaluate --bfcl``: BFCL scored the way the leaderboard scores it, with ESM's view alongside.

For every entry: the model's output (``--predictions`` or decoded with ``--model``), decoded the
way the mode asks (``bfcl_checker.decode_fc`` / ``decode_prompt``), judged by bfcl-eval's own
checker (``bfcl_checker.judge``); per-category accuracy; the leaderboard's columns
(``bfcl_checker.leaderboard``). ESM scores the same decoded calls (prompt mode) or the same text
(function-calling mode) for the fine-grained view.

Modes: ``fc`` gives the functions as tools through the model's chat template and parses its
tool-call format; ``prompt`` puts BFCL's system prompt (the functions as JSON, Python-call output
format) first and gives no tools; ``auto`` is ``fc`` when the model's chat template reads ``tools``,
else ``prompt`` (with ``--predictions``, where there is no template to read, ``auto`` is ``fc``).
Predictions given as lists of ``{"name", "arguments"}`` are taken as decoded in either mode.

JAX-free: decoding (``ttpa_jax.decode``) is imported only when ``--model`` is given.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ttpa_jax.core.jsonl import DataError
from ttpa_jax.evaluate import bfcl, bfcl_checker
from ttpa_jax.evaluate.metrics import evaluate_items, format_table, read_predictions
from ttpa_jax.evaluate.prediction_log import PredictionLog, decoded, received
from ttpa_jax.model.config import load_config
from ttpa_jax.text.prompts import encode_prompt, load_tokenizer
from ttpa_jax.tools.calls import Format
from ttpa_jax.tools.esm import ErrorWeights


def template_uses_tools(template: Any) -> bool:
    """Whether a chat template (a string, or named templates) reads a ``tools`` variable."""
    if isinstance(template, Mapping):
        return any(template_uses_tools(t) for t in template.values())
    if isinstance(template, list):
        return any(template_uses_tools(t.get("template") if isinstance(t, Mapping) else t) for t in template)
    return isinstance(template, str) and re.search(r"\btools\b", template) is not None


def resolve_mode(mode: str, model_dir: str | Path | None) -> bfcl.Mode:
    """``fc`` or ``prompt`` for ``--bfcl-mode`` (``auto`` reads the model's chat template)."""
    if mode in ("fc", "prompt"):
        return mode  # type: ignore[return-value]
    if mode != "auto":
        raise DataError(f"--bfcl-mode must be fc, prompt or auto, got {mode!r}")
    if model_dir is None:
        return "fc"
    from ttpa_jax.model.base_models import resolve_model  # a base model name or FILE.gguf -> its directory
    from ttpa_jax.text.prompts import load_tokenizer

    template = getattr(load_tokenizer(resolve_model(model_dir)), "chat_template", None)
    return "fc" if template_uses_tools(template) else "prompt"


def _jsonable(value: Any) -> Any:
    """Decoded model output as JSON (BFCL's decoder may return tuples or other Python values)."""
    return json.loads(json.dumps(value, ensure_ascii=False, default=repr))


def _as_calls(decoded: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"name": name, "arguments": args} for item in decoded for name, args in item.items()]


def judge_all(entries: Sequence[bfcl.Entry], predictions: Mapping[tuple[str, int], Any], mode: bfcl.Mode,
              format: Format = "auto") -> tuple[list[dict[str, Any]], dict[tuple[str, int], Any]]:
    """Per-entry verdict rows, and what ESM scores per entry (decoded calls in prompt mode, else the
    output itself). Entries without a prediction are left out (as BFCL's partial evaluation does)."""
    rows, for_esm = [], {}
    for e in entries:
        key = (e.id, len(e.question))
        if key not in predictions:
            continue
        output = predictions[key]
        decoded, verdict = bfcl_checker.decode_and_judge(e.category, e.functions, e.ground_truth, output, mode, format)
        rows.append({"id": e.id, "category": e.category, "valid": verdict.valid, "error": _jsonable(verdict.error),
                     "error_type": verdict.error_type, "prediction": output,
                     "decoded": None if decoded is None else _jsonable(decoded)})
        fine_view = output
        if mode == "prompt" and isinstance(output, str) and decoded is not None \
                and bfcl_checker.is_call_list(decoded):
            fine_view = _as_calls(decoded)
        for_esm[key] = fine_view
    return rows, for_esm


def generate(entries: Sequence[bfcl.Entry], mode: bfcl.Mode, model_dir: str, max_new_tokens: int, batch_size: int,
             progress: bool, log: PredictionLog | None = None) -> tuple[dict[tuple[str, int], str], list[str]]:
    """Decode one output per entry with our decoder, prompted the way ``mode`` asks.

    An entry whose prompt and budget exceed the model's context is not decoded: its output is empty
    (BFCL records the server's error text, which decodes to no call just the same). Returns the
    outputs and the ids of those entries. ``log``: where outputs are written as they are decoded (and
    read back from, when continuing a run).
    """
    from ttpa_jax.model.base_models import resolve_model

    model_dir = resolve_model(model_dir)
    tokenizer, context = load_tokenizer(model_dir), load_config(model_dir).max_position_embeddings
    fits, prompts, too_long = [], [], []
    for e in entries:
        messages, tools = bfcl.prompt_of(e, mode)
        prompt = {"messages": messages, "tools": tools}
        if len(encode_prompt(tokenizer, prompt, e.id)) + max_new_tokens > context:
            too_long.append(e.id)
        else:
            fits.append(e)
            prompts.append(prompt)
    outputs = decoded(log or PredictionLog(None, {}), [(e.id, len(e.question)) for e in fits], prompts,
                      str(model_dir), max_new_tokens, batch_size, progress)
    outputs.update({(e.id, len(e.question)): "" for e in entries if e.id in set(too_long)})
    return outputs, too_long


def run_bfcl(categories: Sequence[str], *, name: str = "model", predictions: Path | None = None,
             model: Path | None = None, mode: str = "auto", limit: int | None = None, format: Format = "auto",
             max_new_tokens: int = 512, batch_size: int = 8, progress: bool = True, endpoint: str | None = None,
             endpoint_model: str | None = None, esm: ErrorWeights | None = None,
             log: PredictionLog | None = None) -> dict[str, Any]:
    """The BFCL result (ESM's columns scored with ``esm``, the ``--esm.*`` weights): ``mode``, ``categories`` (accuracy per category), ``leaderboard`` (its
    columns), ``entries`` (verdict, error, prediction and decoded calls per entry), ``esm``
    (``{column: fine-grained metrics}``, all and per category), ``missing_predictions`` and
    ``prompts_too_long`` (ids not decoded, see ``generate``). ``log``: where predictions made here are
    written as they come (``prediction_log``; None: kept in memory)."""
    log = log or PredictionLog(None, {})
    if sum(x is not None for x in (predictions, model, endpoint)) != 1:
        raise DataError("give exactly one source of predictions: --predictions FILE, --model DIR or --endpoint URL")
    chosen = bfcl.load_entries(list(categories), limit)
    resolved = resolve_mode(mode, model)
    if predictions is not None:
        # keyed against every BFCL entry, so one file made for all of BFCL serves any subset and --limit
        preds, too_long = read_predictions(predictions, bfcl.to_items(bfcl.load_entries(["all"]))), []
    elif endpoint is not None:  # what the endpoint's client receives (its tool_calls, else its text)
        preds = received(log, [(e.id, len(e.question)) for e in chosen], [bfcl.prompt_of(e, resolved) for e in chosen],
                         endpoint, endpoint_model, max_new_tokens, batch_size, progress)
        too_long = []
    else:
        preds, too_long = generate(chosen, resolved, str(model), max_new_tokens, batch_size, progress, log)
    rows, for_esm = judge_all(chosen, preds, resolved, format)
    scores = bfcl_checker.category_scores([(r["category"], r["valid"]) for r in rows])
    items = [i for i in bfcl.to_items(chosen) if i.kind == "text" or i.gold_calls]
    esm_columns = {name: evaluate_items(items, for_esm, format, esm)}
    for cat in dict.fromkeys(i.category for i in items):
        sub = evaluate_items([i for i in items if i.category == cat], for_esm, format, esm)
        sub.pop("per_turn")
        esm_columns[f"{name} {cat}"] = sub
    return {"name": name, "mode": resolved, "limit": limit, "categories": scores,
            "leaderboard": bfcl_checker.leaderboard(scores), "missing_predictions": len(chosen) - len(rows),
            "prompts_too_long": too_long,
            "entries": rows, "esm": esm_columns}


def _pct(value: float | None) -> str:
    return "N/A" if value is None else f"{100 * value:.1f}"


def format_report(result: Mapping[str, Any]) -> str:
    """Markdown: per-category accuracy, the leaderboard's columns, then ESM's table."""
    limit = "" if result.get("limit") is None else f", first {result['limit']} per category"
    lines = [f"BFCL ({result['mode']} mode{limit})",
             "", "| Category | Accuracy | Correct | Entries |", "|---|---:|---:|---:|"]
    for cat, s in result["categories"].items():
        lines.append(f"| {cat} | {_pct(s['accuracy'])} | {s['correct_count']} | {s['total_count']} |")
    lines += ["", "| Leaderboard column | " + result["name"] + " |", "|---|---:|"]
    for column, value in result["leaderboard"].items():
        lines.append(f"| {column} | {_pct(value['display_accuracy'])} |")
    if result.get("prompts_too_long"):
        lines += ["", f"{len(result['prompts_too_long'])} prompts did not fit the model's context with the decoding "
                      "budget: not decoded, judged as an empty output."]
    if result.get("missing_predictions"):
        lines += ["", f"{result['missing_predictions']} entries had no prediction and are left out."]
    lines += ["", "ESM's fine-grained view of the same predictions:", "", format_table(result["esm"])]
    return "\n".join(lines)
