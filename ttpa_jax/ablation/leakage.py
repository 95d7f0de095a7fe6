"""Measured query leakage of reversed vs forward construction (no JAX).

For each seed and mode, constructs ``num`` records with the demo's episode settings into a fresh
file and reads, from the construction summary, how many attempts were rejected because the query
named a tool (``query_names_tool``) or a multi-word parameter (``query_names_parameter``); in the
accepted records, counts the queries that contain a single-word parameter name of their tools (the
checks allow those, as everyday words, so this is the leakage that stays in the data).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ttpa_jax.construct.build import ConstructConfig, construct, held_out_path
from ttpa_jax.construct.checks import identifier_words, name_regex
from ttpa_jax.construct.episodes import EpisodeSettings
from ttpa_jax.construct.generators.openai_chat import OpenAISettings
from ttpa_jax.experiments.pipeline import PipelineConfig

MODES = ("reversed", "forward")


def single_word_param_query(record: dict[str, Any]) -> bool:
    """Whether a user message of ``record`` contains a single-word parameter name of its tools."""
    names = {p for t in record.get("tools", []) for p in (t.get("function", t).get("parameters") or {}).get(
        "properties", {}) if len(identifier_words(p)) == 1}
    text = " ".join(str(m.get("content") or "") for m in record.get("messages", []) if m.get("role") == "user")
    folded = text.casefold()
    return any(name_regex(n).search(folded) for n in names)


def measure(seeds: Sequence[int], num: int, out: Path, cfg: PipelineConfig | None = None,
            generator: str = "template", openai_model: str = "gpt-4o-mini") -> dict[str, Any]:
    """``{"seeds", "records", "modes": {mode: {attempts, query_names_tool, query_names_parameter,
    single_word_param_queries, records}}, "per_seed": ...}`` summed over seeds."""
    cfg = cfg or PipelineConfig.pretrained(Path(out), "unused", progress=False)
    totals = {m: {"attempts": 0, "query_names_tool": 0, "query_names_parameter": 0, "single_word_param_queries": 0,
                  "records": 0} for m in MODES}
    per_seed = []
    for seed in seeds:
        for mode in MODES:
            path = Path(out) / f"seed{seed}" / f"{mode}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            for p in (path, held_out_path(path)):
                p.unlink(missing_ok=True)  # fresh: the summary must count every attempt
            episode = EpisodeSettings(mode=mode, min_calls=1, max_calls=cfg.max_calls, min_candidates=cfg.min_candidates,
                                      max_candidates=cfg.max_candidates, follow_up=0.1)
            s = construct(ConstructConfig(out=path, num=num, seed=seed, episode=episode, split=0.2, generator=generator,
                                          openai=OpenAISettings(model=openai_model),
                                          error_recovery=cfg.error_recovery, system_prompt="", progress=False))
            records = [json.loads(line) for p in (path, held_out_path(path)) if p.is_file()
                       for line in p.read_text().splitlines() if line.strip()]
            row = {"seed": seed, "mode": mode, "attempts": s.attempts,
                   "query_names_tool": s.rejected.get("query_names_tool", 0),
                   "query_names_parameter": s.rejected.get("query_names_parameter", 0),
                   "single_word_param_queries": sum(map(single_word_param_query, records)), "records": len(records)}
            per_seed.append(row)
            for k in totals[mode]:
                totals[mode][k] += row[k]
    name = generator if generator == "template" else f"openai ({openai_model})"
    return {"generator": name, "seeds": list(seeds), "records": num, "modes": totals, "per_seed": per_seed}
