"""Fine-grained evaluation of tool use: ``python -m ttpa_jax.evaluate``.

Reads a test set (SFT JSONL via ``--data``, or BFCL categories via ``--bfcl``), gets one prediction
per assistant turn (``--predictions FILE`` made elsewhere, ``--model DIR`` decoded here, or
``--endpoint URL``: any OpenAI-compatible server, ``evaluate.endpoint``), and
reports, as a markdown table on stdout and JSON with ``--out``:

tool_selection_accuracy  tool_call turns with the right tools and number of calls (no format,
                         tool_hallucination or wrong_tool error)
param_name_accuracy      ... and no param_name error
param_value_accuracy     ... and no param_type or param_value error (the whole turn exact)
format_validity          tool_call turns whose output parsed cleanly (status ``ok``)
esm_score                mean ESM score over tool_call turns
return_value_accuracy    answer turns whose answer mentions every tool-result value the reference
                         answer mentions (see ``return_values``)
no_call_accuracy         text turns (no tool needed) answered without a tool call
errors                   ESM error counts per type over tool_call turns

``per_turn`` in the JSON holds, for every turn, its prediction (the model's text) next to its
verdict (score, errors, parse status, messages). ``--bfcl`` is scored by bfcl-eval's own checker
instead, with these metrics alongside (``ttpa_jax.evaluate.leaderboard``).

Turns without a prediction are counted in ``missing_predictions`` and left out of the rates. A
tool call answered by an error (an error-recovery episode's failed call) is no gold call: it is not
scored, and ``--data`` runs report how many were left out.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ttpa_jax.core.cli import run as run_cli
from ttpa_jax.core.cli import stage_main
from ttpa_jax.core.conversation import mae_masked_messages
from ttpa_jax.core.jsonl import DataError
from ttpa_jax.evaluate.leaderboard import format_report, run_bfcl
from ttpa_jax.evaluate.metrics import (  # noqa: F401
    EvalItem,
    Key,
    evaluate_items,
    evaluate_predictions,
    format_table,
    items_from_records,
    read_predictions,
    read_records,
)
from ttpa_jax.evaluate.prediction_log import PredictionLog, decoded, received
from ttpa_jax.tools.esm import ErrorWeights


@dataclass
class EvalConfig:
    """Fine-grained tool-use evaluation: tool selection, parameter names and values, return-value
    parsing, format validity, ESM score and error counts."""

    data: Path | None = None
    """SFT JSONL test set ({"messages", "tools"} per line), or the same records as a Hugging Face datasets
    directory (save_to_disk) or parquet file(s); every assistant turn is evaluated."""
    bfcl: str | None = None
    """BFCL categories instead of --data, comma-separated, judged by bfcl-eval's own checker: simple_python,
    simple_java, simple_javascript, multiple, parallel, parallel_multiple, irrelevance, live_simple,
    live_multiple, live_parallel, live_parallel_multiple, live_irrelevance, live_relevance; or the
    groups simple (the three simple sets), non_live, live, all. Read from the installed bfcl-eval package."""
    bfcl_mode: Literal["auto", "fc", "prompt"] = "auto"
    """How BFCL asks the model: fc (tools in the chat template, calls parsed from its tool-call format),
    prompt (BFCL's system prompt and Python-call output parser), auto (fc when the chat template uses tools)."""
    limit: int | None = None
    """BFCL: evaluate only the first N entries of each category (a quick look)."""
    predictions: Path | None = None
    """JSONL of {"id", "turn", "prediction"} per assistant turn, made elsewhere (docs/formats.md)."""
    model: Path | None = None
    """Local HF checkpoint directory to decode the predictions with (instead of --predictions)."""
    endpoint: str | None = None
    """Base URL of an OpenAI-compatible chat endpoint to get the predictions from instead, e.g.
    http://127.0.0.1:8000/v1 (python -m ttpa_jax.serve, vLLM, ...): greedy, tools sent, the answer's
    tool_calls scored (key from OPENAI_API_KEY)."""
    endpoint_model: str | None = None
    """Model name sent to --endpoint (default: the first one it lists)."""
    out: Path | None = None
    """Where to write the metrics as JSON (with per-turn details). With --model or --endpoint, the
    predictions are written next to it as they are made (metrics.json -> metrics.predictions.jsonl)
    and the same command run again continues an interrupted run (``evaluate.prediction_log``)."""
    name: str = "model"
    """Column name of this system in the table."""
    format: Literal["auto", "qwen", "llama"] = "auto"
    """Tool-call format to parse predictions with."""
    esm: ErrorWeights = ErrorWeights()
    """ESM's error weights for the esm_score (what one error of each type costs), as ``sample --esm.*``."""
    max_new_tokens: int = 512
    """Decoding budget per turn (--model and --endpoint)."""
    batch_size: int = 8
    """Prompts decoded together (--model only; with --endpoint, requests in flight)."""
    progress: bool = True
    """Show a progress bar while decoding (--model only)."""


def run(cfg: EvalConfig) -> dict[str, Any]:
    """Evaluate as configured. ``--data``: ``{column: metrics}``. ``--bfcl``: the leaderboard result
    of ``leaderboard.run_bfcl`` (verdicts, columns, and ESM's columns under ``esm``)."""
    if (cfg.data is None) == (cfg.bfcl is None):
        raise DataError("give exactly one test set: --data FILE or --bfcl CATEGORIES")
    if sum(x is not None for x in (cfg.predictions, cfg.model, cfg.endpoint)) != 1:
        raise DataError("give exactly one source of predictions: --predictions FILE, --model DIR or --endpoint URL")
    with PredictionLog(cfg.out if cfg.predictions is None else None, prediction_settings(cfg)) as log:
        if cfg.bfcl is not None:
            return run_bfcl([c.strip() for c in cfg.bfcl.split(",") if c.strip()], name=cfg.name,
                            predictions=cfg.predictions, model=cfg.model, mode=cfg.bfcl_mode, limit=cfg.limit,
                            format=cfg.format, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                            progress=cfg.progress, endpoint=cfg.endpoint, endpoint_model=cfg.endpoint_model,
                            esm=cfg.esm, log=log)
        records = read_records(cfg.data)
        items = items_from_records(records)
        failed = sum(len(mae_masked_messages(r["messages"])) for r in records)
        if failed:
            print(f"{cfg.data}: {failed} failed tool calls (answered by an error) not scored", file=sys.stderr)
        keys, prompts = [(i.id, i.turn) for i in items], [(i.prompt, i.tools) for i in items]
        if cfg.predictions is not None:
            preds = read_predictions(cfg.predictions, items)
        elif cfg.endpoint is not None:
            preds = received(log, keys, prompts, cfg.endpoint, cfg.endpoint_model, cfg.max_new_tokens,
                             cfg.batch_size, cfg.progress)
        else:
            preds = decoded(log, keys, [{"messages": m, "tools": t} for m, t in prompts], str(cfg.model),
                            cfg.max_new_tokens, cfg.batch_size, cfg.progress)
    return {cfg.name: evaluate_items(items, preds, cfg.format, cfg.esm)}


def prediction_settings(cfg: EvalConfig) -> dict[str, Any]:
    """What the predictions depend on (an existing prediction log is continued only with these): the
    test set and the model and its decoding; not the scoring (``--format``, ``--esm.*``, ``--name``)
    nor the endpoint's address, which may move between runs."""
    fields = ("data", "bfcl", "bfcl_mode", "limit", "model", "endpoint_model", "max_new_tokens", "batch_size")
    return {f: None if getattr(cfg, f) is None else str(getattr(cfg, f)) for f in fields}


def report_text(cfg: EvalConfig, result: dict[str, Any]) -> str:
    """What ``main`` prints: the BFCL report, or the fine-grained table."""
    if cfg.bfcl is not None:
        return format_report(result)
    return format_table(result)


@stage_main
def main(argv: Sequence[str] | None = None) -> int:
    import tyro  # kept out of the import of the metrics

    cfg = tyro.cli(EvalConfig, args=argv, prog="python -m ttpa_jax.evaluate")
    columns = run(cfg)
    print(report_text(cfg, columns))
    if cfg.out is not None:
        cfg.out.parent.mkdir(parents=True, exist_ok=True)
        cfg.out.write_text(json.dumps(columns, indent=1, ensure_ascii=False, default=repr) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    run_cli(main)
