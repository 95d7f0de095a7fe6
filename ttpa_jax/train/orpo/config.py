"""``train orpo``'s settings: the shared ``RunArgs`` plus ``OrpoConfig`` (flags without a prefix:
``--beta``, ``--shared-prefix``). No JAX."""

from __future__ import annotations

import dataclasses
from typing import Annotated, ClassVar

import tyro

from ttpa_jax.train.config import RunArgs


@dataclasses.dataclass(frozen=True)
class OrpoConfig:
    """ORPO objective (``train orpo``, arXiv 2403.07691, as TRL computes it)."""

    beta: float = 0.1
    """lambda: weight of the odds-ratio term next to the chosen side's NLL (TRL's ``beta``)."""
    shared_prefix: bool = True
    """The preference batch layout, as ``train dpo --shared-prefix``: what a batch's sequences share runs once."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class OrpoArgs(RunArgs):
    """``train orpo``: NLL of the chosen side plus lambda times the odds-ratio loss, on {prompt, chosen,
    rejected, tools} preference records; reference-free."""

    objective: ClassVar[str] = "orpo"

    orpo: Annotated[OrpoConfig, tyro.conf.OmitArgPrefixes] = OrpoConfig()
