"""Where ``sample`` writes as it goes, so that a killed run continues where it stopped.

Two append-only, fsynced files: the pairs (``--out``, one preference record per line) and the prompt
log next to them (``pairs.jsonl`` -> ``pairs.prompts.jsonl``), one line per finished prompt: its
outcome (what the audit and the summary count), the run's settings, and ``out_bytes``, the size of
the pairs file once that prompt's pairs were in. A prompt's pairs go first (one write), then its log
line. On the next start a torn last line is cut from the log (``core.record_log``) and the pairs
file is cut back to the last logged prompt's ``out_bytes``: pairs whose prompt never got its log line
are made again, never doubled. Prompts in the log are not decoded again; a log written with other
settings is refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ttpa_jax.core.errors import ConfigError
from ttpa_jax.core.jsonl import DataError, read_jsonl
from ttpa_jax.core.record_log import RecordLog, refuse_other_settings, write_synced
from ttpa_jax.sample.candidates import Prompt


def prompt_log_path(out: Path) -> Path:
    """``pairs.jsonl`` -> ``pairs.prompts.jsonl`` (next to the pairs)."""
    out = Path(out)
    return out.with_name((out.name[: -len(".jsonl")] if out.name.endswith(".jsonl") else out.name) + ".prompts.jsonl")


def prompt_key(prompt: Prompt) -> str:
    return f"{prompt.record_id}#{prompt.turn}"


class PairOutput:
    """The pairs file and its prompt log, opened to continue (``settings``: what the pairs depend on)."""

    def __init__(self, out: Path, settings: dict[str, Any]):
        self.out, self.settings = Path(out), settings
        log_path = prompt_log_path(self.out)
        size = self.out.stat().st_size if self.out.is_file() else 0
        if size and not log_path.is_file():
            raise ConfigError(f"{self.out} exists but {log_path.name} does not: it was not written by a sample run "
                              "that can be continued; remove it or write to another --out")
        self.log = RecordLog(log_path)
        logged = list(self.log.records.values())
        if logged:
            refuse_other_settings(self.out, logged[0].get("settings", {}), settings)
        end = logged[-1]["out_bytes"] if logged else 0
        if size < end:
            raise DataError(f"{self.out}: {size} bytes, but {log_path.name} says {end} were written; the file was "
                            "changed after sample wrote it: remove both files to start again")
        if size > end:  # the pairs of a prompt whose log line was never written: made again
            os.truncate(self.out, end)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.end = end

    def done(self, prompt: Prompt) -> bool:
        return prompt_key(prompt) in self.log

    def write(self, prompt: Prompt, records: list[dict], outcome: dict[str, Any]) -> None:
        """One prompt's pairs, then its log line (``outcome``: what the audit keeps of it)."""
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
        if data:
            write_synced(self._fd, data)
        self.end += len(data)
        self.log.append({"id": prompt_key(prompt),
                         "meta": {"outcome": outcome, "out_bytes": self.end, "settings": self.settings}})

    def outcomes(self) -> list[dict[str, Any]]:
        """Every finished prompt's outcome, in the order they were written."""
        return [meta["outcome"] for meta in self.log.records.values()]

    def records(self) -> list[dict]:
        return read_jsonl(self.out) if self.end else []

    def close(self) -> None:
        self.log.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> PairOutput:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
