"""Training checkpoints with orbax: trainable parameters, optimizer state, data-iterator state, step,
and the run's config. The frozen base is not saved: a resumed run rebuilds it from the HF directory
and lays the checkpoint over it.

Layout: ``RUN_DIR/checkpoints/<step>/{trainable,opt_state,meta}``. Every process takes part in saving
(orbax writes each process's shards); the last ``keep`` checkpoints are kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpoints:
    def __init__(self, run_dir: str | Path, keep: int = 3):
        self.dir = Path(run_dir).absolute() / "checkpoints"
        self.mngr = ocp.CheckpointManager(
            self.dir,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False),
        )

    def latest_step(self) -> int | None:
        return self.mngr.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.mngr.all_steps())

    def save(self, step: int, trainable, opt_state, meta: dict[str, Any]) -> None:
        self.mngr.save(
            step,
            args=ocp.args.Composite(
                trainable=ocp.args.StandardSave(trainable),
                opt_state=ocp.args.StandardSave(opt_state),
                meta=ocp.args.JsonSave(meta),
            ),
        )
        self.mngr.wait_until_finished()

    def restore(self, step: int, trainable_like, opt_state_like):
        """Restore onto the shardings and dtypes of the given (possibly abstract) trees."""
        abstract = lambda tree: jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)  # noqa: E731
        out = self.mngr.restore(
            step,
            args=ocp.args.Composite(
                trainable=ocp.args.StandardRestore(abstract(trainable_like)),
                opt_state=ocp.args.StandardRestore(abstract(opt_state_like)),
                meta=ocp.args.JsonRestore(),
            ),
        )
        return out["trainable"], out["opt_state"], out["meta"]

    def restore_trainable(self, step: int, trainable_like):
        """Only the trainable parameters (for export)."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, trainable_like)
        out = self.mngr.restore(
            step, args=ocp.args.Composite(trainable=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
        )
        return out["trainable"], out["meta"]

    def close(self) -> None:
        self.mngr.close()
