"""The training loop shared by every objective: build the model, tokenize the data, jit one step,
checkpoint, resume.

The step is a pure ``jax.jit`` function of (trainable, frozen, reference, optimizer state, batch,
key): the model is split with ``nnx.split`` outside and merged inside. With LoRA, the trainable part
is the ``nnx.LoRAParam`` adapters (float32) and the frozen base is stored in the compute dtype; the
DPO reference is the same network with adapters off. Without LoRA every ``nnx.Param`` trains in
float32 and the DPO reference is a frozen copy.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import yaml
from flax import nnx

from ttpa_jax.train import dataset as ds
from ttpa_jax.train.checkpoint import Checkpoints
from ttpa_jax.core.malloc import tune_malloc
from ttpa_jax.model.base_models import resolve_model
from ttpa_jax.model.lora import apply_lora
from ttpa_jax.model.transformer import Ctx, Transformer
from ttpa_jax.train.objectives import Objective, make_dpo, make_sft
from ttpa_jax.train.reference import precompute_reference
from ttpa_jax.model.distributed import sync_processes
from ttpa_jax.train.optim import make_optimizer, schedule
from ttpa_jax.train.run_log import RunLog
from ttpa_jax.model.sharding import Placement, loader_shardings, make_mesh
from ttpa_jax.train.config import TrainConfig
from ttpa_jax.model.hf_io import load_pretrained
from ttpa_jax.model.transformer import init_model
from ttpa_jax.train.token_weights import make_weight_fn
from ttpa_jax.train.packing import efficiency
from ttpa_jax.train.loader import Loader


tune_malloc()  # before jax starts its threads: step buffers stay mapped between steps (core/malloc.py)


class TrainingDiverged(RuntimeError):
    """The loss or gradient became NaN/Inf; the run stopped and kept its last good checkpoint."""


# --------------------------------------------------------------------------- model
def build_model(cfg: TrainConfig, placement: Placement | None = None) -> Transformer:
    """The base model (from an HF directory or a preset) with LoRA adapters attached when rank > 0."""
    compute = jnp.dtype(cfg.dtype)
    base_dtype = compute if cfg.lora.rank > 0 else jnp.float32  # trainable weights are fp32
    if Path(cfg.model).is_dir():
        shardings = loader_shardings(placement.mesh) if placement else None
        model = load_pretrained(cfg.model, dtype=base_dtype, compute_dtype=compute, remat=cfg.remat, shardings=shardings)
    else:
        model = init_model(cfg.model, seed=cfg.seed, dtype=compute, param_dtype=base_dtype, remat=cfg.remat)
    return apply_lora(model, cfg.lora, seed=cfg.seed)


def split_model(model: Transformer, lora: bool):
    """(graphdef, trainable, frozen): adapters vs the rest with LoRA, all Params vs the rest without."""
    return nnx.split(model, nnx.LoRAParam if lora else nnx.Param, ...)


def make_objective(cfg: TrainConfig) -> Objective:
    if cfg.objective == "sft":
        return make_sft(cfg.logits_chunk)
    d = cfg.dpo
    return make_dpo(d.beta, d.loss_type, d.label_smoothing, d.sft_weight, cfg.logits_chunk)


# --------------------------------------------------------------------------- step
def make_train_step(graphdef, objective: Objective, tx: optax.GradientTransformation, accum: int, lora: bool,
                    out_shardings=None):
    """jit(step)(trainable, frozen, ref_params, opt_state, batch, key) -> (trainable, opt_state, metrics).

    ``out_shardings``: (trainable, opt_state, metrics) shardings, so every step keeps the same layout.
    """

    def reference(trainable, frozen, ref_params):
        """The DPO reference model (objectives run it with adapters off)."""
        if lora:
            return nnx.merge(graphdef, jax.lax.stop_gradient(trainable), frozen)
        if ref_params is not None:
            return nnx.merge(graphdef, ref_params, frozen)
        return None

    def loss_fn(trainable, frozen, ref_params, batch, norms, key):
        model = nnx.merge(graphdef, trainable, frozen)
        ref = reference(trainable, frozen, ref_params) if objective.needs_reference else None
        return objective.loss(model, ref, batch, Ctx(lora=True, dropout_key=key), norms)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(trainable, frozen, ref_params, opt_state, batch, key):
        norms = objective.normalizers(batch)
        if accum == 1:
            (_, sums), grads = grad_fn(trainable, frozen, ref_params, batch, norms, key)
        else:
            micro = jax.tree.map(lambda x: x.reshape(accum, x.shape[0] // accum, *x.shape[1:]), batch)

            def body(carry, xs):
                mb, i = xs
                (_, s), g = grad_fn(trainable, frozen, ref_params, mb, norms, jax.random.fold_in(key, i))
                return jax.tree.map(jnp.add, carry, (g, s)), None

            first = jax.tree.map(lambda x: x[0], micro)
            shapes = jax.eval_shape(lambda: grad_fn(trainable, frozen, ref_params, first, norms, key))
            (_, sums_shape), grads_shape = shapes
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (grads_shape, sums_shape))
            (grads, sums), _ = jax.lax.scan(body, zeros, (micro, jnp.arange(accum)))
        metrics = objective.finalize(sums)
        metrics["grad_norm"] = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, opt_state, trainable)
        trainable = optax.apply_updates(trainable, updates)
        return trainable, opt_state, metrics

    return jax.jit(step, donate_argnums=(0, 3), out_shardings=out_shardings)


# --------------------------------------------------------------------------- helpers
def tokenizer_dir(cfg: TrainConfig) -> Path:
    d = Path(cfg.tokenizer or cfg.model)
    if not d.is_dir():
        raise ValueError(f"--model {cfg.model} is a preset: give --tokenizer DIR (a directory with a tokenizer and chat template)")
    return d


def weight_fn_for(cfg: TrainConfig):
    """SFT loss weights: every token (``--dataset.no-assistant-only``), TL-Training's MAE/PKT, or None
    for the plain assistant mask. Returns (fn, options that enter the data fingerprint)."""
    if cfg.objective != "sft":
        return None, {}
    if not cfg.dataset.assistant_only:
        return (lambda r, record: np.ones(len(r.ids), np.float32)), {"assistant_only": False}
    if not (cfg.mae or cfg.pkt_wmax):
        return None, {}
    return make_weight_fn(mae=cfg.mae, pkt_wmax=cfg.pkt_wmax), {"mae": cfg.mae, "pkt_wmax": cfg.pkt_wmax}


def batch_layout(cfg: TrainConfig) -> str:
    """How records become rows (``loader.collate``): packed SFT, shared-prefix DPO, or one per row.
    Packing picks each batch's row count from its records, so it needs a single process (processes
    must agree on the batch shape)."""
    if cfg.objective == "sft":
        return "packed" if cfg.dataset.pack and jax.process_count() == 1 else "rows"
    if cfg.objective == "dpo":
        return "shared_prefix" if cfg.dpo.shared_prefix else "rows"
    return "rows"


def packing_efficiency(host_batch) -> float:
    """Real tokens over token slots of a batch's sequence rows (1.0: no padding)."""
    return efficiency(host_batch)


def total_steps(cfg: TrainConfig, num_records: int) -> int:
    if cfg.steps > 0:
        return cfg.steps
    return max(1, math.ceil(cfg.epochs * num_records / cfg.dataset.batch_size))


def write_config(cfg: TrainConfig, run_dir: Path) -> None:
    if jax.process_index() == 0:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def _host_metrics(metrics) -> dict[str, float]:
    return {k: float(v) for k, v in jax.device_get(metrics).items()}


# --------------------------------------------------------------------------- state
@dataclasses.dataclass
class Trainer:
    """What the step function reads and updates, placed on the mesh: the model split into trainable
    and frozen parts, the DPO reference copy (full fine-tuning only), the optimizer state."""

    graphdef: object
    trainable: nnx.State
    frozen: nnx.State
    ref_params: nnx.State | None
    opt_state: object
    objective: Objective
    placement: Placement
    step_fn: object
    pad_id: int
    lora: bool

    @classmethod
    def create(cls, cfg: TrainConfig, placement: Placement, steps: int) -> "Trainer":
        lora = cfg.lora.rank > 0
        model = build_model(cfg, placement)
        pad_id = model.config.pad_id
        graphdef, trainable, frozen = split_model(model, lora)
        trainable = placement.state(jax.tree.map(lambda x: x.astype(jnp.float32), trainable))
        frozen = placement.state(frozen)
        objective = make_objective(cfg)
        ref_params = None
        if objective.needs_reference and not lora and not cfg.dpo.precompute_ref:
            # a real copy: the trainable buffers are donated to (and overwritten by) every step
            ref_params = jax.tree.map(lambda x: jnp.array(x, dtype=jnp.dtype(cfg.dtype), copy=True), trainable)
        tx = make_optimizer(cfg.optim, steps)
        opt_state = placement.optimizer_state(tx, trainable)
        out_shardings = (placement.shardings(trainable), jax.tree.map(lambda x: x.sharding, opt_state),
                         placement.replicated)
        step_fn = make_train_step(graphdef, objective, tx, cfg.optim.grad_accum, lora, out_shardings)
        return cls(graphdef, trainable, frozen, ref_params, opt_state, objective, placement, step_fn, pad_id, lora)

    def step(self, host_batch: dict[str, np.ndarray], key) -> dict[str, jax.Array]:
        """One optimizer step on this process's share of the global batch; returns the metrics."""
        batch = self.placement.batch(host_batch)
        with jax.set_mesh(self.placement.mesh):
            self.trainable, self.opt_state, metrics = self.step_fn(
                self.trainable, self.frozen, self.ref_params, self.opt_state, batch, key)
        return metrics


# --------------------------------------------------------------------------- loop
def prepare_data(cfg: TrainConfig, run_dir: Path, progress: bool = True):
    """Tokenize the run's JSONL once into RUN_DIR/data (reused on resume). Returns (records, stats)."""
    weight_fn, weight_opts = weight_fn_for(cfg)
    prepare = lambda: ds.prepare(  # noqa: E731
        cfg.data, tokenizer_dir(cfg), run_dir / "data", kind="sft" if cfg.objective == "sft" else "preference",
        fmt=cfg.dataset.format, max_length=cfg.dataset.max_length, overflow=cfg.dataset.overflow,
        weight_fn=weight_fn, weight_options=weight_opts, progress=progress and jax.process_index() == 0,
    )
    if jax.process_index() == 0:  # process 0 first; the others then reuse its file (or build their own
        prepare()                 # copy when the run directory is not on a shared filesystem)
    sync_processes("prepare-data")
    records, stats = prepare()
    _say(f"data: {stats.summary()}")
    if stats.written == 0:
        raise ValueError(f"{cfg.data}: no usable records ({stats.summary()})")
    return records, stats


def train(cfg: TrainConfig, *, progress: bool = True) -> dict:
    """Run (or resume) training; returns a summary with the final metrics and the run directory."""
    if cfg.logits_chunk < 0:
        raise ValueError(f"--logits-chunk {cfg.logits_chunk}: give a number of positions, or 0 for the whole sequence")
    cfg = dataclasses.replace(cfg, model=str(resolve_model(cfg.model)))  # a base model name or FILE.gguf -> its directory
    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_config(cfg, run_dir)
    placement = Placement(make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor))
    if cfg.dataset.batch_size % (placement.batch_divisor * cfg.optim.grad_accum):
        raise ValueError(
            f"dataset.batch_size {cfg.dataset.batch_size} must divide by grad_accum ({cfg.optim.grad_accum}) "
            f"times the data-parallel devices ({placement.batch_divisor})"
        )

    records, stats = prepare_data(cfg, run_dir, progress)
    steps = total_steps(cfg, stats.written)
    st = Trainer.create(cfg, placement, steps)
    lr_at = schedule(cfg.optim, steps)

    if st.objective.needs_reference and cfg.dpo.precompute_ref:
        records = precompute_reference(st, records, cfg, batch_layout(cfg), progress)

    ckpts = Checkpoints(run_dir, keep=cfg.keep)
    start = ckpts.latest_step() or 0
    loader = Loader(
        records, cfg.dataset.format, global_batch=cfg.dataset.batch_size, seed=cfg.seed, shuffle=cfg.dataset.shuffle,
        pad_id=st.pad_id, pad_multiple=cfg.dataset.pad_multiple, max_length=cfg.dataset.max_length,
        process_index=jax.process_index(), process_count=jax.process_count(),
        layout=batch_layout(cfg), row_multiple=placement.batch_divisor * cfg.optim.grad_accum,
        row_length=cfg.dataset.row_length, lengths_per_octave=cfg.dataset.lengths_per_octave,
    )
    if start:
        st.trainable, st.opt_state, meta = ckpts.restore(start, st.trainable, st.opt_state)
        if meta.get("data_fingerprint", stats.fingerprint) != stats.fingerprint:
            raise ValueError(
                f"{run_dir}: the training data or its tokenization changed since this run's checkpoints were "
                f"written (fingerprint {meta['data_fingerprint']} -> {stats.fingerprint}); resume with the "
                "original data, or start a new run with another --out"
            )
        loader.set_state(meta["data_state"])
        _say(f"resumed from {ckpts.dir / str(start)} (step {start} of {steps})")
    if start >= steps:
        _say(f"already trained: step {start} of {steps}")
        return {"run_dir": str(run_dir), "step": start, "steps": steps, "metrics": {}}

    log = RunLog(run_dir, start, steps, progress=progress)
    base_key = jax.random.key(cfg.seed)
    last_saved, metrics, step = start, {}, start

    def save(at: int) -> None:
        ckpts.save(at, st.trainable, st.opt_state, {"step": at, "data_state": loader.get_state(),
                                                    "data_fingerprint": stats.fingerprint, "config": cfg.to_dict()})

    try:
        for step in range(start + 1, steps + 1):
            t0 = time.perf_counter()
            host_batch = next(loader)
            metrics = _host_metrics(st.step(host_batch, jax.random.fold_in(base_key, step)))
            check_finite(step, metrics, last_saved, ckpts.dir)
            tokens = sum(int(v.sum()) for k, v in host_batch.items() if k.endswith("mask")) * jax.process_count()
            metrics["packing/efficiency"] = packing_efficiency(host_batch)
            seconds = time.perf_counter() - t0  # the step's wall time, loading its batch included
            metrics.update(learning_rate=float(lr_at(step - 1)), tokens_per_s=tokens / seconds, seconds=seconds)
            stop, last_saved = end_step(cfg, step, start, steps, metrics, log, save, last_saved)
            if stop:
                break
    finally:
        log.close()
        ckpts.close()
    return {"run_dir": str(run_dir), "step": step, "steps": steps, "metrics": metrics, "data": dataclasses.asdict(stats)}


def check_finite(step: int, metrics: dict, last_saved: int, ckpt_dir) -> None:
    """Stop a run whose loss or gradient norm is NaN/Inf, naming the last good checkpoint."""
    if not (math.isfinite(metrics["loss"]) and math.isfinite(metrics["grad_norm"])):
        raise TrainingDiverged(
            f"step {step}: loss {metrics['loss']}, grad norm {metrics['grad_norm']}: training diverged; "
            f"the last good checkpoint is step {last_saved} in {ckpt_dir} (lower --optim.lr or check the data)"
        )


def end_step(cfg: TrainConfig, step: int, start: int, steps: int, metrics: dict, log: RunLog, save,
             last_saved: int) -> tuple[bool, int]:
    """The bookkeeping after a step, shared by every loop: log on schedule, checkpoint on schedule
    (``save(step)``), honour ``--stop-after``. Returns (stop now, the last saved step)."""
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
        _say(f"stopped after {cfg.stop_after} steps at step {step}; rerun the same command to continue")
        return True, last_saved
    return False, last_saved


def _say(msg: str) -> None:
    if jax.process_index() == 0:
        print(msg, flush=True)
