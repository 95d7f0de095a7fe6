"""``train sft``'s unit: weighted token cross-entropy on {messages, tools} records.

Batches: ``TokenRows`` (one record per row) or ``PackedRows`` (``--dataset.pack``, one process);
loss weights are the assistant mask, every token (``--dataset.no-assistant-only``), or TL-Training's
MAE/PKT weights (``token_weights``). Metrics: ``loss`` (sum(w * nll) / sum(w) over the whole batch)
and ``loss_tokens``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ttpa_jax.model.transformer import Ctx
from ttpa_jax.train.batches import TokenRows
from ttpa_jax.train.scoring import sft_scores
from ttpa_jax.train.sft.config import SftArgs
from ttpa_jax.train.supervised import RecordUnit
from ttpa_jax.train.token_weights import make_weight_fn
from ttpa_jax.train.trainer import Objective


def _normalizers(batch: TokenRows):
    return {"weight": jnp.maximum(batch.weights.sum(), 1e-6)}


def _finalize(s):
    return {"loss": s["nll"] / jnp.maximum(s["weight"], 1e-6), "loss_tokens": s["loss_tokens"]}


def make_sft(logits_chunk: int = 0) -> Objective:
    """Weighted token cross-entropy: sum(w * nll) / sum(w) over the whole batch."""

    def loss(model, reference, batch: TokenRows, ctx: Ctx, norms):
        lp, w = sft_scores(model, batch, ctx, logits_chunk)
        nll = -(lp * w).sum()
        sums = {"nll": nll, "weight": w.sum(), "loss_tokens": (w > 0).sum().astype(jnp.float32)}
        return nll / norms["weight"], sums

    return Objective(_normalizers, loss, _finalize)


def weights(cfg: SftArgs):
    """SFT loss weights: every token (``--dataset.no-assistant-only``), TL-Training's MAE/PKT, or None
    for the plain assistant mask. Returns (fn, options that enter the data fingerprint)."""
    if not cfg.dataset.assistant_only:
        return (lambda r, record: np.ones(len(r.ids), np.float32)), {"assistant_only": False}
    if not (cfg.mae or cfg.pkt_wmax):
        return None, {}
    return make_weight_fn(mae=cfg.mae, pkt_wmax=cfg.pkt_wmax), {"mae": cfg.mae, "pkt_wmax": cfg.pkt_wmax}


def layout(cfg: SftArgs) -> str:
    """Packed rows (``--dataset.pack``) pick each batch's row count from its records, so they need a
    single process (processes must agree on the batch shape); else one record per row."""
    return "packed" if cfg.dataset.pack and jax.process_count() == 1 else "rows"


UNIT = RecordUnit(kind="sft", objective=lambda cfg: make_sft(cfg.logits_chunk), layout=layout, weights=weights)
