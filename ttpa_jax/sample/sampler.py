"""``python -m ttpa_jax.sample``: preference pairs from a model's own tool calls and answers.

For every assistant tool-call turn of the SFT records in ``--data`` (and, with
``--tps.answer-turns``, every final-answer turn after tool results), candidates are decoded and
scored (ESM against the turn's gold calls; the return-value metric for answers), and pairs are
selected on token ids (``pairs.select_pairs``): chosen = the best candidate, error-free or not; the
gold completion when the best scores below ``--gold-below``; rejected = candidates scoring at least
``--margin`` lower. Output: TRL conversational preference records with the token ids DPO trains on
(``records``), and the pair audit next to them (``<out>.audit.json``, also printed). Pairs are
written as each prompt finishes, and the same command run again continues an interrupted run
(``output``): a killed run loses at most the batch it was decoding.

Modes:
  ``tps``         token-level preference sampling (``ttpa_jax.decode.tps``): the greedy decode plus forced
                  branches at uncertain tokens inside tool calls; a branch shares the greedy prefix up to
                  its token. With ``--tps.anchor gold`` (this project's choice, not the TTPA paper's),
                  tool-call turns branch from the gold completion instead: the model reads it in one
                  forward pass, and where its top-1 token is not the gold one (or the top-1/top-2 gap is
                  below epsilon) inside the call, the model's alternative token is forced after the gold
                  prefix and decoded greedily on; each pair is the gold completion against such a branch
                  scoring at least ``--margin`` below it (pair kind ``gold_anchored``), so the pairs
                  are about the tokens the model itself gets wrong. Answer turns branch as in TPS.
  ``trajectory``  ``--num-samples`` full samples at ``--decoding.temperature`` (the baseline TTPA is
                  compared with): no shared prefixes.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from tqdm.auto import tqdm

from ttpa_jax.core.cli import require_paths, run, stage_main
from ttpa_jax.core.jsonl import DataError
from ttpa_jax.decode.settings import Decoding, TPSConfig
from ttpa_jax.model.base_models import resolve_model
from ttpa_jax.model.config import load_config
from ttpa_jax.sample.audit import audit_path, build_audit, format_audit, write_audit
from ttpa_jax.sample.candidates import (
    Candidate,
    Finished,
    Prompt,
    anchored_candidates,
    read_prompts,
    score_candidate,
    tps_candidates,
    trajectory_candidates,
)
from ttpa_jax.sample.output import PairOutput
from ttpa_jax.sample.pairs import no_pair_reason
from ttpa_jax.sample.records import gold_ids, pair_records
from ttpa_jax.text.prompts import eos_token_ids, load_tokenizer
from ttpa_jax.tools import esm

__all__ = ["SampleConfig", "Candidate", "Prompt", "pair_records", "sample", "format_summary", "main"]


@dataclasses.dataclass
class SampleConfig:
    """Sample candidate tool calls (and answers), score them, and write preference pairs with an audit."""

    model: Path
    """Local HF model directory (the policy to sample from)."""
    data: Path
    """SFT records ({"messages", "tools"}): JSONL, a Hugging Face datasets directory (save_to_disk) or
    parquet file(s); every assistant tool-call turn is a prompt (and, with
    --tps.answer-turns, every final answer after tool results)."""
    out: Path
    """Output JSONL of preference records {"prompt", "chosen", "rejected", "tools", "prompt_ids",
    "chosen_ids", "rejected_ids", "chosen_source", "meta"}, written as prompts finish (their outcomes in
    <out>.prompts.jsonl); the audit goes to <out>.audit.json. Rerunning the same command continues an
    interrupted run; other settings against an existing file are refused."""
    mode: Literal["tps", "trajectory"] = "tps"
    """tps: greedy + token-level branches; trajectory: independent samples at --decoding.temperature."""
    decoding: Decoding = Decoding()
    """Token budget, batch, stop strings; the temperature of trajectory mode (tps decodes greedily)."""
    tps: TPSConfig = TPSConfig()
    """Where TPS branches and how wide; --tps.anchor gold: tool-call turns branch from the gold
    completion (gold-anchored pairs, this project's option, not the TTPA paper's)."""
    num_samples: int = 4
    """trajectory: samples per prompt."""
    margin: float = 0.1
    """A candidate is rejected when it scores at least this much below the chosen side."""
    gold_below: float = 0.8
    """When the best candidate scores below this, the gold completion is the chosen side (marked
    "chosen_source": "gold"); 0: the chosen side is always sampled."""
    format: Literal["auto", "qwen", "llama"] = "auto"
    """Tool-call format of the model's output ("auto": detect)."""
    esm: esm.ErrorWeights = esm.ErrorWeights()
    """ESM's error weights (what one error of each type costs), e.g. --esm.param-value 0.3 --esm.wrong-tool 0.8."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Parameter and compute dtype ("auto": the checkpoint's)."""
    progress: bool = True
    """Show a progress bar."""


def _check(config: SampleConfig) -> esm.ErrorWeights:
    if config.mode == "trajectory" and config.decoding.temperature <= 0:
        raise DataError("--mode trajectory samples: give --decoding.temperature > 0 (e.g. 1.0)")
    if config.margin <= 0:
        raise DataError(f"--margin must be positive, got {config.margin}")
    return config.esm


def run_settings(config: SampleConfig) -> dict[str, Any]:
    """What the pairs depend on: every setting but ``out`` and ``progress``, as JSON values. A run
    continues an existing ``--out`` only with these unchanged."""
    fields = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("out", "progress")}
    return json.loads(json.dumps(fields, default=str))


def sample(config: SampleConfig, *, model=None, tokenizer=None) -> dict[str, Any]:
    """Run sampling as configured; write ``config.out`` as it goes, then its audit; returns the summary.

    Rerun with the same settings, it continues an interrupted run (``sample.output``): the pairs of
    the prompts already done are kept, the rest are made, and the file ends as a whole run's would.
    ``model`` / ``tokenizer``: already-loaded ones to use instead of loading ``config.model``.
    """
    from ttpa_jax.decode.generate import load_model  # deferred: keeps this module JAX-free

    config = dataclasses.replace(config, model=str(resolve_model(config.model)))  # a base model name or FILE.gguf -> its directory
    weights = _check(config)
    tokenizer = load_tokenizer(config.model) if tokenizer is None else tokenizer
    cfg_model = model.config if model is not None else load_config(config.model)
    skipped: Counter = Counter()
    answer_turns = config.mode == "tps" and config.tps.answer_turns
    n_records, prompts = read_prompts(config.data, tokenizer, config.decoding.max_new_tokens,
                                      cfg_model.max_position_embeddings, answer_turns, skipped)
    with PairOutput(config.out, run_settings(config)) as output:
        todo = [p for p in prompts if not output.done(p)]
        if todo:
            model = load_model(config.model, config.dtype) if model is None else model
            eos = eos_token_ids(model.config, tokenizer, config.model)
            done = [output.done(p) for p in prompts]
            anchored = config.mode == "tps" and config.tps.anchor == "gold"
            golds = {i: gold_ids(tokenizer, p, f"{p.record_id} turn {p.turn}") for i, p in enumerate(prompts)
                     if anchored and p.kind == "tool_call"}  # done ones too: a batch decodes as in a whole run
            with tqdm(total=len(prompts), initial=len(prompts) - len(todo), desc=f"sample ({config.mode})",
                      unit="prompt", disable=not config.progress) as bar:
                if anchored:
                    batches = _gold_anchored(model, tokenizer, prompts, golds, config, eos, done)
                elif config.mode == "tps":
                    batches = tps_candidates(model, tokenizer, prompts, config.decoding, config.tps, eos, done.__getitem__)
                else:
                    batches = trajectory_candidates(model, tokenizer, prompts, config.decoding, config.num_samples,
                                                    eos, done.__getitem__)
                for finished in batches:
                    for i, cands, points in finished:
                        output.write(prompts[i], *_pairs_of(prompts[i], cands, points, weights, tokenizer, config,
                                                            golds.get(i)))
                    bar.update(len(finished))
        outcomes, records = output.outcomes(), output.records()
    audit = build_audit(records, outcomes, dict(skipped))
    write_audit(audit_path(config.out), audit)
    errors = Counter()
    for o in outcomes:
        errors.update(o["errors"])
    return {
        "records": n_records, "prompts": len(prompts),
        "tool_call_prompts": sum(p.kind == "tool_call" for p in prompts),
        "answer_prompts": sum(p.kind == "answer" for p in prompts),
        "branch_points": sum(o["branch_points"] for o in outcomes),
        "branches": sum(o["branches"] for o in outcomes), "candidates": sum(o["candidates"] for o in outcomes),
        "pairs": len(records), "exact_candidates": sum(o["exact"] for o in outcomes),
        "errors": dict(sorted(errors.items())), "out": str(config.out), "audit": audit,
        "audit_path": str(audit_path(config.out)),
    }


def _gold_anchored(model, tokenizer, prompts: list[Prompt], golds: dict[int, list[int]], config: SampleConfig, eos,
                   done: list[bool]) -> Iterator[Finished]:
    """--tps.anchor gold: the tool-call prompts' gold-anchored candidates, then the answer prompts'
    TPS candidates, per decoded batch (prompt indices into ``prompts``; ``golds``: the gold completion
    ids of the tool-call prompts)."""
    calls = [i for i, p in enumerate(prompts) if p.kind == "tool_call"]
    answers = [i for i, p in enumerate(prompts) if p.kind != "tool_call"]
    gold = [golds[i] for i in calls]
    parts = [(calls, anchored_candidates(model, tokenizer, [prompts[i] for i in calls], gold, config.decoding,
                                         config.tps, eos, lambda j: done[calls[j]])),
             (answers, tps_candidates(model, tokenizer, [prompts[i] for i in answers], config.decoding, config.tps,
                                      eos, lambda j: done[answers[j]]))]
    for idx, batches in parts:
        if idx:
            for finished in batches:
                yield [(idx[j], cands, points) for j, cands, points in finished]


def _pairs_of(prompt: Prompt, cands: list[Candidate], points: int, weights: esm.ErrorWeights, tokenizer,
              config: SampleConfig, g_ids: list[int] | None = None) -> tuple[list[dict], dict[str, Any]]:
    """One prompt's preference records and its outcome (what the audit and the summary count)."""
    scores = [score_candidate(c.text, prompt, weights, config.format) for c in cands]
    errors: Counter = Counter()
    for s in scores:
        errors.update({k: v for k, v in s.errors.items() if v})
    made = pair_records(prompt, cands, scores, tokenizer=tokenizer, mode=config.mode, margin=config.margin,
                        gold_below=config.gold_below, g_ids=g_ids)
    anchored = g_ids is not None
    distinct = len({tuple(c.tokens) for c in cands})
    locations = sorted({(c.branch["position"], c.branch["location"]) for c in cands if c.branch})
    return made, {"id": prompt.record_id, "turn": prompt.turn, "kind": prompt.kind, "candidates": len(cands),
                  "distinct": distinct, "branch_points": points, "branch_locations": [loc for _, loc in locations],
                  "pairs": len(made),
                  "reason": None if made else no_pair_reason(len(cands), distinct, points, config.mode, anchored),
                  "branches": sum(c.source in ("branch", "anchored") for c in cands),
                  "exact": sum(s.exact for s in scores),
                  "errors": dict(sorted(errors.items()))}


def format_summary(s: dict[str, Any]) -> str:
    lines = [f"{s['records']} records, {s['tool_call_prompts']} tool-call prompts, {s['answer_prompts']} answer "
             f"prompts, {s['branch_points']} branch points, {s['branches']} branches, {s['candidates']} candidates, "
             f"{s['pairs']} pairs -> {s['out']}",
             f"error types over candidates ({s['exact_candidates']} exact):"]
    for name in (*esm.ERROR_TYPES, "missed_values", "answer_tool_call", "answer_echo"):
        lines.append(f"  {name:<20} {s['errors'].get(name, 0)}")
    lines.append(f"audit -> {s['audit_path']}")
    lines.extend("  " + line for line in format_audit(s["audit"]).splitlines())
    return "\n".join(lines)


@stage_main
def main(argv: Sequence[str] | None = None) -> int:
    import tyro  # kept out of the import of the sampling functions

    cfg = tyro.cli(SampleConfig, args=argv, prog="python -m ttpa_jax.sample")
    require_paths(cfg.data)  # --model may also name a base model (resolved when loading)
    print(format_summary(sample(cfg)))
    return 0


if __name__ == "__main__":
    run(main)
