"""TL-Training's token weighting for SFT: MAE and PKT.

- **MAE** (mitigate adverse effects): an assistant tool-call turn whose tool feedback is an error
  stays in the context but gets zero loss weight. A tool message is an error when its content is a
  JSON object with a top-level ``"error"`` key, or text starting with ``error``.
- **PKT** (prioritise key tokens): key tokens are the first token of each assistant response and the
  tokens where a called tool's name diverges from the other available tools' names (for each other
  name, the token holding the first character that differs). With K key and N non-key loss tokens in
  a sequence, key tokens get weight ``min(N / K, w_max)`` and the others 1.
"""

from __future__ import annotations

import numpy as np

from ttpa_jax.core.conversation import mae_masked_messages
from ttpa_jax.text.render import Rendered


def divergence_offsets(name: str, others: list[str]) -> set[int]:
    """Character offsets in ``name`` where it stops matching each other tool name."""
    out = set()
    for other in others:
        if other == name:
            continue
        k = 0
        while k < min(len(name), len(other)) and name[k] == other[k]:
            k += 1
        out.add(min(k, len(name) - 1))
    return out


def key_token_mask(r: Rendered, messages: list[dict], tool_names: list[str], loss: np.ndarray) -> np.ndarray:
    """Boolean [T]: PKT key tokens among the loss-bearing tokens."""
    key = np.zeros(len(r.ids), bool)
    starts = r.offsets[:, 0]
    for start, end, mi in r.spans:
        in_span = np.flatnonzero(r.token_range(start, end) & loss)
        if in_span.size == 0:
            continue
        key[in_span[0]] = True  # first response token
        cursor = start
        for tc in messages[mi].get("tool_calls") or []:
            name = tc["function"]["name"] if "function" in tc else tc["name"]
            at = r.text.find(name, cursor, end)
            if at < 0:
                continue
            cursor = at + len(name)
            for off in divergence_offsets(name, tool_names):
                char = at + off
                # the token whose character span holds `char`
                tok = np.flatnonzero((starts <= char) & (r.offsets[:, 1] > char))
                if tok.size and loss[tok[0]]:
                    key[tok[0]] = True
    return key


def make_weight_fn(mae: bool = False, pkt_wmax: float = 0.0):
    """``fn(rendered, record) -> weights [T] float32`` applying MAE and/or PKT to the assistant mask."""

    def weight_fn(r: Rendered, record: dict) -> np.ndarray:
        messages = record["messages"]
        loss = np.zeros(len(r.ids), bool)
        masked = mae_masked_messages(messages) if mae else set()
        for start, end, mi in r.spans:
            if mi not in masked:
                loss |= r.token_range(start, end)
        weights = loss.astype(np.float32)
        if pkt_wmax > 0 and loss.any():
            names = [t["function"]["name"] for t in record.get("tools", [])]
            key = key_token_mask(r, messages, names, loss)
            n_key, n_rest = int(key.sum()), int((loss & ~key).sum())
            if n_key:
                weights[key] = min(n_rest / n_key, pkt_wmax)
        return weights

    return weight_fn
