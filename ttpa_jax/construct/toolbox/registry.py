"""The executor registry: simulated tools, registered by name, one module per domain.

An executor is a pure function ``run(args, rng) -> dict``. ``rng`` is a ``random.Random`` seeded from
a hash of the tool name and the canonical JSON of the arguments, so the same call always gives the
same result. An executor raises ``ToolError`` for a call it refuses (same origin and destination, a
division by zero, ...); the caller turns it into ``{"error": "..."}``.

A tool may also carry ``Mistake``s: plausible wrong argument values that fit its schema but that it
refuses (``ttpa_jax.construct.toolbox.mistakes``), used to build error-recovery episodes. A mistake's rule is
checked on every call, before the executor runs.

Each tool also carries its ``Phrasing``: how the offline template generator words a request for it.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

Executor = Callable[[dict[str, Any], random.Random], dict[str, Any]]
# A parameter phrase: a format string with "{}" for the value (objects: "{field}" per field), a
# callable from the value to text, or for booleans a (phrase when true, phrase when false) pair.
Phrase = str | Callable[[Any], str] | tuple[str, str]
# A value source for the template generator: a list to pick from or a function of the rng.
ValueSource = list[Any] | tuple[Any, ...] | Callable[[random.Random], Any]


class ToolError(Exception):
    """The tool refuses the call; the message becomes the result's ``"error"``."""


@dataclass(frozen=True)
class Phrasing:
    """How a request for the tool is worded.

    ``ask`` is a verb phrase ("find flights"); ``params`` holds a phrase per parameter, appended to
    ``ask`` in schema order for the arguments a call uses ("from {}", "to {}"); ``chained`` holds the
    phrase used instead when the value comes from an earlier tool result ("on the first flight
    found"); only parameters listed there are ever filled from earlier results. ``label`` is a noun
    phrase for the answer, formatted with the call's arguments ("flights from {origin} to
    {destination}"). None of them may name the tool or a multi-word parameter.
    """

    ask: str
    params: Mapping[str, Phrase]
    label: str
    chained: Mapping[str, str] = field(default_factory=dict)


def no_check(args: dict[str, Any]) -> None:
    """A rule that refuses nothing (the executor itself refuses the mistaken value)."""


@dataclass(frozen=True)
class Mistake:
    """A plausible wrong argument value and the rule by which the tool refuses it.

    ``make(args, rng)`` gives a copy of valid arguments with one value made wrong, or ``None`` when the
    mistake does not apply to them; ``check(args)`` raises ``ToolError`` for arguments the rule
    refuses and is run on every call.
    """

    make: Callable[[dict[str, Any], random.Random], dict[str, Any] | None]
    check: Callable[[dict[str, Any]], None] = no_check


@dataclass(frozen=True)
class ToolSpec:
    """A registered tool: its executor, phrasing, and argument value sources for the generator."""

    name: str
    domain: str
    run: Executor
    phrasing: Phrasing
    values: Mapping[str, ValueSource] = field(default_factory=dict)
    joint: Callable[[random.Random], dict[str, Any]] | None = None
    mistakes: tuple[Mistake, ...] = ()


REGISTRY: dict[str, ToolSpec] = {}


def registrar(domain: str):
    """Return a ``tool(...)`` decorator that registers executors under ``domain``."""

    def tool(name: str, *, ask: str, params: Mapping[str, Phrase], label: str,
             chained: Mapping[str, str] | None = None, values: Mapping[str, ValueSource] | None = None,
             joint: Callable[[random.Random], dict[str, Any]] | None = None, mistakes: tuple[Mistake, ...] = ()):
        def register(run: Executor) -> Executor:
            if name in REGISTRY:
                raise ValueError(f"tool {name!r} registered twice")
            phrasing = Phrasing(ask=ask, params=dict(params), label=label, chained=dict(chained or {}))
            REGISTRY[name] = ToolSpec(name=name, domain=domain, run=run, phrasing=phrasing,
                                      values=dict(values or {}), joint=joint, mistakes=tuple(mistakes))
            return run

        return register

    return tool


def canonical(args: Any) -> str:
    return json.dumps(args, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def stable_rng(name: str, args: Any) -> random.Random:
    """A generator seeded from the tool name and the arguments: same call, same numbers."""
    digest = hashlib.sha256(f"{name}\n{canonical(args)}".encode()).digest()
    return random.Random(int.from_bytes(digest[:16], "big"))


def run_spec(spec: ToolSpec, args: dict[str, Any]) -> dict[str, Any]:
    """Run an executor on arguments already validated; refusals (by the executor or by the rule of
    one of its mistakes) become ``{"error": ...}``."""
    try:
        for mistake in spec.mistakes:
            mistake.check(args)
        result = spec.run(args, stable_rng(spec.name, args))
    except ToolError as e:
        return {"error": str(e)}
    # Round-trip through JSON: the result is plain JSON data, never a Python-only value.
    return json.loads(json.dumps(result, ensure_ascii=False, allow_nan=False))
