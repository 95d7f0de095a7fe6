"""What a training run writes as it goes: ``metrics.jsonl``, TensorBoard events, a progress bar.

On resume, lines of ``metrics.jsonl`` past the restored step are dropped first, so every step is
logged exactly once however often the run was interrupted. Only process 0 writes.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import jax
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter
from tqdm import tqdm


class TensorBoardWriter:
    """Scalar summaries in TensorBoard's event format (no TensorFlow needed)."""

    def __init__(self, logdir: Path):
        self._w = EventFileWriter(str(logdir))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        summary = Summary(value=[Summary.Value(tag=k, simple_value=float(v)) for k, v in values.items()])
        self._w.add_event(Event(wall_time=time.time(), step=step, summary=summary))

    def close(self) -> None:
        self._w.close()


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keep only lines with ``step <= last_step`` (and drop a torn last line)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("step", 0) <= last_step:
            kept.append(line)
    path.write_text("".join(k + "\n" for k in kept))


class RunLog:
    def __init__(self, run_dir: Path, start_step: int, total_steps: int, progress: bool = True):
        self.main = jax.process_index() == 0
        self.path = run_dir / "metrics.jsonl"
        self.bar = None
        if not self.main:
            return
        truncate_metrics(self.path, start_step)
        self.tb = TensorBoardWriter(run_dir / "tensorboard")
        if progress:
            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.main:
            return
        rec = {"step": step, **{k: _num(v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        self.tb.scalars(step, {k: v for k, v in rec.items() if k != "step" and v is not None})
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{metrics.get('loss', float('nan')):.4f}", refresh=False)

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.main:
            self.tb.close()


def _num(v):
    v = float(v)
    return v if math.isfinite(v) else None
