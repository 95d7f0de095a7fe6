"""Generators: what writes the scenario, the calls, the answer and the query.

- ``template``: offline, deterministic from a seed (``TemplateGenerator``).
- ``openai``: any OpenAI-compatible endpoint through the ``openai`` client (``OpenAIGenerator``).
"""

from __future__ import annotations

from typing import Any

from ttpa_jax.construct.generators.protocol import (
    CallStep,
    Episode,
    GenerationFailure,
    GenerationStats,
    Generator,
    ToolCall,
    Turn,
)
from ttpa_jax.construct.generators.template import TemplateGenerator
from ttpa_jax.tools.library import Tool

__all__ = ["CallStep", "Episode", "GenerationFailure", "GenerationStats", "Generator", "ToolCall", "Turn",
           "make_generator"]


def make_generator(cfg: Any, tools: list[Tool]) -> Generator:
    """The generator ``cfg.generator`` names, set up from the construction config (``cfg.openai``:
    the endpoint's settings; ``cfg.concurrency``: requests in flight).

    Raises ``ValueError`` with a message for the user when it cannot run (a tool without executor
    in template mode, no ``OPENAI_API_KEY`` in openai mode).
    """
    if cfg.generator == "template":
        return TemplateGenerator(tools)
    if cfg.generator == "openai":
        from ttpa_jax.construct.generators.openai_chat import OpenAIGenerator  # the openai client, only when asked for

        return OpenAIGenerator(cfg.openai, tools, concurrency=cfg.concurrency)
    raise ValueError(f"unknown generator {cfg.generator!r} (choose template or openai)")
