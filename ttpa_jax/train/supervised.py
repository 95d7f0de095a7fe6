"""Units trained on tokenized records (SFT, DPO, ORPO): what such a unit declares, and the session that
feeds the loop its batches.

A ``RecordUnit`` names the record kind it reads (``dataset.prepare``: ``sft`` or ``preference``), its
batch layout (``loader.collate``), its ``Objective`` and its loss weights; the session tokenizes the
run's data once into ``RUN_DIR/data``, builds the ``trainer.Trainer``, runs a reference pass first
when the unit asks for one, and draws batches through the resumable ``loader.Loader``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

from ttpa_jax.model.distributed import sync_processes
from ttpa_jax.model.sharding import Placement
from ttpa_jax.train import dataset as ds
from ttpa_jax.train.batches import Batch
from ttpa_jax.train.checkpoint import Checkpoints
from ttpa_jax.train.config import RunArgs
from ttpa_jax.train.loader import Loader
from ttpa_jax.train.optim import schedule
from ttpa_jax.train.packing import efficiency
from ttpa_jax.train.trainer import Objective, Trainer, host_metrics, tokenizer_dir


def no_weights(cfg: RunArgs):
    """The default loss weights: what the record files hold (no options in the data fingerprint)."""
    return None, {}


@dataclasses.dataclass(frozen=True)
class RecordUnit:
    """A unit trained on tokenized records.

    kind:         record kind ``dataset.prepare`` writes (``sft`` or ``preference``).
    objective:    cfg -> the ``Objective`` the step runs.
    layout:       cfg -> the batch layout (``loader.collate``: rows, packed, shared_prefix).
    weights:      cfg -> (``weight_fn`` for ``dataset.prepare`` or None, options entering the data fingerprint).
    precompute:   cfg -> (trainer, records) -> records with what the loss reads precomputed (DPO's
                  reference pass), or None.
    """

    kind: str
    objective: Callable[[RunArgs], Objective]
    layout: Callable[[RunArgs], str]
    weights: Callable[[RunArgs], tuple] = no_weights
    precompute: Callable[[RunArgs], Callable | None] = lambda cfg: None

    def start(self, cfg: RunArgs, run_dir: Path, placement: Placement, progress: bool = True) -> RecordSession:
        if cfg.dataset.batch_size % (placement.batch_divisor * cfg.optim.grad_accum):
            raise ValueError(
                f"dataset.batch_size {cfg.dataset.batch_size} must divide by grad_accum ({cfg.optim.grad_accum}) "
                f"times the data-parallel devices ({placement.batch_divisor})"
            )
        records, stats = prepare_data(cfg, self, run_dir, progress)
        steps = total_steps(cfg, stats.written)
        trainer = self.trainer(cfg, placement, steps)
        precompute = self.precompute(cfg)
        if precompute is not None:
            records = precompute(trainer, records, cfg, self.layout(cfg), progress)
        loader = Loader(
            records, cfg.dataset.format, global_batch=cfg.dataset.batch_size, seed=cfg.seed,
            shuffle=cfg.dataset.shuffle, pad_id=trainer.pad_id, pad_multiple=cfg.dataset.pad_multiple,
            max_length=cfg.dataset.max_length, process_index=jax.process_index(), process_count=jax.process_count(),
            layout=self.layout(cfg), row_multiple=placement.batch_divisor * cfg.optim.grad_accum,
            row_length=cfg.dataset.row_length, lengths_per_octave=cfg.dataset.lengths_per_octave,
        )
        return RecordSession(steps, trainer, loader, stats, schedule(cfg.optim, steps), run_dir)

    def trainer(self, cfg: RunArgs, placement: Placement, steps: int) -> Trainer:
        """The model built, split, placed, and its step jitted with this unit's objective."""
        return Trainer.create(cfg, placement, steps, self.objective(cfg))


@dataclasses.dataclass
class RecordSession:
    """The loop's view of a record unit's run (``loop.Session``)."""

    steps: int
    trainer: Trainer
    loader: Loader
    stats: Any  # dataset.Stats
    lr_at: Callable
    run_dir: Path

    def batch(self, step: int, key) -> tuple[Batch, dict[str, float]]:
        batch = next(self.loader)
        return batch, {"packing/efficiency": efficiency(batch)}

    def update(self, batch: Batch, step: int, key) -> dict[str, float]:
        metrics = host_metrics(self.trainer.step(batch, key))
        metrics["learning_rate"] = float(self.lr_at(step - 1))
        return metrics

    def save(self, ckpts: Checkpoints, step: int, meta: dict[str, Any]) -> None:
        ckpts.save(step, self.trainer.trainable, self.trainer.opt_state,
                   {**meta, "data_state": self.loader.get_state(), "data_fingerprint": self.stats.fingerprint})

    def restore(self, ckpts: Checkpoints, step: int) -> None:
        st = self.trainer
        st.trainable, st.opt_state, meta = ckpts.restore(step, st.trainable, st.opt_state)
        if meta.get("data_fingerprint", self.stats.fingerprint) != self.stats.fingerprint:
            raise ValueError(
                f"{self.run_dir}: the training data or its tokenization changed since this run's checkpoints were "
                f"written (fingerprint {meta['data_fingerprint']} -> {self.stats.fingerprint}); resume with the "
                "original data, or start a new run with another --out"
            )
        self.loader.set_state(meta["data_state"])

    def summary(self) -> dict[str, Any]:
        return {"data": dataclasses.asdict(self.stats)}


def prepare_data(cfg: RunArgs, unit: RecordUnit, run_dir: Path, progress: bool = True):
    """Tokenize the run's JSONL once into RUN_DIR/data (reused on resume). Returns (records, stats)."""
    weight_fn, weight_opts = unit.weights(cfg)
    prepare = lambda: ds.prepare(  # noqa: E731
        cfg.data, tokenizer_dir(cfg), run_dir / "data", kind=unit.kind,
        fmt=cfg.dataset.format, max_length=cfg.dataset.max_length, overflow=cfg.dataset.overflow,
        weight_fn=weight_fn, weight_options=weight_opts, progress=progress and jax.process_index() == 0,
    )
    if jax.process_index() == 0:  # process 0 first; the others then reuse its file (or build their own
        prepare()                 # copy when the run directory is not on a shared filesystem)
    sync_processes("prepare-data")
    records, stats = prepare()
    if jax.process_index() == 0:
        print(f"data: {stats.summary()}", flush=True)
    if stats.written == 0:
        raise ValueError(f"{cfg.data}: no usable records ({stats.summary()})")
    return records, stats


def total_steps(cfg: RunArgs, num_records: int) -> int:
    if cfg.steps > 0:
        return cfg.steps
    return max(1, math.ceil(cfg.epochs * num_records / cfg.dataset.batch_size))
