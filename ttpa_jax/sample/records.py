"""Preference records of one prompt from its scored candidates.

A record is TRL's conversational form plus the token ids DPO trains on::

    {"prompt", "chosen", "rejected", "tools",          # messages, for people and for TRL
     "prompt_ids", "chosen_ids", "rejected_ids",       # prompt ids; each side's completion ids
     "chosen_source": "sampled" | "gold", "meta"}

A sampled side's ids are exactly the tokens decoded (the EOS or stop string that ended it
included) and its message is ``{"role": "assistant", "content": <decoded text>}``; a gold side's
ids are the gold message rendered with the chat template after the prompt (``gold_ids``: the same
ids a gold-anchored branch reads and shares its prefix with). ``meta`` carries the pair kind
(``pair_kind``: ``sampled_chosen``, ``gold_anchored`` or ``gold_chosen``; ``pair_sides``: both
sides' sources), the branch position (the first token where the two sides differ, for TPS pairs)
and where it falls in the call, the gap there, both sides' scores, errors and sources,
``shared_prefix_tokens``: how many leading completion tokens the two sides share, and the audit's
``divergence`` (where the sides' texts first differ) and ``chosen_longer`` (``audit.pair_meta``).

Gold-anchored candidates (source ``anchored``, ``--tps.anchor gold``) pair with the gold completion
only (``pairs.select_anchored``); ``chosen_source`` is ``gold``.
"""

from __future__ import annotations

from typing import Any

from ttpa_jax.core.jsonl import DataError
from ttpa_jax.sample.audit import pair_meta
from ttpa_jax.sample.candidates import Candidate, Prompt
from ttpa_jax.sample.pairs import GOLD, common_prefix, pair_kind, pair_sides, select_anchored, select_pairs
from ttpa_jax.text.render import render_prompt_completion
from ttpa_jax.tools import esm
from ttpa_jax.tools.calls import message_from_calls


def gold_message(prompt: Prompt) -> dict[str, Any]:
    """The message a gold-chosen side renders: the resolved gold calls, or the reference answer."""
    if prompt.kind == "tool_call":
        return message_from_calls(esm.resolve_gold(prompt.gold, prompt.tools))
    return {"role": "assistant", "content": (prompt.reference or {}).get("content") or ""}


def gold_ids(tokenizer, prompt: Prompt, where: str = "") -> list[int]:
    """Completion ids of the gold message, rendered after the prompt as DPO would render it."""
    p_ids, c_ids = render_prompt_completion(tokenizer, prompt.messages, gold_message(prompt), prompt.tools, where)
    if p_ids.tolist() != list(prompt.ids):
        raise DataError(f"{where}: the chat template renders the prompt differently with a completion after it")
    return c_ids.tolist()


def _branch_of(c: Candidate | None) -> dict | None:
    return None if c is None else c.branch


def pair_records(prompt: Prompt, cands: list[Candidate], scores: list[esm.ScoreResult], *, tokenizer, mode: str,
                 margin: float, gold_below: float, g_ids: list[int] | None = None) -> list[dict]:
    """Records of one prompt (``select_pairs`` over the candidates' token ids; ``select_anchored``
    when they are gold-anchored). ``g_ids``: the gold completion ids when already rendered."""
    anchored = any(c.source == "anchored" for c in cands)
    if g_ids is None and (gold_below > 0 or anchored):
        g_ids = gold_ids(tokenizer, prompt, f"{prompt.record_id} turn {prompt.turn}")
    keyed = [(tuple(c.tokens), s.score) for c, s in zip(cands, scores)]
    if anchored:
        pairs = select_anchored(keyed, margin, tuple(g_ids))
    else:
        pairs = select_pairs(keyed, margin, None if g_ids is None or gold_below <= 0 else tuple(g_ids), gold_below)
    records = []
    for p in pairs:
        rc, rs = cands[p.rejected], scores[p.rejected]
        if p.chosen == GOLD:
            cc, chosen_msg, c_ids, c_source, c_errors = None, gold_message(prompt), g_ids, "gold", {}
        else:
            cc, cs = cands[p.chosen], scores[p.chosen]
            chosen_msg, c_ids, c_source, c_errors = _message(cc), cc.tokens, cc.source, cs.errors
        shared = common_prefix(c_ids, rc.tokens)
        # The earlier branch: where two TPS candidates first differ (the other side follows the greedy row there).
        branch = min((b for b in (_branch_of(cc), rc.branch) if b), key=lambda b: b["position"], default={})
        meta = {
            "id": prompt.record_id, "turn": prompt.turn, "turn_kind": prompt.kind, "mode": mode,
            "pair_kind": pair_kind(c_source, rc.source), "pair_sides": pair_sides(c_source, rc.source),
            "branch_position": branch.get("position"),
            "branch_location": branch.get("location"), "gap": branch.get("gap"),
            "chosen_score": p.chosen_score, "rejected_score": p.rejected_score,
            "chosen_kind": c_source, "chosen_errors": c_errors, "chosen_branch": _branch_of(cc),
            "rejected_kind": rc.source, "rejected_errors": rs.errors, "rejected_branch": rc.branch,
            "shared_prefix_tokens": shared, **pair_meta(tokenizer, c_ids, rc.tokens, prompt.kind),
        }
        records.append({"prompt": prompt.messages, "chosen": [chosen_msg], "rejected": [_message(rc)],
                        "tools": prompt.tools, "prompt_ids": list(prompt.ids), "chosen_ids": list(c_ids),
                        "rejected_ids": list(rc.tokens), "chosen_source": "gold" if cc is None else "sampled",
                        "meta": meta})
    return records


def _message(c: Candidate) -> dict[str, Any]:
    return {"role": "assistant", "content": c.text}
