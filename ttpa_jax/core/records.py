"""One reader for the records a stage's ``--data`` names: JSONL, a Hugging Face ``datasets`` directory
(``Dataset.save_to_disk``), or parquet file(s) (one file, a directory of them, or a glob pattern).

``iter_records(path)`` yields ``(where, record)`` like ``core.jsonl.iter_jsonl``, ``where`` naming
the file and line (``data.jsonl:17``) or the dataset and row (``data/train[row 16]``), so every error
about a record names it. The record fields are the same in all three forms (``{"messages",
"tools"}``, ``{"prompt", "chosen", "rejected", "tools"}``, ...). Arrow stores a list of objects with
one merged schema, so a row read back has ``None`` for the keys that its objects lacked: those are
dropped (a JSON null inside a record read from a dataset is dropped with them), and a ``tools``
column stored as a JSON string (the usual way, since tool schemas differ) is decoded.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ttpa_jax.core.jsonl import DataError, iter_jsonl, where

DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")  # what save_to_disk writes


def _without_nulls(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _without_nulls(v) for k, v in x.items() if v is not None}
    if isinstance(x, list):
        return [_without_nulls(v) for v in x]
    return x


def _row(row: dict[str, Any], at: str) -> dict[str, Any]:
    row = _without_nulls(row)
    if isinstance(row.get("tools"), str):
        try:
            row["tools"] = json.loads(row["tools"])
        except json.JSONDecodeError as e:
            raise DataError(f"{at}: tools: a string that is not JSON ({e.msg})") from None
    return row


def parquet_files(path: str | os.PathLike) -> list[Path]:
    """The parquet files ``path`` names (a file, a directory of them, a glob pattern); [] for none."""
    text = str(path)
    if any(c in text for c in "*?["):
        return sorted(Path(p) for p in glob.glob(text) if p.endswith(".parquet"))
    p = Path(path)
    if p.is_dir():
        return sorted(p.glob("*.parquet"))
    return [p] if p.suffix == ".parquet" and p.is_file() else []


def is_dataset_dir(path: str | os.PathLike) -> bool:
    return Path(path).is_dir() and any((Path(path) / m).is_file() for m in DATASET_MARKERS)


def _iter_dataset(path: Path) -> Iterator[tuple[int, str, dict[str, Any]]]:
    import datasets  # optional at import time: only a datasets directory needs it

    try:
        ds = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as e:
        raise DataError(f"{path}: not a readable datasets directory ({e})") from None
    if isinstance(ds, datasets.DatasetDict):
        raise DataError(f"{path}: a DatasetDict with splits {sorted(ds)}; give one split's directory "
                        f"(e.g. {path / sorted(ds)[0]})")
    for i, row in enumerate(ds):
        at = f"{path}[row {i}]"
        yield i + 1, at, _row(row, at)


def _iter_parquet(files: list[Path]) -> Iterator[tuple[int, str, dict[str, Any]]]:
    import pyarrow.parquet as pq  # comes with datasets; imported only for parquet input

    n = 0
    for f in files:
        try:
            rows = pq.read_table(f).to_pylist()
        except Exception as e:  # pyarrow raises its own error classes for a corrupt file
            raise DataError(f"{f}: not a readable parquet file ({e})") from None
        for i, row in enumerate(rows, start=n + 1):
            at = f"{f}[row {i - n - 1}]"
            yield i, at, _row(row, at)
        n += len(rows)


def iter_numbered(path: str | os.PathLike) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """``(number, where, record)``: ``number`` is the JSONL line number, or the row number (from 1,
    counted over all parquet files) of a dataset; ``where`` as ``iter_records``."""
    if is_dataset_dir(path):
        yield from _iter_dataset(Path(path))
        return
    files = parquet_files(path)
    if files:
        yield from _iter_parquet(files)
        return
    p = Path(path)
    if p.is_dir():
        raise DataError(f"{p}: a directory that is neither a datasets directory (save_to_disk) nor holds "
                        "parquet files")
    if any(c in str(path) for c in "*?[") and not p.exists():
        raise DataError(f"{path}: no parquet file matches")
    for lineno, obj in iter_jsonl(p):
        yield lineno, where(p, lineno), obj


def iter_records(path: str | os.PathLike) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, record)`` for every record of a JSONL file, a datasets directory or parquet file(s)."""
    for _, at, record in iter_numbered(path):
        yield at, record


def data_files(path: str | os.PathLike) -> list[Path]:
    """The files whose bytes are the data ``path`` names (for fingerprints of a run's input)."""
    if is_dataset_dir(path):
        return sorted(f for f in Path(path).rglob("*") if f.is_file())
    return parquet_files(path) or [Path(path)]


def data_hash(path: str | os.PathLike) -> str:
    """sha256 of the data ``path`` names: a single file's bytes, else its files' names and bytes."""
    h = hashlib.sha256()
    files = data_files(path)
    for f in files:
        if len(files) > 1 or is_dataset_dir(path):
            h.update(f.name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()
