"""The one training loop: every method's unit (``train.methods``) runs through it.

A unit's ``start(cfg, run_dir, placement, progress, **options)`` returns a ``Session``: the run's
state on the mesh and where its batches come from (tokenized records for SFT, DPO and ORPO;
rollouts for GRPO and PPO). The loop owns what every run does the same way: the run directory and
its ``config.yaml``, the mesh and its sharding rules, resuming from the newest checkpoint that reads
(``Checkpoints.resume``), one ``batch`` + ``update`` per step, the NaN check, SIGTERM / SIGINT
(``preemption``: the step finishes, is saved, and the run exits 75), logging (``metrics.jsonl``,
TensorBoard, the progress bar), checkpoints on schedule and at the end, ``--stop-after``, and the
summary it returns.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Protocol

import jax
import yaml

from ttpa_jax.model.base_models import resolve_model
from ttpa_jax.model.sharding import Placement, make_mesh, use_rules
from ttpa_jax.train.batches import Batch
from ttpa_jax.train.checkpoint import Checkpoints
from ttpa_jax.train.config import RunArgs
from ttpa_jax.train.methods import load_unit
from ttpa_jax.train.preemption import Preempted, StopRequests
from ttpa_jax.train.run_log import RunLog


class TrainingDiverged(RuntimeError):
    """The loss or gradient became NaN/Inf; the run stopped and kept its last good checkpoint."""


class Session(Protocol):
    """One run of a unit, as the loop drives it."""

    steps: int  # optimizer steps of the whole run (the loop's steps)

    def batch(self, step: int, key) -> tuple[Batch, dict[str, float]]:
        """Step ``step``'s batch (host arrays, this process's share) and metrics known on the host."""

    def update(self, batch: Batch, step: int, key) -> dict[str, float]:
        """The step's update(s) on ``batch``; returns its metrics (``loss``, ``grad_norm``, ...)."""

    def save(self, ckpts: Checkpoints, step: int, meta: dict[str, Any]) -> None:
        """Checkpoint the state at ``step`` with ``meta`` plus the unit's own (data iterator state)."""

    def restore(self, ckpts: Checkpoints, step: int) -> None:
        """Lay checkpoint ``step`` over the freshly built state (raises if it does not fit the run)."""

    def summary(self) -> dict[str, Any]:
        """What the run's summary adds for this unit (data statistics, prompts)."""


def train(cfg: RunArgs, *, progress: bool = True, **options) -> dict:
    """Run (or resume) training of ``cfg``'s method; returns a summary with the final metrics and the run
    directory. ``options`` go to the unit (the RL units take ``reward_fn`` and ``executor``)."""
    if cfg.logits_chunk < 0:
        raise ValueError(f"--logits-chunk {cfg.logits_chunk}: give a number of positions, or 0 for the whole sequence")
    unit = load_unit(cfg)
    cfg = dataclasses.replace(cfg, model=str(resolve_model(cfg.model)))  # a base model name or FILE.gguf -> its directory
    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_config(cfg, run_dir)
    use_rules(cfg.sharding)  # the run's --sharding.* rules, for everything it places
    placement = Placement(make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor))
    session = unit.start(cfg, run_dir, placement, progress, **options)
    steps = session.steps

    ckpts = Checkpoints(run_dir, keep=cfg.keep)
    start = ckpts.resume(lambda at: session.restore(ckpts, at))  # the newest checkpoint that reads
    if start:
        say(f"resumed from {ckpts.dir / str(start)} (step {start} of {steps})")
    if start >= steps:
        say(f"already trained: step {start} of {steps}")
        ckpts.close()
        return {"run_dir": str(run_dir), "step": start, "steps": steps, "metrics": {}}

    log = RunLog(run_dir, start, steps, progress=progress)
    base_key = jax.random.key(cfg.seed)
    last_saved, metrics, step = start, {}, start

    def save(at: int) -> None:
        session.save(ckpts, at, {"step": at, "config": cfg.to_dict()})

    try:
        with StopRequests() as signals:  # SIGTERM / SIGINT: finish the step, save it, exit 75
            for step in range(start + 1, steps + 1):
                t0 = time.perf_counter()
                key = jax.random.fold_in(base_key, step)
                batch, host = session.batch(step, key)
                metrics = session.update(batch, step, key)
                check_finite(step, metrics, last_saved, ckpts.dir)
                metrics.update(host)
                seconds = time.perf_counter() - t0  # the step's wall time, building its batch included
                metrics.update(tokens_per_s=batch.real_tokens() * jax.process_count() / seconds, seconds=seconds)
                stop, last_saved = end_step(cfg, step, start, steps, metrics, log, save, last_saved)
                if signals.stop_at(step) and step < steps:
                    if last_saved != step:
                        save(step)
                    say(signals.message(step, steps, ckpts.dir))
                    raise Preempted(signals.message(step, steps, ckpts.dir))
                if stop:
                    break
    finally:
        log.close()
        ckpts.close()
    return {"run_dir": str(run_dir), "step": step, "steps": steps, "metrics": metrics, **session.summary()}


def write_config(cfg: RunArgs, run_dir: Path) -> None:
    if jax.process_index() == 0:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def check_finite(step: int, metrics: dict, last_saved: int, ckpt_dir) -> None:
    """Stop a run whose loss or gradient norm is NaN/Inf, naming the last good checkpoint."""
    if not (math.isfinite(metrics["loss"]) and math.isfinite(metrics["grad_norm"])):
        raise TrainingDiverged(
            f"step {step}: loss {metrics['loss']}, grad norm {metrics['grad_norm']}: training diverged; "
            f"the last good checkpoint is step {last_saved} in {ckpt_dir} (lower --optim.lr or check the data)"
        )


def end_step(cfg: RunArgs, step: int, start: int, steps: int, metrics: dict, log: RunLog, save,
             last_saved: int) -> tuple[bool, int]:
    """The bookkeeping after a step: log on schedule, checkpoint on schedule (``save(step)``), honour
    ``--stop-after``. Returns (stop now, the last saved step)."""
    if step % cfg.log_every == 0 or step == steps:
        log.log(step, metrics)
    log.advance()
    if step % cfg.save_every == 0 or step == steps:
        save(step)
        last_saved = step
    if cfg.stop_after and step - start >= cfg.stop_after and step < steps:
        if last_saved != step:
            save(step)
            last_saved = step
        say(f"stopped after {cfg.stop_after} steps at step {step}; rerun the same command to continue")
        return True, last_saved
    return False, last_saved


def say(msg: str) -> None:
    if jax.process_index() == 0:
        print(msg, flush=True)
