"""Tokenize a JSONL file once into an ArrayRecord or TFRecord file, with a report of what was skipped.

``prepare`` writes ``OUT_DIR/<kind>.<format>`` and ``OUT_DIR/stats.json``. The stats carry a
fingerprint of the source file, the tokenizer and the options: a rerun with the same inputs reuses
the file, a changed input rebuilds it. The record file is written under a temporary name and renamed
when complete, so a crash never leaves a half-written file that looks finished.

``balance_lengths`` then derives per-pair loss weights from the whole preference file (DPO's
``--balance-lengths``) and writes them, with the records, into a second file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ttpa_jax.core.conversation import normalize_preference, normalize_record
from ttpa_jax.core.jsonl import DataError
from ttpa_jax.core.records import data_hash, is_dataset_dir, iter_records, parquet_files
from ttpa_jax.text.render import preference_example, sft_example
from ttpa_jax.train.example_proto import decode_example, encode_example
from ttpa_jax.train.recordio import RecordWriter, open_source

KINDS = ("sft", "preference")


@dataclasses.dataclass
class DataStats:
    records: int = 0
    written: int = 0
    dropped_too_long: int = 0
    truncated: int = 0
    dropped_no_target: int = 0
    tokens: int = 0
    sampled_ids: int = 0  # preference records trained on their stored token ids (``sample``'s output)
    fingerprint: str = ""

    def summary(self) -> str:
        parts = [f"{self.written} of {self.records} records tokenized ({self.tokens} tokens)"]
        if self.dropped_too_long:
            parts.append(f"{self.dropped_too_long} dropped as longer than max_length")
        if self.truncated:
            parts.append(f"{self.truncated} truncated to max_length")
        if self.dropped_no_target:
            parts.append(f"{self.dropped_no_target} dropped with no loss-bearing tokens")
        if self.sampled_ids:
            parts.append(f"{self.sampled_ids} preference records on their sampled token ids")
        return "; ".join(parts)


def _file_hash(path: Path) -> str:
    return data_hash(path)  # a file's bytes; a datasets directory's or parquet files' names and bytes


def fingerprint(data_path: Path, tokenizer_dir: Path, options: dict) -> str:
    h = hashlib.sha256(_file_hash(data_path).encode())
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tokenizer_dir / name).is_file():
            h.update(_file_hash(tokenizer_dir / name).encode())
    h.update(json.dumps(options, sort_keys=True).encode())
    return h.hexdigest()[:16]


def record_path(out_dir: Path, kind: str, fmt: str) -> Path:
    return out_dir / f"{kind}.{fmt}"


def prepare(
    data_path: str | os.PathLike,
    tokenizer_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    kind: str,
    fmt: str = "arrayrecord",
    max_length: int = 2048,
    overflow: str = "drop",
    weight_fn: Callable | None = None,
    weight_options: dict | None = None,
    progress: bool = True,
) -> tuple[Path, DataStats]:
    """Tokenize ``data_path`` (JSONL) into ``out_dir``; reuse a previous result with the same fingerprint.

    Raises ``DataError`` naming ``file:line`` for a malformed line or record.
    """
    from transformers import AutoTokenizer  # deferred: transformers is slow to import

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    data_path, tokenizer_dir, out_dir = Path(data_path), Path(tokenizer_dir), Path(out_dir)
    if not data_path.is_file() and not is_dataset_dir(data_path) and not parquet_files(data_path):
        raise DataError(f"{data_path}: no such file (give JSONL, a datasets directory or parquet file(s))")
    options = {"kind": kind, "fmt": fmt, "max_length": max_length, "overflow": overflow, **(weight_options or {})}
    fp = fingerprint(data_path, tokenizer_dir, options)
    out = record_path(out_dir, kind, fmt)
    stats_file = out_dir / "stats.json"
    if out.is_file() and stats_file.is_file():
        old = DataStats(**json.loads(stats_file.read_text()))
        if old.fingerprint == fp:
            return out, old

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if tokenizer.chat_template is None:
        raise ValueError(f"{tokenizer_dir}: the tokenizer has no chat template")
    stats = DataStats(fingerprint=fp)
    tmp = out.with_name(out.name + ".tmp")
    with RecordWriter(tmp, fmt) as writer:
        lines = iter_records(data_path)
        for loc, obj in tqdm(lines, desc=f"tokenizing {data_path.name}", unit=" rec", disable=not progress):
            stats.records += 1
            if kind == "sft":
                ex = sft_example(tokenizer, normalize_record(obj, loc), max_length, overflow, loc, weight_fn)
            else:
                ex = preference_example(tokenizer, normalize_preference(obj, loc), max_length, overflow, loc)
            if ex.dropped:
                stats.dropped_too_long += ex.dropped == "too_long"
                stats.dropped_no_target += ex.dropped == "no_target"
                continue
            stats.truncated += int(ex.truncated)
            stats.written += 1
            stats.sampled_ids += kind == "preference" and ("chosen_ids" in obj or "rejected_ids" in obj)
            stats.tokens += int(sum(len(v) for k, v in ex.features.items() if k.endswith("ids")))
            writer.write(encode_example(ex.features))
    tmp.replace(out)
    stats_file.write_text(json.dumps(dataclasses.asdict(stats), indent=2) + "\n")
    return out, stats



# --------------------------------------------------------------------------- pair weights
def completion_length(weights) -> int:
    """Tokens of a tokenized side from its first weighted (completion) token to its end."""
    nz = np.flatnonzero(np.asarray(weights))
    return int(len(weights) - nz[0]) if len(nz) else 0


def length_balance_weights(chosen_lengths, rejected_lengths) -> np.ndarray:
    """[N] float32 per-pair weights from the completion lengths of each pair's sides ([N] each): pairs of
    equal length weigh 1; the n_long pairs whose chosen side is longer and the n_short whose chosen side
    is shorter carry (n_long + n_short) / 2 each in total, so weights (n_long + n_short) / (2 n_long)
    and (n_long + n_short) / (2 n_short), and the mean over the pairs is 1. When either kind is
    missing there is nothing to balance: every weight is 1."""
    c, r = np.asarray(chosen_lengths), np.asarray(rejected_lengths)
    longer, shorter = c > r, c < r
    n_long, n_short = int(longer.sum()), int(shorter.sum())
    w = np.ones(len(c), np.float64)
    if n_long and n_short:
        w[longer] = (n_long + n_short) / (2 * n_long)
        w[shorter] = (n_long + n_short) / (2 * n_short)
    return w.astype(np.float32)


def balance_lengths(records: Path, fmt: str) -> tuple[Path, dict]:
    """The preference records of ``records`` with a ``pair_weight`` feature (``length_balance_weights``
    over the whole file) added to each, written as ``<stem>-balanced.<fmt>`` next to it; reused while
    the data's fingerprint (``stats.json``) is unchanged. Returns the file and a summary (how many
    pairs have a longer, shorter, equally long chosen side, and the weights of the first two)."""
    out = records.with_name(f"{records.stem}-balanced{records.suffix}")
    marker = out.with_name(out.name + ".json")
    fp = json.loads((records.parent / "stats.json").read_text())["fingerprint"]
    if out.is_file() and marker.is_file():
        old = json.loads(marker.read_text())
        if old.pop("fingerprint", None) == fp:
            return out, old
    src = open_source(records, fmt)
    examples = [decode_example(src[i]) for i in range(len(src))]
    c = np.array([completion_length(ex["chosen_weights"]) for ex in examples])
    r = np.array([completion_length(ex["rejected_weights"]) for ex in examples])
    weights = length_balance_weights(c, r)
    tmp = out.with_name(out.name + ".tmp")
    with RecordWriter(tmp, fmt) as w:
        for ex, weight in zip(examples, weights):
            w.write(encode_example({**ex, "pair_weight": np.array([weight], np.float32)}))
    tmp.replace(out)
    summary = {"longer": int((c > r).sum()), "shorter": int((c < r).sum()), "equal": int((c == r).sum()),
               "longer_weight": float(weights[c > r][0]) if (c > r).any() else 1.0,
               "shorter_weight": float(weights[c < r][0]) if (c < r).any() else 1.0}
    marker.write_text(json.dumps({"fingerprint": fp, **summary}))
    return out, summary
