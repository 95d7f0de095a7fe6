"""Training checkpoints with orbax: trainable parameters, optimizer state, data-iterator state, step,
and the run's config. The frozen base is not saved: a resumed run rebuilds it from the HF directory
and lays the checkpoint over it.

Layout: ``RUN_DIR/checkpoints/<step>/{trainable,opt_state,meta}``. Every process takes part in saving
(orbax writes each process's shards); the last ``keep`` checkpoints are kept.

Faults (``checkpoint_faults``): a save that fails (a full disk, no permission) raises
``CheckpointSaveError``, one line naming the step, the directory and the cause; orbax writes into a
temporary directory and renames it only once complete, so the earlier checkpoints stay intact, and
the next start removes the half-written one. ``resume`` lays the newest checkpoint that reads over the
run's state: one that cannot be read (a truncated or missing file) is moved to
``RUN_DIR/checkpoints-unreadable/<step>`` with one warning naming its step and why, and the one before
is tried; when none reads, ``NoReadableCheckpoint`` names the run directory. A checkpoint that reads
but does not fit the run (another LoRA rank or method) is a ``CheckpointMismatch``, never skipped.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from ttpa_jax.core.errors import UserError
from ttpa_jax.model.distributed import sync_processes
from ttpa_jax.train.checkpoint_faults import is_mismatch, quiet_orbax, reason


class CheckpointSaveError(UserError):
    """A checkpoint could not be written (the message names the step, the directory and the cause)."""


class CheckpointMismatch(UserError):
    """A checkpoint that reads but does not fit the run being resumed."""


class NoReadableCheckpoint(UserError):
    """A run directory whose checkpoints all fail to read."""


class UnreadableCheckpoint(UserError):
    """One checkpoint failed to read (``why``: one line); ``resume`` tries the one before."""

    def __init__(self, step: int, why: str):
        super().__init__(f"checkpoint step {step}: {why}")
        self.step, self.why = step, why


class Checkpoints:
    def __init__(self, run_dir: str | Path, keep: int = 3):
        quiet_orbax()
        self.dir = Path(run_dir).absolute() / "checkpoints"
        self.aside = self.dir.with_name("checkpoints-unreadable")
        if jax.process_index() == 0:  # a save that never finished (killed, disk full): removed before orbax looks
            for tmp in self.dir.glob("*.orbax-checkpoint-tmp*"):
                shutil.rmtree(tmp, ignore_errors=True)
        self.mngr = ocp.CheckpointManager(
            self.dir,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False,
                                                 cleanup_tmp_directories=True),
        )

    def latest_step(self) -> int | None:
        return self.mngr.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.mngr.all_steps())

    def save(self, step: int, trainable, opt_state, meta: dict[str, Any]) -> None:
        before = self.latest_step()
        try:
            self.mngr.save(
                step,
                args=ocp.args.Composite(
                    trainable=ocp.args.StandardSave(trainable),
                    opt_state=ocp.args.StandardSave(opt_state),
                    meta=ocp.args.JsonSave(meta),
                ),
            )
            self.mngr.wait_until_finished()
        except Exception as e:
            kept = f"the earlier checkpoints are intact (newest: step {before})" if before else "no earlier checkpoint"
            raise CheckpointSaveError(f"cannot save checkpoint step {step} in {self.dir}: {reason(e)}; {kept}; "
                                      "fix that and rerun the same command to continue") from None

    def restore(self, step: int, trainable_like, opt_state_like):
        """Restore onto the shardings and dtypes of the given (possibly abstract) trees."""
        abstract = lambda tree: jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)  # noqa: E731
        out = self._restore(step, trainable=ocp.args.StandardRestore(abstract(trainable_like)),
                            opt_state=ocp.args.StandardRestore(abstract(opt_state_like)))
        return out["trainable"], out["opt_state"], out["meta"]

    def restore_trainable(self, step: int, trainable_like):
        """Only the trainable parameters (for export)."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, trainable_like)
        out = self._restore(step, trainable=ocp.args.StandardRestore(abstract))
        return out["trainable"], out["meta"]

    def _restore(self, step: int, **items):
        try:
            return self.mngr.restore(step, args=ocp.args.Composite(**items, meta=ocp.args.JsonRestore()))
        except Exception as e:
            if is_mismatch(e):
                raise CheckpointMismatch(f"{self.dir / str(step)} does not fit this run ({reason(e)}): it was made "
                                         "with other settings; rerun with those, or use another --out") from None
            raise UnreadableCheckpoint(step, reason(e)) from None

    def resume(self, restore: Callable[[int], None]) -> int:
        """Lay the newest checkpoint that reads over the run's state with ``restore(step)`` (which calls
        ``restore`` above) and return its step; 0 when there is none. An unreadable one (on any
        process) is set aside with one warning; all processes agree on the step."""
        steps = sorted(self.all_steps(), reverse=True)
        last = ""
        for step in steps:
            try:
                restore(step)
                why = None
            except UnreadableCheckpoint as e:
                why = e.why
            why = _agreed(why)
            if why is None:
                return step
            last = why
            self._set_aside(step)
            if jax.process_index() == 0:
                print(f"warning: checkpoint step {step} cannot be read ({why}); moved to {self.aside / str(step)}; "
                      "trying the one before", file=sys.stderr, flush=True)
        if steps:
            raise NoReadableCheckpoint(f"{self.dir.parent}: none of its checkpoints can be read (steps "
                                       f"{', '.join(map(str, sorted(steps)))}; the last error: {last}); "
                                       "they are in checkpoints-unreadable/: start again with another --out")
        return 0

    def _set_aside(self, step: int) -> None:
        if jax.process_index() == 0:
            self.aside.mkdir(exist_ok=True)
            target = self.aside / str(step)
            if target.exists():
                shutil.rmtree(target)
            (self.dir / str(step)).rename(target)
        sync_processes(f"checkpoint-aside-{step}")
        self.mngr.reload()

    def close(self) -> None:
        self.mngr.close()


def _agreed(why: str | None) -> str | None:
    """``why`` of this process, or of the first process whose restore failed (None: all read it)."""
    if jax.process_count() == 1:
        return why
    from jax.experimental import multihost_utils

    failed = np.asarray(multihost_utils.process_allgather(np.int32(why is not None)))
    if not failed.any():
        return None
    return why or f"unreadable on process {int(np.argmax(failed))}"
