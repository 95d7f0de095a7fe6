"""``python -m ttpa_jax.sample``: preference pairs from a model's own tool calls.

For every assistant tool-call turn of the SFT records in ``--data``, candidates are decoded, each is
scored with ESM against the turn's gold calls, and pairs are selected (``pairs.select_pairs``):
chosen = the best candidate when error-free, else the gold call; rejected = candidates scoring at
least ``--margin`` lower. Output: TRL conversational preference records ``{"prompt", "chosen",
"rejected", "tools", "meta"}``; ``meta`` carries the branch position and gap, both sides' scores,
error counts, sources (greedy, branch, sample, gold) and generated token ids, and how many leading
tokens the two sides share.

Modes:
  ``tps``         token-level preference sampling (``ttpa_jax.decode.tps``): the greedy decode plus forced
                  branches at uncertain tokens; a branch shares the greedy prefix up to its token.
  ``trajectory``  ``--num-samples`` full samples at ``--temperature`` (the baseline TTPA is compared
                  with): no shared prefixes.
"""

from __future__ import annotations

import dataclasses
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from ttpa_jax.tools import esm
from ttpa_jax.core.conversation import iter_turns, mae_masked_messages, normalize_record
from ttpa_jax.text.detokenize import finish, stop_token_sequences
from ttpa_jax.core.jsonl import DataError, iter_jsonl, where, write_jsonl
from ttpa_jax.sample.pairs import select_pairs
from ttpa_jax.text.prompts import check_length, encode_chat, eos_token_ids, load_tokenizer
from ttpa_jax.decode.rules import Sampling
from ttpa_jax.tools.calls import calls_from_message, message_from_calls, message_from_text, render
from ttpa_jax.decode.tps import TPSConfig, tps


@dataclasses.dataclass
class SampleConfig:
    """Sample candidate tool calls, score them with ESM, and write preference pairs."""

    model: Path
    """Local HF model directory (the policy to sample from)."""
    data: Path
    """SFT JSONL ({"messages", "tools"} per line); every assistant tool-call turn is a prompt."""
    out: Path
    """Output JSONL of preference records {"prompt", "chosen", "rejected", "tools", "meta"}."""
    mode: Literal["tps", "trajectory"] = "tps"
    """tps: greedy + token-level branches; trajectory: independent samples at a temperature."""
    max_new_tokens: int = 256
    """Token budget per candidate."""
    batch_size: int = 8
    """Prompts decoded together."""
    epsilon: float = 0.1
    """tps: branch where the top-1/top-2 probability gap is below this."""
    top_k: int = 2
    """tps: tokens considered per branch point; each of the top_k except the greedy one is forced."""
    dynamic_m: int = 0
    """tps: when fewer than m gaps fall below epsilon, branch at the m smallest gaps (0: off)."""
    max_branch_points: int = 4
    """tps: most branch points per prompt (smallest gaps first)."""
    num_samples: int = 4
    """trajectory: samples per prompt."""
    temperature: float = 1.0
    """trajectory: sampling temperature."""
    top_p: float = 1.0
    """trajectory: nucleus sampling threshold."""
    seed: int = 0
    """trajectory: sampling seed."""
    margin: float = 0.1
    """A candidate is rejected when it scores at least this much below the chosen side."""
    stop: tuple[str, ...] = ()
    """Stop strings (e.g. </tool_call> to end at the first call); the EOS always ends a candidate."""
    format: Literal["auto", "qwen", "llama"] = "auto"
    """Tool-call format of the model's output ("auto": detect; gold calls are rendered as qwen
    when the chat template has <tool_call>, else llama)."""
    weights: dict[str, float] = dataclasses.field(default_factory=dict)
    """ESM error weights to override, e.g. --weights param_value 0.3 wrong_tool 0.8."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Parameter and compute dtype ("auto": the checkpoint's)."""
    progress: bool = True
    """Show a progress bar."""


@dataclasses.dataclass
class Candidate:
    text: str
    tokens: list[int]
    source: str  # greedy | branch | sample
    branch: dict[str, Any] | None = None  # position, gap, token_id, rank, prob


@dataclasses.dataclass
class Prompt:
    """One tool-call turn to sample."""

    record_id: str
    turn: int
    messages: list[dict]
    tools: list[dict]
    gold: list[dict]
    ids: list[int]


def read_prompts(path: Path, tokenizer, max_new_tokens: int, max_positions: int) -> tuple[int, list[Prompt]]:
    """(records read, one Prompt per assistant tool-call turn); errors name file:line. A call whose
    tool feedback is an error (an error-recovery episode's failed call, which MAE masks) is no gold
    call to prefer: its turn is left out."""
    n_records, prompts = 0, []
    for lineno, obj in iter_jsonl(path):
        src = where(path, lineno)
        rec = normalize_record(obj, src)
        n_records += 1
        failed = mae_masked_messages(rec["messages"])
        for t in iter_turns(rec):
            if t.kind != "tool_call" or t.index in failed:
                continue
            ids = encode_chat(tokenizer, t.prompt, rec["tools"])
            check_length(len(ids), max_new_tokens, max_positions, f"{src} (turn {t.index})")
            prompts.append(Prompt(str(rec.get("id", lineno)), t.index, t.prompt, rec["tools"],
                                  calls_from_message(t.message), ids))
    return n_records, prompts


def tps_candidates(model, tokenizer, prompts: list[Prompt], cfg: SampleConfig, eos, bar) -> tuple[list[list[Candidate]], int]:
    """Greedy + branch candidates per prompt, and the number of branch points."""
    stop_seqs = stop_token_sequences(tokenizer, cfg.stop)
    tcfg = TPSConfig(cfg.epsilon, cfg.top_k, cfg.dynamic_m, cfg.max_branch_points)
    results = tps(model, [p.ids for p in prompts], max_new_tokens=cfg.max_new_tokens, config=tcfg,
                  batch_size=cfg.batch_size, eos_ids=eos, stop_token_seqs=stop_seqs, progress=bar.update)
    out, n_points = [], 0
    for res in results:
        n_points += len(res.branch_points)
        g = finish(tokenizer, res.greedy, eos, cfg.stop)
        cands = [Candidate(g.text, g.token_ids, "greedy")]
        for b in res.branches:
            c = finish(tokenizer, b.tokens, eos, cfg.stop)
            info = {"position": b.position, "gap": b.gap, "token_id": b.token_id, "rank": b.rank, "prob": b.prob}
            cands.append(Candidate(c.text, c.token_ids, "branch", info))
        out.append(cands)
    return out, n_points


def trajectory_candidates(model, tokenizer, prompts: list[Prompt], cfg: SampleConfig, eos, bar) -> list[list[Candidate]]:
    from ttpa_jax.decode.generate import complete

    n = cfg.num_samples
    flat = [p.ids for p in prompts for _ in range(n)]
    done = complete(model, tokenizer, flat, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                    sampling=Sampling(cfg.temperature, 0, cfg.top_p), seed=cfg.seed, stop=cfg.stop, eos_ids=eos)
    bar.update(len(prompts))
    return [[Candidate(c.text, c.token_ids, "sample") for c in done[i * n:(i + 1) * n]] for i in range(len(prompts))]


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def pair_records(prompt: Prompt, cands: list[Candidate], scores: list[esm.ScoreResult], cfg: SampleConfig,
                 gold_format: str) -> list[dict]:
    """Preference records of one prompt from its scored candidates."""
    gold_calls = esm.resolve_gold(prompt.gold, prompt.tools)
    gold_text = render(gold_calls, gold_format)
    by_text: dict[str, tuple[Candidate, esm.ScoreResult]] = {}
    for c, s in zip(cands, scores):
        by_text.setdefault(c.text, (c, s))
    records = []
    for chosen_text, rejected_text, chosen_score, rejected_score in select_pairs(
            [(c.text, s) for c, s in zip(cands, scores)], gold_text, cfg.margin):
        rc, rs = by_text[rejected_text]
        if chosen_text in by_text:
            cc, cs = by_text[chosen_text]
            chosen_msg = message_from_text(chosen_text, cfg.format)
            chosen_meta = {"chosen_source": cc.source, "chosen_errors": cs.errors, "chosen_branch": cc.branch,
                           "chosen_token_ids": cc.tokens}
            shared = _common_prefix(cc.tokens, rc.tokens)
        else:
            chosen_msg = message_from_calls(gold_calls)
            chosen_meta = {"chosen_source": "gold", "chosen_errors": {}, "chosen_branch": None, "chosen_token_ids": None}
            shared = 0
        branch = rc.branch or chosen_meta["chosen_branch"] or {}
        meta = {
            "id": prompt.record_id, "turn": prompt.turn, "mode": cfg.mode,
            "branch_position": branch.get("position"), "gap": branch.get("gap"),
            "chosen_score": chosen_score, "rejected_score": rejected_score, **chosen_meta,
            "rejected_source": rc.source, "rejected_errors": rs.errors, "rejected_branch": rc.branch,
            "rejected_token_ids": rc.tokens, "shared_prefix_tokens": shared,
        }
        records.append({"prompt": prompt.messages, "chosen": [chosen_msg],
                        "rejected": [message_from_text(rejected_text, cfg.format)], "tools": prompt.tools,
                        "meta": meta})
    return records


def sample(config: SampleConfig, *, model=None, tokenizer=None) -> dict[str, Any]:
    """Run sampling as configured and write ``config.out``; returns the summary.

    ``model`` / ``tokenizer``: already-loaded ones to use instead of loading ``config.model``.
    """
    from tqdm.auto import tqdm

    from ttpa_jax.model.config import load_config
    from ttpa_jax.decode.generate import load_model

    unknown = sorted(set(config.weights) - set(esm.ERROR_TYPES))
    if unknown:
        raise DataError(f"--weights: unknown error type {unknown[0]!r} (known: {', '.join(esm.ERROR_TYPES)})")
    weights = esm.ErrorWeights(**config.weights)
    tokenizer = load_tokenizer(config.model) if tokenizer is None else tokenizer
    cfg_model = model.config if model is not None else load_config(config.model)
    n_records, prompts = read_prompts(config.data, tokenizer, config.max_new_tokens, cfg_model.max_position_embeddings)
    model = load_model(config.model, config.dtype) if model is None else model
    eos = eos_token_ids(model.config, tokenizer, config.model)
    gold_format = "qwen" if "<tool_call>" in (getattr(tokenizer, "chat_template", None) or "") else "llama"
    if config.format != "auto":
        gold_format = config.format
    n_points = 0
    with tqdm(total=len(prompts), desc=f"sample ({config.mode})", unit="prompt", disable=not config.progress) as bar:
        if config.mode == "tps":
            all_cands, n_points = tps_candidates(model, tokenizer, prompts, config, eos, bar)
        else:
            all_cands = trajectory_candidates(model, tokenizer, prompts, config, eos, bar)
    errors, exact, records = Counter(), 0, []
    for prompt, cands in zip(prompts, all_cands, strict=True):
        scores = [esm.score(c.text, prompt.gold, prompt.tools, weights, config.format) for c in cands]
        for s in scores:
            errors.update({k: v for k, v in s.errors.items() if v})
            exact += s.exact
        records.extend(pair_records(prompt, cands, scores, config, gold_format))
    write_jsonl(config.out, records)
    n_cands = sum(len(c) for c in all_cands)
    return {
        "records": n_records, "prompts": len(prompts), "branch_points": n_points,
        "branches": sum(c.source == "branch" for cs in all_cands for c in cs), "candidates": n_cands,
        "pairs": len(records), "exact_candidates": exact, "errors": dict(sorted(errors.items())), "out": str(config.out),
    }


def format_summary(s: dict[str, Any]) -> str:
    lines = [f"{s['records']} records, {s['prompts']} tool-call prompts, {s['branch_points']} branch points, "
             f"{s['branches']} branches, {s['candidates']} candidates, {s['pairs']} pairs -> {s['out']}",
             f"error types over candidates ({s['exact_candidates']} exact):"]
    for name in esm.ERROR_TYPES:
        lines.append(f"  {name:<20} {s['errors'].get(name, 0)}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    import tyro

    from ttpa_jax.model.config import ConfigError
    from ttpa_jax.model.hf_io import CheckpointError

    cfg = tyro.cli(SampleConfig, args=argv)
    try:
        summary = sample(cfg)
    except (DataError, ConfigError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
