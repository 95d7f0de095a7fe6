"""Simulated executors for the bundled tool library, one module per domain.

``executor_for(tool)`` gives the executor of a tool, or ``None`` when the package has none for it:
a tool has a bundled executor when its name is registered here *and* its parameters schema is the
bundled one (a user's tool that only shares a name is not run by code written for another schema).

    >>> from ttpa_jax.construct import toolbox
    >>> toolbox.execute("convert_temperature", {"value": 100, "from_scale": "celsius", "to_scale": "fahrenheit"})
    {'result': 212, 'scale': 'fahrenheit'}

``mistake_for(tool)`` likewise gives a function that turns a call's arguments into a plausible wrong
variant that fits the schema and that the tool refuses (``toolbox.mistakes``), with the refusal.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from ttpa_jax.construct.toolbox import (  # noqa: F401
    calendar,
    finance,
    food,
    health,
    maps,
    math_units,
    messaging,
    shopping,
    travel,
    weather,
)
from ttpa_jax.construct.toolbox.registry import REGISTRY, Phrasing, ToolError, ToolSpec, run_spec, stable_rng
from ttpa_jax.tools.library import Tool, argument_errors, bundled_tools

__all__ = ["REGISTRY", "Phrasing", "ToolError", "ToolSpec", "domains", "execute", "executor_for",
           "MistakeMaker", "mistake_for", "spec_for", "stable_rng", "wrong_call"]


def _bundled_by_name() -> dict[str, Tool]:
    return {tool.name: tool for tool in bundled_tools()}


def domains() -> dict[str, list[str]]:
    """Domain name -> names of its bundled tools."""
    out: dict[str, list[str]] = {}
    for spec in REGISTRY.values():
        out.setdefault(spec.domain, []).append(spec.name)
    return out


def spec_for(tool: Tool) -> ToolSpec | None:
    """The registered spec serving ``tool``: same name and same parameters schema as bundled."""
    spec = REGISTRY.get(tool.name)
    bundled = _bundled_by_name().get(tool.name)
    if spec is None or bundled is None or bundled.parameters != tool.parameters:
        return None
    return spec


def run_tool(tool: Tool, spec: ToolSpec, arguments: Any) -> dict[str, Any]:
    """Validate against the schema, then run; invalid arguments give ``{"error": ...}``."""
    errors = argument_errors(tool, arguments)
    if errors:
        return {"error": "invalid arguments: " + "; ".join(errors)}
    return run_spec(spec, arguments)


def executor_for(tool: Tool) -> Callable[[Any], dict[str, Any]] | None:
    """A function ``arguments -> result`` for the tool, or ``None`` when none is bundled."""
    spec = spec_for(tool)
    if spec is None:
        return None
    return lambda arguments: run_tool(tool, spec, arguments)


def wrong_call(tool: Tool, spec: ToolSpec, arguments: dict[str, Any],
               rng: random.Random) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """``(wrong arguments, the tool's error result)`` for one of the tool's mistakes that applies to
    ``arguments`` (tried in an order drawn from ``rng``), or ``None`` when none does."""
    mistakes = list(spec.mistakes)
    rng.shuffle(mistakes)
    for mistake in mistakes:
        wrong = mistake.make(arguments, rng)
        if wrong is None or wrong == arguments or argument_errors(tool, wrong):
            continue
        result = run_tool(tool, spec, wrong)
        if "error" in result:
            return wrong, result
    return None


# arguments, rng -> (wrong arguments, error result), or None when no mistake applies.
MistakeMaker = Callable[[dict[str, Any], random.Random], "tuple[dict[str, Any], dict[str, Any]] | None"]


def mistake_for(tool: Tool) -> MistakeMaker | None:
    """``fn(arguments, rng) -> (wrong arguments, error result) | None`` for a tool with a bundled
    executor and mistakes, else ``None``."""
    spec = spec_for(tool)
    if spec is None or not spec.mistakes:
        return None
    return lambda arguments, rng: wrong_call(tool, spec, arguments, rng)


def execute(name: str, arguments: Any) -> dict[str, Any]:
    """Run a bundled tool by name."""
    tool = _bundled_by_name().get(name)
    if tool is None or name not in REGISTRY:
        return {"error": f"unknown tool {name!r}"}
    return run_tool(tool, REGISTRY[name], arguments)
