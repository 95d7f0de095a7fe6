"""``train sft``'s settings: the shared ``RunArgs`` plus TL-Training's MAE and PKT. No JAX."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from ttpa_jax.train.config import RunArgs


@dataclasses.dataclass(frozen=True, kw_only=True)
class SftArgs(RunArgs):
    """``train sft``: supervised fine-tuning on {messages, tools} records, with TL-Training's MAE and PKT."""

    objective: ClassVar[str] = "sft"

    mae: bool = False
    """TL-Training MAE: assistant tool calls whose tool feedback is an error get zero loss weight."""
    pkt_wmax: float = 0.0
    """TL-Training PKT: weight key tokens by min(|non-key|/|key|, W); 0 disables."""
