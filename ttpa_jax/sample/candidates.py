"""The prompts ``sample`` decodes and the candidates it scores.

A prompt is one assistant turn of an SFT record: a tool-call turn (scored by ESM against the
turn's gold calls) or, with ``--tps.answer-turns``, a final-answer turn after tool results (scored
by the return-value metric: the share of the result values the reference mentions that the
candidate mentions too). Candidates keep the token ids exactly as decoded.

Candidate sources: ``greedy`` and ``branch`` (TPS), ``sample`` (trajectory mode), and ``anchored``
(gold-anchored TPS, ``--tps.anchor gold``, this project's option: the gold completion up to a branch
step, the model's alternative token there and its greedy continuation).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ttpa_jax.core.conversation import iter_turns, mae_masked_messages, normalize_record
from ttpa_jax.core.records import iter_numbered
from ttpa_jax.decode.branching import eligible_steps
from ttpa_jax.decode.settings import Decoding, TPSConfig
from ttpa_jax.text.detokenize import finish, stop_token_sequences
from ttpa_jax.text.prompts import check_length, encode_chat
from ttpa_jax.text.spans import token_locations, token_offsets
from ttpa_jax.tools import esm
from ttpa_jax.tools.calls import calls_from_message
from ttpa_jax.tools.return_values import judge_answer


@dataclasses.dataclass
class Candidate:
    text: str
    tokens: list[int]  # generated ids as decoded (the EOS or stop string that ended it included)
    source: str  # greedy | branch | sample | anchored
    branch: dict[str, Any] | None = None  # position, gap, token_id, rank, prob, location


@dataclasses.dataclass
class Prompt:
    """One assistant turn to sample. ``kind``: ``tool_call`` or ``answer``; ``reference``: the
    dataset's assistant message; ``tool_results``: what an answer should draw its values from."""

    record_id: str
    turn: int
    messages: list[dict]
    tools: list[dict]
    gold: list[dict]
    ids: list[int]
    kind: str = "tool_call"
    reference: dict | None = None
    tool_results: list[str] = dataclasses.field(default_factory=list)


def read_prompts(path: Path, tokenizer, max_new_tokens: int, max_positions: int, answer_turns: bool = False,
                 skipped: Counter | None = None) -> tuple[int, list[Prompt]]:
    """(records read, one Prompt per sampled turn); errors name file:line.

    A call whose tool feedback is an error (an error-recovery episode's failed call, which MAE
    masks) is no gold call to prefer: its turn is left out. An answer turn whose reference mentions
    no result value cannot be scored: it is left out and counted in ``skipped``.
    """
    n_records, prompts = 0, []
    for lineno, src, obj in iter_numbered(path):
        rec = normalize_record(obj, src)
        n_records += 1
        failed = mae_masked_messages(rec["messages"])
        for t in iter_turns(rec):
            if t.kind == "tool_call" and t.index in failed:
                continue
            if t.kind == "answer" and answer_turns:
                if not judge_answer("", t.message.get("content") or "", t.tool_results, t.prompt).judged:
                    if skipped is not None:
                        skipped["answer_not_judgeable"] += 1
                    continue
            elif t.kind != "tool_call":
                continue
            ids = encode_chat(tokenizer, t.prompt, rec["tools"])
            check_length(len(ids), max_new_tokens, max_positions, f"{src} (turn {t.index})")
            gold = calls_from_message(t.message) if t.kind == "tool_call" else []
            prompts.append(Prompt(str(rec.get("id", lineno)), t.index, t.prompt, rec["tools"], gold, ids,
                                  t.kind, t.message, list(t.tool_results)))
    return n_records, prompts


def score_candidate(text: str, prompt: Prompt, weights: esm.ErrorWeights, format: str) -> esm.ScoreResult:
    """ESM for a tool-call turn; for an answer turn, the evaluation's return-value rule
    (``return_values.judge_answer``): 0 for a tool call or an echo of the tool output (counted as
    ``answer_tool_call`` / ``answer_echo``), else the share of needed result values mentioned
    (``missed_values`` counts the rest)."""
    if prompt.kind == "tool_call":
        return esm.score(text, prompt.gold, prompt.tools, weights, format)
    v = judge_answer(text, (prompt.reference or {}).get("content") or "", prompt.tool_results, prompt.messages, format)
    if v.reason in ("tool_call", "echo"):
        return esm.ScoreResult(score=0.0, errors={f"answer_{v.reason}": 1})
    return esm.ScoreResult(score=len(v.found) / len(v.needed), errors={"missed_values": len(v.needed) - len(v.found)})


def branch_locations(tokenizer, prompt: Prompt, greedy: list[int]) -> list[str]:
    """Per greedy step, where a branch there falls: ``answer`` on an answer turn, else the token's
    location in the call (``spans.LOCATIONS``)."""
    if prompt.kind != "tool_call":
        return ["answer"] * len(greedy)
    return token_locations(tokenizer.decode(list(greedy), skip_special_tokens=False), token_offsets(tokenizer, greedy))


Finished = list[tuple[int, list[Candidate], int]]  # (prompt index, its candidates, its branch points)


def tps_candidates(model, tokenizer, prompts: list[Prompt], decoding: Decoding, tps_cfg: TPSConfig, eos,
                   skip: Callable[[int], bool] | None = None) -> Iterator[Finished]:
    """Per decoded batch, its prompts' greedy + branch candidates and branch points (prompts that
    ``skip`` names are neither decoded again nor yielded)."""
    from ttpa_jax.decode.tps import iter_tps  # JAX is loaded only to decode

    stop_seqs = stop_token_sequences(tokenizer, decoding.stop)

    def eligible(i: int, greedy: list[int]):
        return eligible_steps(tokenizer, greedy, prompts[i].kind == "tool_call", tps_cfg.branch_in)

    batches = iter_tps(model, [p.ids for p in prompts], max_new_tokens=decoding.max_new_tokens, config=tps_cfg,
                       batch_size=decoding.batch_size, eos_ids=eos, stop_token_seqs=stop_seqs, bucket=decoding.bucket,
                       eligible=eligible, skip=skip)
    for idx, results in batches:
        yield [(i, _tps_candidates(tokenizer, prompts[i], res, eos, decoding.stop), len(res.branch_points))
               for i, res in zip(idx, results or []) if skip is None or not skip(i)]


def _tps_candidates(tokenizer, prompt: Prompt, res, eos, stop) -> list[Candidate]:
    g = finish(tokenizer, res.greedy, eos, stop)
    cands = [Candidate(g.text, g.token_ids, "greedy")]
    locations = branch_locations(tokenizer, prompt, res.greedy) if res.branches else []
    for b in res.branches:
        c = finish(tokenizer, b.tokens, eos, stop)
        info = {"position": b.position, "gap": b.gap, "token_id": b.token_id, "rank": b.rank, "prob": b.prob,
                "location": locations[b.position]}
        cands.append(Candidate(c.text, c.token_ids, "branch", info))
    return cands


def anchored_candidates(model, tokenizer, prompts: list[Prompt], gold: list[list[int]], decoding: Decoding,
                        tps_cfg: TPSConfig, eos, skip: Callable[[int], bool] | None = None) -> Iterator[Finished]:
    """Gold-anchored TPS on tool-call prompts (``decode.tps.iter_anchored``), per decoded batch: each
    prompt's ``anchored`` candidates (one per branch; ``gold[i]``: prompt i's gold completion ids,
    the ids the pairs' chosen side trains on) and its branch points. A branch that a stop string
    cuts before its branch token (the gold prefix holds the stop string) is dropped."""
    from ttpa_jax.decode.tps import iter_anchored  # JAX is loaded only to decode

    stop_seqs = stop_token_sequences(tokenizer, decoding.stop)

    def eligible(i: int, ids: list[int]):
        return eligible_steps(tokenizer, ids, True, tps_cfg.branch_in)

    batches = iter_anchored(model, [p.ids for p in prompts], gold, max_new_tokens=decoding.max_new_tokens,
                            config=tps_cfg, batch_size=decoding.batch_size, eos_ids=eos, stop_token_seqs=stop_seqs,
                            bucket=decoding.bucket, eligible=eligible, skip=skip)
    for idx, results in batches:
        yield [(i, _anchored_candidates(tokenizer, prompts[i], res, eos, decoding.stop), len(res.branch_points))
               for i, res in zip(idx, results or []) if skip is None or not skip(i)]


def _anchored_candidates(tokenizer, prompt: Prompt, res, eos, stop) -> list[Candidate]:
    locations = branch_locations(tokenizer, prompt, res.anchor) if res.branches else []
    cands = []
    for b in res.branches:
        c = finish(tokenizer, b.tokens, eos, stop)
        if len(c.token_ids) <= b.position:
            continue
        info = {"position": b.position, "gap": b.gap, "token_id": b.token_id, "rank": b.rank, "prob": b.prob,
                "location": locations[b.position], "gold_token_id": res.anchor[b.position],
                "mismatch": bool(res.mismatch[b.position])}
        cands.append(Candidate(c.text, c.token_ids, "anchored", info))
    return cands


def trajectory_candidates(model, tokenizer, prompts: list[Prompt], decoding: Decoding, num_samples: int, eos,
                          skip: Callable[[int], bool] | None = None) -> Iterator[Finished]:
    """``num_samples`` independent samples per prompt (``decoding.temperature`` must be > 0), yielded
    per decoded batch for the prompts whose samples are all in (``skip`` as in ``tps_candidates``)."""
    from ttpa_jax.decode.generate import decoding_settings, iter_complete  # JAX is loaded only to decode

    n = num_samples
    done = (lambda r: False) if skip is None else (lambda r: skip(r // n))
    pending: dict[int, dict[int, Candidate]] = {}
    batches = iter_complete(model, tokenizer, [p.ids for p in prompts for _ in range(n)], eos_ids=eos, skip=done,
                            **decoding_settings(decoding))
    for idx, completions in batches:
        finished: Finished = []
        for r, c in zip(idx, completions or []):
            if done(r):
                continue
            got = pending.setdefault(r // n, {})
            got[r % n] = Candidate(c.text, c.token_ids, "sample")
            if len(got) == n:
                finished.append((r // n, [got[j] for j in range(n)], 0))
                del pending[r // n]
        yield finished
