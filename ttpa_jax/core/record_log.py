"""An append-only JSONL file of records with ids, safe to kill at any moment.

Each record is written as one full line with a single ``write`` and then flushed and fsynced, so a
killed run leaves at most one torn (unterminated) last line. Opening the file again cuts that torn
tail off and reports the ids already present, so that a rerun skips them: no duplicate, no loss.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ttpa_jax.core.errors import ConfigError
from ttpa_jax.core.jsonl import DataError, iter_jsonl


def drop_torn_tail(path: Path) -> int:
    """Truncate an unterminated last line; return the number of bytes removed."""
    if not path.is_file():
        return 0
    size = path.stat().st_size
    if size == 0:
        return 0
    with path.open("rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return 0
        # Walk back to the last newline, one block at a time.
        end, block = size, 1 << 16
        keep = 0
        while end > 0:
            start = max(0, end - block)
            f.seek(start)
            chunk = f.read(end - start)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                keep = start + cut + 1
                break
            end = start
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    return size - keep


def write_synced(fd: int, data: bytes) -> None:
    """Append ``data`` (whole lines) to the file open as ``fd`` with one write, then fsync it."""
    written = os.write(fd, data)
    while written < len(data):  # regular files take the whole buffer; loop for safety
        written += os.write(fd, data[written:])
    os.fsync(fd)


class RecordLog:
    """Append records to ``path``; ``records`` maps the keys already there to their ``meta`` (or,
    with ``whole=True``, to the records themselves).

    A record's key is its ``"id"`` (a string), or with ``key=("id", "turn")`` the tuple of those
    fields (e.g. a prediction per assistant turn); ``in`` and ``records`` take keys of that form.
    """

    def __init__(self, path: str | os.PathLike, key: tuple[str, ...] = ("id",), whole: bool = False):
        self.path = Path(path)
        self.key_fields, self.whole = key, whole
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.torn_bytes = drop_torn_tail(self.path)
        self.records: dict[Any, Any] = {}
        if self.path.is_file():
            for lineno, obj in iter_jsonl(self.path):
                rid = self.key_of(obj)
                if rid is None:
                    raise DataError(f"{self.path}:{lineno}: record without its key ({', '.join(key)}; \"id\" a string)")
                if rid in self.records:
                    raise DataError(f"{self.path}:{lineno}: duplicate key {rid!r}")
                self.records[rid] = self._kept(obj)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def key_of(self, record: dict[str, Any]) -> Any:
        """The record's key, or None when a key field is missing (or its ``"id"`` is no string)."""
        values = tuple(record.get(f) for f in self.key_fields)
        if any(v is None for v in values) or not isinstance(record.get("id", ""), str):
            return None
        return values[0] if len(values) == 1 else values

    def _kept(self, record: dict[str, Any]) -> Any:
        return record if self.whole else record.get("meta") or {}

    def __contains__(self, key: Any) -> bool:
        return key in self.records

    def append(self, record: dict[str, Any]) -> None:
        """Write one record as one line, then flush it to disk."""
        rid = self.key_of(record)
        if rid is None or rid in self.records:
            raise ValueError(f"record {rid!r} has no key or is already in {self.path}")
        write_synced(self._fd, (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        self.records[rid] = self._kept(record)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> RecordLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def changed_settings(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the settings that differ between two (nested) dicts of JSON values."""
    diff = []
    for key in sorted({*old, *new}):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diff += changed_settings(a, b, f"{prefix}{key}.")
        elif a != b:
            diff.append(prefix + key)
    return diff


def refuse_other_settings(path: Path, old: dict[str, Any], new: dict[str, Any]) -> None:
    """Raise ``ConfigError`` when ``path`` was written with settings other than ``new``: a rerun
    continues a file only with the command that started it."""
    diff = changed_settings(old, json.loads(json.dumps(new, default=str)))
    if diff:
        raise ConfigError(f"{path} was written with other settings ({', '.join(diff)}); rerun with the same "
                          "settings to continue it, or write to another --out")
