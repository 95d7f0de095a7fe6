"""The RL training loop (``train grpo``, ``train ppo``): rollouts, rewards, updates, checkpoints.

Each step takes ``prompts_per_step`` prompts (a seeded permutation per epoch: the prompts of a step
are a function of the step alone), decodes ``group_size`` episodes of each with tools that run,
scores them, runs one gradient-free pass for the sampling policy's and the reference's log-probs,
then ``num_iterations`` optimizer updates on the same rollouts. The model, mesh, optimizer,
checkpoints and run log are the SFT/DPO trainer's. Rollout and dropout keys are derived from
(seed, step), so a run stopped and resumed draws the same episodes and logs the same metrics.

With LoRA the reference is the policy with adapters off; full fine-tuning keeps a frozen copy.
PPO's value head is saved with the optimizer state (the checkpoint's ``trainable`` is the policy's
alone, so export reads GRPO and PPO runs like DPO runs).
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
from flax import nnx

from ttpa_jax.decode.rules import Sampling
from ttpa_jax.model.base_models import resolve_model
from ttpa_jax.model.config import load_config
from ttpa_jax.model.sharding import Placement, make_mesh
from ttpa_jax.model.transformer import Ctx
from ttpa_jax.text.prompts import eos_token_ids, load_tokenizer
from ttpa_jax.train.checkpoint import Checkpoints
from ttpa_jax.train.config import TrainConfig
from ttpa_jax.train.optim import make_optimizer, schedule
from ttpa_jax.train.rl.algorithm import Algorithm
from ttpa_jax.train.rl.rewards import EpisodeReward
from ttpa_jax.train.rl.rollout import Rollout, rollout, toolbox_executor
from ttpa_jax.train.run_log import RunLog
from ttpa_jax.train.trainer import build_model, check_finite, end_step, split_model, tokenizer_dir, write_config
from ttpa_jax.train.rl.grpo import make_grpo
from ttpa_jax.train.rl.ppo import make_ppo
from ttpa_jax.train.rl.policy import ValueHead
from ttpa_jax.sample.sampler import read_prompts


def make_algorithm(cfg: TrainConfig) -> Algorithm:
    rl = cfg.rl
    if cfg.objective == "grpo":
        return make_grpo(kl_coef=rl.kl_coef, epsilon_low=rl.epsilon, epsilon_high=rl.epsilon_high or rl.epsilon,
                         scale_rewards=rl.scale_rewards, temperature=rl.temperature or 1.0,
                         logits_chunk=cfg.logits_chunk)
    return make_ppo(kl_ctl=rl.kl_coef, clip_reward_value=rl.clip_reward_value, cliprange=rl.epsilon,
                    cliprange_value=rl.cliprange_value, gamma=rl.gamma, lam=rl.lam, vf_coef=rl.vf_coef,
                    temperature=rl.temperature or 1.0, logits_chunk=cfg.logits_chunk)


def step_prompts(step: int, per_step: int, n: int, seed: int, shuffle: bool) -> list[int]:
    """Indices of the prompts of ``step`` (1-based): consecutive slices of one permutation per epoch."""
    out = []
    for pos in range((step - 1) * per_step, step * per_step):
        epoch, i = divmod(pos, n)
        order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
        out.append(int(order[i]))
    return out


def reward_metrics(totals: np.ndarray, parts: list[dict[str, float]]) -> dict[str, float]:
    """TRL's names: reward, reward_std, rewards/<component>/mean, rewards/<component>/std."""
    out = {"reward": float(totals.mean()), "reward_std": float(totals.std())}
    for name in parts[0] if parts else ():
        v = np.array([p[name] for p in parts], np.float64)
        out[f"rewards/{name}/mean"], out[f"rewards/{name}/std"] = float(v.mean()), float(v.std())
    return out


@dataclasses.dataclass
class RLState:
    """Everything a step reads and writes, on the mesh."""

    graphdef: object
    value_graphdef: object | None
    trainable: dict  # {"policy": adapters or params, "value": value head (PPO)}
    frozen: nnx.State
    ref_params: nnx.State | None
    opt_state: object
    prepare_fn: object
    update_fn: object
    placement: Placement

    def models(self, trainable, frozen, ref_params):
        policy = nnx.merge(self.graphdef, trainable["policy"], frozen)
        if ref_params is None:  # LoRA: the reference is the policy with adapters off
            reference = nnx.merge(self.graphdef, jax.lax.stop_gradient(trainable["policy"]), frozen)
        else:
            reference = nnx.merge(self.graphdef, ref_params, frozen)
        value = nnx.merge(self.value_graphdef, trainable["value"]) if "value" in trainable else None
        return policy, reference, value


def build_state(cfg: TrainConfig, algo: Algorithm, placement: Placement, updates: int) -> RLState:
    lora = cfg.lora.rank > 0
    model = build_model(cfg, placement)
    graphdef, policy, frozen = split_model(model, lora)
    policy = placement.state(jax.tree.map(lambda x: x.astype(jnp.float32), policy))
    frozen = placement.state(frozen)
    ref_params = None if lora else jax.tree.map(lambda x: jnp.array(x, dtype=jnp.dtype(cfg.dtype), copy=True), policy)
    trainable, value_graphdef = {"policy": policy}, None
    if algo.value_head:
        value_graphdef, value = nnx.split(ValueHead(model.config.hidden_size, seed=cfg.seed))
        trainable["value"] = placement.state(value)
    tx = make_optimizer(cfg.optim, updates)
    opt_state = placement.optimizer_state(tx, trainable)
    st = RLState(graphdef, value_graphdef, trainable, frozen, ref_params, opt_state, None, None, placement)

    def prepare(trainable, frozen, ref_params, batch):
        return algo.prepare(*st.models(trainable, frozen, ref_params), batch)

    def loss_fn(trainable, frozen, ref_params, batch, key):
        policy, _, value = st.models(trainable, frozen, ref_params)
        return algo.loss(policy, value, batch, Ctx(lora=True, dropout_key=key))

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def update(trainable, frozen, ref_params, opt_state, batch, key):
        (_, sums), grads = grad_fn(trainable, frozen, ref_params, batch, key)
        metrics = algo.finalize(sums)
        metrics["grad_norm"] = optax.tree.norm(grads)
        new, opt_state = tx.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, new), opt_state, metrics

    st.prepare_fn = jax.jit(prepare)
    st.update_fn = jax.jit(update, donate_argnums=(0, 3), out_shardings=(
        jax.tree.map(lambda x: x.sharding, trainable), jax.tree.map(lambda x: x.sharding, opt_state),
        placement.replicated))
    return st


def _saved_opt(st: RLState) -> dict:
    """What the checkpoint's ``opt_state`` item holds: the optimizer state, and PPO's value head."""
    return {"optimizer": st.opt_state, **({"value_head": st.trainable["value"]} if "value" in st.trainable else {})}


def _local(host: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """This process's share of a batch every process computed in full."""
    n, p = jax.process_count(), jax.process_index()
    return {k: v[p * len(v) // n:(p + 1) * len(v) // n] for k, v in host.items()}


def train_rl(cfg: TrainConfig, *, progress: bool = True, reward_fn=None, executor=toolbox_executor) -> dict:
    """Run (or resume) GRPO or PPO. ``reward_fn(episode) -> (reward, components)`` replaces the
    ``--reward`` spec (tests use it for a toy reward); ``executor`` runs tool calls."""
    cfg = dataclasses.replace(cfg, model=str(resolve_model(cfg.model)))  # a base model name or FILE.gguf -> its directory
    rl = cfg.rl
    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_config(cfg, run_dir)
    reward = reward_fn or EpisodeReward.parse(rl.reward)
    placement = Placement(make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor))
    R = rl.prompts_per_step * rl.group_size
    if rl.group_size < 2 and cfg.objective == "grpo":
        raise ValueError(f"--group-size {rl.group_size}: GRPO compares completions within a group; give at least 2")
    if R % placement.batch_divisor:
        raise ValueError(f"prompts_per_step x group_size = {R} must divide by the data-parallel devices "
                         f"({placement.batch_divisor})")
    tokenizer = load_tokenizer(tokenizer_dir(cfg))
    mcfg = load_config(cfg.model)
    _, prompts = read_prompts(Path(cfg.data), tokenizer, rl.max_new_tokens, mcfg.max_position_embeddings)
    if not prompts:
        raise ValueError(f"{cfg.data}: no assistant tool-call turns to use as prompts")
    steps = cfg.steps or max(1, math.ceil(cfg.epochs * len(prompts) / rl.prompts_per_step))
    algo = make_algorithm(cfg)
    st = build_state(cfg, algo, placement, steps * rl.num_iterations)
    lr_at = schedule(cfg.optim, steps * rl.num_iterations)
    eos = eos_token_ids(mcfg, tokenizer, cfg.model if Path(cfg.model).is_dir() else None)
    pad_id = mcfg.pad_id
    sampling = Sampling(rl.temperature, rl.top_k, rl.top_p)

    ckpts = Checkpoints(run_dir, keep=cfg.keep)
    start = ckpts.latest_step() or 0
    if start:
        policy, opt, _ = ckpts.restore(start, st.trainable["policy"], _saved_opt(st))
        st.trainable = {"policy": policy, **({"value": opt["value_head"]} if "value_head" in opt else {})}
        st.opt_state = opt["optimizer"]
        _say(f"resumed from {ckpts.dir / str(start)} (step {start} of {steps})")
    if start >= steps:
        _say(f"already trained: step {start} of {steps}")
        return {"run_dir": str(run_dir), "step": start, "steps": steps, "metrics": {}}

    log = RunLog(run_dir, start, steps, progress=progress)
    base_key = jax.random.key(cfg.seed)
    last_saved, metrics, step = start, {}, start

    def save(at: int) -> None:
        ckpts.save(at, st.trainable["policy"], _saved_opt(st), {"step": at, "config": cfg.to_dict()})

    try:
        for step in range(start + 1, steps + 1):
            t0 = time.perf_counter()
            key = jax.random.fold_in(base_key, step)
            batch_prompts = [prompts[i] for i in step_prompts(step, rl.prompts_per_step, len(prompts), cfg.seed,
                                                              cfg.dataset.shuffle)]
            policy = nnx.merge(st.graphdef, st.trainable["policy"], st.frozen)
            with jax.set_mesh(placement.mesh):
                ro = rollout(policy, tokenizer, batch_prompts, group_size=rl.group_size, sampling=sampling,
                             key=jax.random.fold_in(key, 0), max_new_tokens=rl.max_new_tokens,
                             max_turns=rl.max_turns, max_length=cfg.dataset.max_length, eos_ids=eos,
                             pad_id=pad_id, pad_multiple=cfg.dataset.pad_multiple, executor=executor)
            metrics = run_updates(st, algo, ro, reward, rl, key)
            metrics["learning_rate"] = float(lr_at(step * rl.num_iterations - 1))
            metrics["seconds"] = time.perf_counter() - t0
            check_finite(step, metrics, last_saved, ckpts.dir)
            stop, last_saved = end_step(cfg, step, start, steps, metrics, log, save, last_saved)
            if stop:
                break
    finally:
        log.close()
        ckpts.close()
    return {"run_dir": str(run_dir), "step": step, "steps": steps, "metrics": metrics, "prompts": len(prompts)}


def run_updates(st: RLState, algo: Algorithm, ro: Rollout, reward, rl, key) -> dict[str, float]:
    """Score the episodes, prepare the batch, run ``num_iterations`` updates; returns the metrics
    (losses averaged over the updates, rollout and reward statistics)."""
    scored = [reward(ep) for ep in ro.episodes]
    totals = np.array([t for t, _ in scored], np.float32)
    host_extra, metrics = algo.host_inputs(totals, rl.group_size)
    host = {"input_ids": ro.input_ids, "attention_mask": ro.attention_mask, "loss_mask": ro.loss_mask, **host_extra}
    batch = st.placement.batch(_local(host))
    with jax.set_mesh(st.placement.mesh):
        batch.update(st.prepare_fn(st.trainable, st.frozen, st.ref_params, batch))
        sums: dict[str, float] = {}
        for it in range(rl.num_iterations):
            st.trainable, st.opt_state, m = st.update_fn(st.trainable, st.frozen, st.ref_params, st.opt_state, batch,
                                                         jax.random.fold_in(key, it + 1))
            for k, v in jax.device_get(m).items():
                sums[k] = sums.get(k, 0.0) + float(v) / rl.num_iterations
    metrics.update(sums)
    metrics.update(reward_metrics(totals, [p for _, p in scored]))
    metrics.update(completion_length=float(ro.generated.mean()), turns=float(ro.turns.mean()),
                   tool_calls=float(ro.calls_executed), tool_calls_refused=float(ro.calls_refused))
    return metrics


def _say(msg: str) -> None:
    if jax.process_index() == 0:
        print(msg, flush=True)
