"""TL-Training's token weighting for SFT: MAE and PKT.

- **MAE** (mitigate adverse effects): a tool call whose tool response is an error
  (``core.conversation.is_error_feedback``: an ``"error"`` key with a non-empty value, or TL-Training's
  error keywords) stays in the context but its tokens get zero loss weight. In a parallel turn only
  the failed call's tokens are masked (``Rendered.call_spans``); the turn's other calls keep their loss.
- **PKT** (prioritise key tokens): key tokens are the first token of each assistant response and,
  for each called tool and each other available tool name, the token where the two names part: the
  token holding the first character that differs, or, when the called name is a prefix of the other
  name, the token right after the name (the delimiter that ends it). With K key and N non-key loss
  tokens in a sequence, key tokens get weight ``min(N / K, w_max)`` when K < N and 1 otherwise (never
  below 1, as in TL-Training's code); the others 1.
"""

from __future__ import annotations

import numpy as np

from ttpa_jax.core.conversation import failed_calls
from ttpa_jax.text.render import Rendered


def divergence_offsets(name: str, others: list[str]) -> set[int]:
    """Character offsets from the start of ``name`` where it stops matching each other tool name:
    the first differing character, or ``len(name)`` (the delimiter after it) when ``name`` is a
    prefix of the other name."""
    out = set()
    for other in others:
        if other == name:
            continue
        k = 0
        while k < min(len(name), len(other)) and name[k] == other[k]:
            k += 1
        out.add(k)
    return out


def key_token_mask(r: Rendered, messages: list[dict], tool_names: list[str], loss: np.ndarray) -> np.ndarray:
    """Boolean [T]: PKT key tokens among the loss-bearing tokens."""
    key = np.zeros(len(r.ids), bool)
    starts, ends = r.offsets[:, 0], r.offsets[:, 1]
    for start, end, mi in r.spans:
        in_span = np.flatnonzero(r.token_range(start, end))
        if in_span.size == 0:
            continue
        key[in_span[0]] = bool(loss[in_span[0]])  # first response token
        cursor = start
        for tc in messages[mi].get("tool_calls") or []:
            name = tc["function"]["name"] if "function" in tc else tc["name"]
            at = r.text.find(name, cursor, end)
            if at < 0:
                continue
            cursor = at + len(name)
            for off in divergence_offsets(name, tool_names):
                char = at + off
                tok = np.flatnonzero((starts <= char) & (ends > char))  # the token holding `char`
                if tok.size and loss[tok[0]]:
                    key[tok[0]] = True
    return key


def mae_loss_mask(r: Rendered, messages: list[dict]) -> np.ndarray:
    """Boolean [T]: assistant tokens that keep their loss under MAE (all but the failed calls')."""
    failed = failed_calls(messages)
    loss = np.zeros(len(r.ids), bool)
    for start, end, mi in r.spans:
        span = r.token_range(start, end)
        bad = failed.get(mi, set())
        n_calls = len(messages[mi].get("tool_calls") or [])
        if bad and (len(bad) == n_calls or mi not in r.call_spans):
            continue  # every call failed (or the calls cannot be told apart): the whole turn
        for k in bad:
            span &= ~r.token_range(*r.call_spans[mi][k])
        loss |= span
    return loss


def make_weight_fn(mae: bool = False, pkt_wmax: float = 0.0):
    """``fn(rendered, record) -> weights [T] float32`` applying MAE and/or PKT to the assistant mask."""

    def weight_fn(r: Rendered, record: dict) -> np.ndarray:
        messages = record["messages"]
        loss = mae_loss_mask(r, messages) if mae else r.assistant_mask()
        weights = loss.astype(np.float32)
        if pkt_wmax > 0 and loss.any():
            names = [t["function"]["name"] for t in record.get("tools", [])]
            key = key_token_mask(r, messages, names, loss)
            n_key, n_rest = int(key.sum()), int((loss & ~key).sum())
            if 0 < n_key < n_rest:
                weights[key] = min(n_rest / n_key, pkt_wmax)
        return weights

    return weight_fn
