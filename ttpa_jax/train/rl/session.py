"""The RL units' side of the loop (``train grpo``, ``train ppo``): rollouts as batches, then updates.

Each step takes ``prompts_per_step`` prompts (a seeded permutation per epoch: the prompts of a step
are a function of the step alone), decodes ``group_size`` episodes of each with tools that run and
scores them (``batch``); then one gradient-free pass for the sampling policy's and the reference's
log-probs and ``num_iterations`` optimizer updates on the same rollouts (``update``). Rollout and
dropout keys are derived from (seed, step), so a run stopped and resumed draws the same episodes and
logs the same metrics.

With LoRA the reference is the policy with adapters off; full fine-tuning keeps a frozen copy.
PPO's value head is saved with the optimizer state (the checkpoint's ``trainable`` is the policy's
alone, so export reads GRPO and PPO runs like DPO runs).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ttpa_jax.decode.rules import Sampling
from ttpa_jax.model.config import load_config
from ttpa_jax.model.sharding import Placement
from ttpa_jax.model.transformer import Ctx
from ttpa_jax.sample.sampler import read_prompts
from ttpa_jax.text.prompts import eos_token_ids, load_tokenizer
from ttpa_jax.train.batches import Episodes, local_rows
from ttpa_jax.train.checkpoint import Checkpoints
from ttpa_jax.train.optim import make_optimizer, schedule
from ttpa_jax.train.rl.algorithm import Algorithm
from ttpa_jax.train.rl.config import RlArgs
from ttpa_jax.train.rl.policy import ValueHead
from ttpa_jax.train.rl.rewards import EpisodeReward
from ttpa_jax.train.rl.rollout import rollout, toolbox_executor
from ttpa_jax.train.trainer import build_model, host_metrics, split_model, tokenizer_dir


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


@dataclasses.dataclass(frozen=True)
class RlUnit:
    """An RL unit: its algorithm (``algorithm.Algorithm``), the batch class its arrays fill
    (``batches.Episodes``' subclass) and a check of its settings."""

    algorithm: Callable[[RlArgs], Algorithm]
    batch_class: type[Episodes]
    check: Callable[[RlArgs], None] = lambda cfg: None

    def start(self, cfg: RlArgs, run_dir: Path, placement: Placement, progress: bool = True, *,
              reward_fn=None, executor=toolbox_executor) -> RlSession:
        """``reward_fn(episode) -> (reward, components)`` replaces the ``--reward`` spec (tests use it
        for a toy reward); ``executor`` runs tool calls."""
        rl = cfg.rl
        reward = reward_fn or EpisodeReward.parse(rl.reward, cfg.esm)
        self.check(cfg)
        R = rl.prompts_per_step * rl.group_size
        if R % placement.batch_divisor:
            raise ValueError(f"prompts_per_step x group_size = {R} must divide by the data-parallel devices "
                             f"({placement.batch_divisor})")
        tokenizer = load_tokenizer(tokenizer_dir(cfg))
        mcfg = load_config(cfg.model)
        _, prompts = read_prompts(Path(cfg.data), tokenizer, rl.max_new_tokens, mcfg.max_position_embeddings)
        if not prompts:
            raise ValueError(f"{cfg.data}: no assistant tool-call turns to use as prompts")
        steps = cfg.steps or max(1, math.ceil(cfg.epochs * len(prompts) / rl.prompts_per_step))
        algo = self.algorithm(cfg)
        state = RlState.create(cfg, algo, placement, steps * rl.num_iterations)
        eos = eos_token_ids(mcfg, tokenizer, cfg.model if Path(cfg.model).is_dir() else None)
        return RlSession(steps, cfg, algo, self.batch_class, state, tokenizer, prompts, reward, executor, eos,
                         mcfg.pad_id, schedule(cfg.optim, steps * rl.num_iterations))


@dataclasses.dataclass
class RlState:
    """Everything an update reads and writes, on the mesh."""

    graphdef: object
    value_graphdef: object | None
    trainable: dict  # {"policy": adapters or params, "value": value head (PPO)}
    frozen: nnx.State
    ref_params: nnx.State | None
    opt_state: object
    placement: Placement
    prepare_fn: object = None
    update_fn: object = None

    def models(self, trainable, frozen, ref_params):
        policy = nnx.merge(self.graphdef, trainable["policy"], frozen)
        if ref_params is None:  # LoRA: the reference is the policy with adapters off
            reference = nnx.merge(self.graphdef, jax.lax.stop_gradient(trainable["policy"]), frozen)
        else:
            reference = nnx.merge(self.graphdef, ref_params, frozen)
        value = nnx.merge(self.value_graphdef, trainable["value"]) if self.value_graphdef is not None else None
        return policy, reference, value

    @classmethod
    def create(cls, cfg: RlArgs, algo: Algorithm, placement: Placement, updates: int) -> RlState:
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
        st = cls(graphdef, value_graphdef, trainable, frozen, ref_params, opt_state, placement)

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

    def saved_opt(self) -> dict:
        """What the checkpoint's ``opt_state`` item holds: the optimizer state, and PPO's value head."""
        value = {"value_head": self.trainable["value"]} if self.value_graphdef is not None else {}
        return {"optimizer": self.opt_state, **value}


@dataclasses.dataclass
class RlSession:
    """The loop's view of an RL unit's run (``loop.Session``)."""

    steps: int
    cfg: RlArgs
    algo: Algorithm
    batch_class: type[Episodes]
    state: RlState
    tokenizer: Any
    prompts: list
    reward: Callable
    executor: Callable
    eos: Any
    pad_id: int
    lr_at: Callable

    def batch(self, step: int, key) -> tuple[Episodes, dict[str, float]]:
        """Rollouts of the step's prompts, scored: this process's rows and the rollout's metrics."""
        cfg, rl, st = self.cfg, self.cfg.rl, self.state
        batch_prompts = [self.prompts[i] for i in step_prompts(step, rl.prompts_per_step, len(self.prompts),
                                                               cfg.seed, cfg.dataset.shuffle)]
        policy = nnx.merge(st.graphdef, st.trainable["policy"], st.frozen)
        with jax.set_mesh(st.placement.mesh):
            ro = rollout(policy, self.tokenizer, batch_prompts, group_size=rl.group_size,
                         sampling=Sampling(rl.temperature, rl.top_k, rl.top_p), key=jax.random.fold_in(key, 0),
                         max_new_tokens=rl.max_new_tokens, max_turns=rl.max_turns,
                         max_length=cfg.dataset.max_length, eos_ids=self.eos, pad_id=self.pad_id,
                         pad_multiple=cfg.dataset.pad_multiple, executor=self.executor)
        scored = [self.reward(ep) for ep in ro.episodes]
        totals = np.array([t for t, _ in scored], np.float32)
        arrays, metrics = self.algo.host_inputs(totals, rl.group_size)
        host = self.batch_class(input_ids=ro.input_ids, attention_mask=ro.attention_mask, loss_mask=ro.loss_mask,
                                **arrays)
        metrics.update(reward_metrics(totals, [p for _, p in scored]))
        metrics.update(completion_length=float(ro.generated.mean()), turns=float(ro.turns.mean()),
                       tool_calls=float(ro.calls_executed), tool_calls_refused=float(ro.calls_refused))
        return local_rows(host), metrics

    def update(self, batch: Episodes, step: int, key) -> dict[str, float]:
        """The gradient-free pass (old and reference log-probs, PPO's values and GAE), then
        ``num_iterations`` updates; losses averaged over the updates."""
        st, n = self.state, self.cfg.rl.num_iterations
        batch = st.placement.batch(batch)
        sums: dict[str, float] = {}
        with jax.set_mesh(st.placement.mesh):
            batch = batch.replace(**st.prepare_fn(st.trainable, st.frozen, st.ref_params, batch))
            for it in range(n):
                st.trainable, st.opt_state, m = st.update_fn(st.trainable, st.frozen, st.ref_params, st.opt_state,
                                                             batch, jax.random.fold_in(key, it + 1))
                for k, v in host_metrics(m).items():
                    sums[k] = sums.get(k, 0.0) + v / n
        sums["learning_rate"] = float(self.lr_at(step * n - 1))
        return sums

    def save(self, ckpts: Checkpoints, step: int, meta: dict[str, Any]) -> None:
        ckpts.save(step, self.state.trainable["policy"], self.state.saved_opt(), meta)

    def restore(self, ckpts: Checkpoints, step: int) -> None:
        st = self.state
        policy, opt, _ = ckpts.restore(step, st.trainable["policy"], st.saved_opt())
        st.trainable = {"policy": policy, **({"value": opt["value_head"]} if st.value_graphdef is not None else {})}
        st.opt_state = opt["optimizer"]

    def summary(self) -> dict[str, Any]:
        return {"prompts": len(self.prompts)}
