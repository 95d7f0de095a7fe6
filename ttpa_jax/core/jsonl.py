"""JSONL reading and writing with errors that name the file and line.

Every stage reads and writes plain JSONL. A malformed line is the user's to fix, so the error says
exactly where it is: ``data.jsonl:17: invalid JSON (Expecting ',' delimiter, column 40)``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ttpa_jax.core.errors import UserError


class DataError(UserError):
    """Bad input data. The message names the file and line (or field) and the reason."""


def where(path: str | os.PathLike, line: int | None = None) -> str:
    return f"{path}:{line}" if line is not None else str(path)


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for every non-blank line; raise ``DataError`` on bad JSON.

    Line numbers start at 1. Each line must hold one JSON object.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    with path.open("r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where(path, lineno)}: invalid JSON ({e.msg}, column {e.colno})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{where(path, lineno)}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    return [obj for _, obj in iter_jsonl(path)]


def write_jsonl(path: str | os.PathLike, records, append: bool = False) -> None:
    """Write records, one JSON object per line. Each line is flushed whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a" if append else "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            f.flush()
