"""``construct_config(out, **flags)``: a ConstructConfig from flat keyword arguments named like the CLI flags.

The settings are nested (``episode``, ``openai``) but the command line keeps flat flags; tests write
them flat too, and this helper puts each into its dataclass.
"""

from __future__ import annotations

import dataclasses

from ttpa_jax.construct.build import ConstructConfig
from ttpa_jax.construct.episodes import EpisodeSettings
from ttpa_jax.construct.generators.openai_chat import OpenAISettings

NESTED = {"episode": EpisodeSettings, "openai": OpenAISettings}


def construct_config(out, **flags) -> ConstructConfig:
    nested = {}
    for name, cls in NESTED.items():
        names = {f.name for f in dataclasses.fields(cls)}
        nested[name] = cls(**{k: flags.pop(k) for k in list(flags) if k in names})
    return ConstructConfig(out=out, **nested, **flags)
