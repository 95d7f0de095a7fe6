"""``train dpo``'s settings: the shared ``RunArgs`` plus ``DpoConfig`` (flags without a prefix:
``--beta``, ``--loss-type``, ...). No JAX."""

from __future__ import annotations

import dataclasses
from typing import Annotated, ClassVar, Literal

import tyro

from ttpa_jax.train.config import RunArgs


@dataclasses.dataclass(frozen=True)
class DpoConfig:
    """DPO objective (``train dpo``)."""

    beta: float = 0.1
    """Temperature of the implicit reward: rewards are beta * (policy - reference) log-probs."""
    loss_type: Literal["sigmoid", "ipo", "hinge"] = "sigmoid"
    """sigmoid: DPO; ipo: squared loss to 1/(2 beta); hinge: SLiC hinge loss."""
    label_smoothing: float = 0.0
    """Conservative DPO: probability that a preference label is flipped (sigmoid loss only)."""
    sft_weight: float = 0.0
    """Weight of an extra SFT term (mean NLL per chosen completion token)."""
    precompute_ref: bool = False
    """Compute reference log-probs once before training and store them with the tokenized data."""
    shared_prefix: bool = True
    """What a batch's sequences share runs once: the pairs of one prompt form a group (its prompt and the
    prefix all its sequences share once, then each distinct sequence's remainder once, attending to
    the shared part and itself), groups packed into rows. The same losses and gradients as two full
    rows per pair, for fewer tokens; with several processes one pair per row."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class DpoArgs(RunArgs):
    """``train dpo``: DPO on {prompt, chosen, rejected, tools} preference records."""

    objective: ClassVar[str] = "dpo"

    dpo: Annotated[DpoConfig, tyro.conf.OmitArgPrefixes] = DpoConfig()
