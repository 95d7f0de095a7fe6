"""``python -m ttpa_jax.validate FILE``: apply the record checks of ``construct.checks`` to any SFT JSONL file.

It prints how many records pass and, per rejection reason, the count and the first example as
``file:line: detail``. Exit code 0 when every record passes, 1 when some are rejected, 2 for a file
that cannot be read (``core.cli``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import tyro

from ttpa_jax.construct.checks import check_record
from ttpa_jax.core.cli import run, stage_main
from ttpa_jax.core.jsonl import iter_jsonl


@dataclass
class ValidateArgs:
    """Check every record of an SFT JSONL file; exit 1 when some are rejected."""

    file: Annotated[Path, tyro.conf.Positional]
    """SFT JSONL file ({"messages", "tools"} records)."""
    min_calls: int = 1
    """Fewest tool calls per record."""
    max_calls: int | None = None
    """Most tool calls per record (default: no bound)."""


def validate_file(path: str | Path, min_calls: int = 1, max_calls: int | None = None) -> dict[str, Any]:
    """Check every record of an SFT JSONL file: ``{"records", "passed", "rejected": {reason: n},
    "examples": {reason: "file:line: detail"}}``."""
    rejected: Counter = Counter()
    examples: dict[str, str] = {}
    records = passed = 0
    for lineno, record in iter_jsonl(path):
        records += 1
        rejections = check_record(record, min_calls, max_calls)
        passed += not rejections
        for r in rejections:
            rejected[r.reason] += 1
            examples.setdefault(r.reason, f"{path}:{lineno}: {r.detail}")
    return {"records": records, "passed": passed, "rejected": dict(rejected), "examples": examples}


@stage_main
def main(argv: list[str] | None = None) -> int:
    args = tyro.cli(ValidateArgs, args=argv, prog="python -m ttpa_jax.validate")
    report = validate_file(args.file, args.min_calls, args.max_calls)
    print(f"{report['passed']} of {report['records']} records pass")
    for reason, n in sorted(report["rejected"].items()):
        print(f"  {reason}: {n} (e.g. {report['examples'][reason]})")
    return 0 if report["passed"] == report["records"] else 1


if __name__ == "__main__":
    run(main)
