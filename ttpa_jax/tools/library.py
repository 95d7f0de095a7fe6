"""Tool libraries: load OpenAI function schemas, check them, and validate calls against them.

A tool library is a JSON list of OpenAI function schemas (see docs/formats.md). ``"bundled"`` names
the library shipped with the package (``ttpa_jax/data/tools.json``). Every ``parameters`` object must
be valid JSON Schema of ``"type": "object"``; a schema that is not gives one ``DataError`` naming the
file, the tool and the place in the schema.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
import re
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema.validators import validator_for

from ttpa_jax.core.jsonl import DataError

BUNDLED = "bundled"
NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class Tool:
    """One tool: its OpenAI function schema and a validator for its arguments."""

    name: str
    description: str
    parameters: dict[str, Any]
    validator: Any = field(compare=False, repr=False)

    @property
    def schema(self) -> dict[str, Any]:
        """The tool in OpenAI function-schema form, as written in SFT records."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description,
                             "parameters": self.parameters}}

    @cached_property
    def param_names(self) -> tuple[str, ...]:
        """Every property name in the parameters schema, nested objects and array items included."""
        return tuple(sorted(_property_names(self.parameters)))


def _property_names(schema: Any) -> set[str]:
    names: set[str] = set()
    if isinstance(schema, dict):
        props = schema.get("properties")
        if isinstance(props, dict):
            names.update(props)
            for sub in props.values():
                names |= _property_names(sub)
        for key in ("items", "additionalProperties"):
            names |= _property_names(schema.get(key))
        for key in ("anyOf", "oneOf", "allOf"):
            for sub in schema.get(key) or []:
                names |= _property_names(sub)
    return names


_CHECKED: dict[str, Tool] = {}
_CHECKED_MAX = 4096


def make_tool(entry: Any, where: str) -> Tool:
    """Check one library entry and build its ``Tool``.

    Accepts the OpenAI form ``{"type": "function", "function": {...}}`` and the bare function object
    ``{"name", "description", "parameters"}``. Raises ``DataError`` naming ``where`` on any problem.
    Checked entries are remembered by their canonical JSON (checking a schema is slow, and every
    record of a dataset repeats the same few tools).
    """
    try:
        key = json.dumps(entry, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError):
        key = None
    if key is not None and key in _CHECKED:
        return _CHECKED[key]
    tool = _check_tool(entry, where)
    if key is not None:
        if len(_CHECKED) >= _CHECKED_MAX:
            _CHECKED.clear()
        _CHECKED[key] = tool
    return tool


def _check_tool(entry: Any, where: str) -> Tool:
    if not isinstance(entry, dict):
        raise DataError(f"{where}: a tool must be a JSON object, got {type(entry).__name__}")
    fn = entry.get("function", entry) if entry.get("type", "function") == "function" else None
    if not isinstance(fn, dict):
        raise DataError(f"{where}: expected {{\"type\": \"function\", \"function\": {{...}}}}")
    name = fn.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise DataError(f"{where}: function.name must match {NAME_RE.pattern}, got {name!r}")
    where = f"{where} ({name})"
    description = fn.get("description", "")
    if not isinstance(description, str):
        raise DataError(f"{where}: function.description must be a string")
    params = fn.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(params, dict):
        raise DataError(f"{where}: function.parameters must be a JSON Schema object")
    cls = validator_for(params, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(params)
    except jsonschema.SchemaError as e:
        path = "/".join(str(p) for p in e.absolute_path) or "(root)"
        raise DataError(f"{where}: function.parameters is not valid JSON Schema at {path}: "
                        f"{e.message}") from None
    if params.get("type") != "object":
        raise DataError(f"{where}: function.parameters must have \"type\": \"object\"")
    validator = cls(params, format_checker=cls.FORMAT_CHECKER)
    return Tool(name=name, description=description, parameters=params, validator=validator)


def parse_library(entries: Any, source: str) -> list[Tool]:
    """Build the tools of a decoded library file; names must be unique."""
    if not isinstance(entries, list) or not entries:
        raise DataError(f"{source}: a tool library is a non-empty JSON list of function schemas")
    tools = [make_tool(entry, f"{source}: tool {i}") for i, entry in enumerate(entries)]
    seen: set[str] = set()
    for tool in tools:
        if tool.name in seen:
            raise DataError(f"{source}: tool name {tool.name!r} appears more than once")
        seen.add(tool.name)
    return tools


def bundled_path() -> Path:
    return Path(str(importlib.resources.files("ttpa_jax") / "data" / "tools.json"))


@lru_cache(maxsize=1)
def bundled_tools() -> tuple[Tool, ...]:
    """The package's own tool library."""
    return tuple(load_library_file(bundled_path()))


def load_library_file(path: str | os.PathLike) -> list[Tool]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file (expected a JSON list of tool schemas)")
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg}, column {e.colno})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    return parse_library(entries, str(path))


def load_library(spec: str) -> list[Tool]:
    """``"bundled"`` or a path to a JSON list of tool schemas."""
    return list(bundled_tools()) if spec == BUNDLED else load_library_file(spec)


def argument_errors(tool: Tool, arguments: Any) -> list[str]:
    """Why ``arguments`` do not satisfy the tool's parameters schema (empty when they do)."""
    if not isinstance(arguments, dict):
        return [f"arguments must be a JSON object, got {type(arguments).__name__}"]
    errors = sorted(tool.validator.iter_errors(arguments), key=lambda e: list(map(str, e.path)))
    return [f"{'/'.join(map(str, e.absolute_path)) or '(arguments)'}: {e.message}" for e in errors]


def fingerprint(tools: list[Tool]) -> str:
    """A short stable hash of a library's schemas; records carry it to tie them to their library."""
    blob = json.dumps([t.schema for t in tools], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
