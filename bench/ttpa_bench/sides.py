"""The two sides of a training-step benchmark (``bench/train_step.py``, ``bench/method_step.py``): our
jitted step and the PyTorch (transformers + peft) step as TRL computes it, plus the checkpoint and the
batches they share (the typed batches of ``ttpa_jax.train.batches`` that the training units take)."""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F

from ttpa_jax.train.batches import Batch, PairRows, TokenRows

BETA = 0.1


def make_checkpoint(path: str, cfg: dict) -> int:
    """A random fp32 transformers checkpoint in ``path``; returns its parameter count."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = dict(cfg, max_position_embeddings=4096, eos_token_id=1, pad_token_id=0, bos_token_id=None)
    family = cfg.pop("family")
    model = LlamaForCausalLM(LlamaConfig(**cfg)) if family == "llama" else Qwen2ForCausalLM(Qwen2Config(**cfg))
    model.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def preference_batch(rng, pairs: int, seq_len: int, vocab: int) -> PairRows:
    """Pairs sharing a prompt (the first half), completions different; no padding. [B, L] each."""
    prompt = rng.randint(2, vocab, (pairs, seq_len // 2))
    out = {}
    for side in ("chosen", "rejected"):
        ids = np.concatenate([prompt, rng.randint(2, vocab, (pairs, seq_len - seq_len // 2))], axis=1)
        out[f"{side}_ids"] = ids.astype(np.int32)
        out[f"{side}_mask"] = np.ones_like(ids, np.int32)
        out[f"{side}_weights"] = (np.arange(seq_len) >= seq_len // 2).astype(np.float32)[None].repeat(pairs, 0)
    return PairRows(**out)


def sft_batch(rng, n: int, seq_len: int, vocab: int) -> TokenRows:
    """Records of ``seq_len`` tokens, loss weights 1 on the second half; every column scored (no ``score_cols``)."""
    ids = rng.randint(2, vocab, (n, seq_len)).astype(np.int32)
    w = (np.arange(seq_len) >= seq_len // 2).astype(np.float32)[None].repeat(n, 0)
    return TokenRows(input_ids=ids, attention_mask=np.ones_like(ids), weights=w)


def arrays(batch: Batch) -> dict[str, np.ndarray]:
    """A typed batch's present fields by name (the PyTorch side reads them as tensors)."""
    return {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch) if getattr(batch, f.name) is not None}


# --------------------------------------------------------------------------- ours
class Ours:
    """The step ``train sft`` / ``train dpo`` run (``trainer.make_train_step``): base in the compute dtype,
    fp32 adapters, one device."""

    def __init__(self, model_dir: str, rank: int, dtype: str):
        from ttpa_jax import load_pretrained
        from ttpa_jax.model.lora import LoraConfig, apply_lora
        from ttpa_jax.model.sharding import Placement, make_mesh
        from ttpa_jax.train.trainer import split_model

        compute = jnp.dtype(dtype)
        model = apply_lora(load_pretrained(model_dir, dtype=compute, compute_dtype=compute),
                           LoraConfig(rank=rank, alpha=2.0 * rank))
        self.graphdef, trainable, frozen = split_model(model, lora=True)
        self.placement = Placement(make_mesh(1, 1, 1))
        self.initial = self.placement.state(jax.tree.map(lambda x: x.astype(jnp.float32), trainable))
        self.frozen = self.placement.state(frozen)
        self.key = jax.random.key(0)

    def lora_a(self) -> dict[str, np.ndarray]:
        """Adapter A matrices [r, in] by module path (``layers.0.self_attn.q_proj``)."""
        from flax import nnx

        return {".".join(map(str, p[:-1])): np.asarray(v[...]) for p, v in nnx.to_flat_state(self.initial)
                if p[-1] == "lora_a"}

    def compile(self, batch: Batch, dpo: bool, logits_chunk: int = 0) -> float:
        """Fresh adapters and optimizer state, then lower + compile the step on ``batch`` (``PairRows`` or
        ``SharedPrefixPairs`` with ``dpo``, else ``TokenRows`` or ``PackedRows``); returns seconds."""
        from ttpa_jax.train.config import OptimConfig
        from ttpa_jax.train.dpo.unit import make_dpo
        from ttpa_jax.train.optim import make_optimizer
        from ttpa_jax.train.sft.unit import make_sft
        from ttpa_jax.train.trainer import make_train_step

        tx = make_optimizer(OptimConfig(lr=1e-4, warmup_steps=0, min_lr_ratio=1.0), 1000)
        self.trainable = jax.tree.map(lambda x: jnp.array(x, copy=True), self.initial)  # steps donate it
        self.opt_state = self.placement.optimizer_state(tx, self.trainable)
        self.batch = self.placement.batch(batch)
        objective = make_dpo(BETA, "sigmoid", logits_chunk=logits_chunk) if dpo else make_sft(logits_chunk)
        out_shardings = (self.placement.shardings(self.trainable), jax.tree.map(lambda x: x.sharding, self.opt_state),
                         self.placement.replicated)
        step = make_train_step(self.graphdef, objective, tx, 1, True, out_shardings)
        t = time.perf_counter()
        with jax.set_mesh(self.placement.mesh):
            self.compiled = step.lower(self.trainable, self.frozen, None, self.opt_state, self.batch, self.key).compile()
        return time.perf_counter() - t

    def temp_bytes(self) -> int:
        """XLA's temporary buffers of the compiled step."""
        return self.compiled.memory_analysis().temp_size_in_bytes

    def step(self) -> tuple[float, float]:
        with jax.set_mesh(self.placement.mesh):
            self.trainable, self.opt_state, m = self.compiled(self.trainable, self.frozen, None, self.opt_state,
                                                              self.batch, self.key)
        return float(m["loss"]), float(m["grad_norm"])  # float() waits for the step


# --------------------------------------------------------------------------- reference
def selective_log_softmax(logits, index):
    """TRL's: log_softmax(logits).gather(index), fp32 as gather - logsumexp (row by row to save memory)."""
    if logits.dtype in (torch.float32, torch.float64):
        picked = torch.gather(logits, dim=-1, index=index.unsqueeze(-1)).squeeze(-1)
        lse = torch.stack([torch.logsumexp(row, dim=-1) for row in logits])
        return picked - lse
    out = []
    for row_logits, row_labels in zip(logits, index):
        lp = F.log_softmax(row_logits, dim=-1)
        out.append(lp.gather(dim=-1, index=row_labels.unsqueeze(-1)).squeeze(-1))
    return torch.stack(out)


class Torch:
    """transformers model + peft LoRA, with TRL's DPO computations (``concatenated_forward``)."""

    def __init__(self, model_dir: str, rank: int, dtype: str, lora_a: dict[str, np.ndarray]):
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        self.device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
        hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).to(self.device)
        targets = sorted({k.rsplit(".", 1)[-1] for k in lora_a})
        self.model = get_peft_model(hf, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                                                   target_modules=targets, task_type="CAUSAL_LM"))
        self.model.train()
        self.lora_a = lora_a
        self.prepared = None

    def reset(self) -> None:
        """Adapters equal to ours (A copied, B = 0) and a fresh AdamW."""
        with torch.no_grad():
            for name, mod in self.model.named_modules():
                if hasattr(mod, "lora_A") and "default" in getattr(mod, "lora_A", {}):
                    key = name[name.index("layers."):]
                    mod.lora_A["default"].weight.copy_(torch.tensor(self.lora_a[key]))
                    mod.lora_B["default"].weight.zero_()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=1e-4, weight_decay=0.0, eps=1e-8)

    def _logps(self, ids, mask, loss_mask):
        """TRL ``concatenated_forward``: completion log-prob sums [2B], the logits [2B, L, V] and the
        rolled loss mask (position t: token t + 1 is a completion token)."""
        logits = self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        labels = torch.roll(ids, shifts=-1, dims=1)
        lmask = torch.roll(loss_mask, shifts=-1, dims=1).bool()
        labels[~lmask] = 0
        per_token = selective_log_softmax(logits, labels)
        per_token[~lmask] = 0
        per_token = torch.roll(per_token, shifts=1, dims=1)
        return per_token[:, 1:].sum(-1), logits, lmask

    def step(self, batch: PairRows | TokenRows, dpo: bool) -> tuple[float, float]:
        if self.prepared is not batch:
            self.prepared = batch
            self.reset()
            t = {k: torch.from_numpy(np.asarray(v)).to(self.device) for k, v in arrays(batch).items()}
            cat = lambda k: torch.cat([t[f"chosen_{k}"], t[f"rejected_{k}"]]).long()  # noqa: E731
            self.tensors = (cat("ids"), cat("mask"), cat("weights")) if dpo else (
                t["input_ids"].long(), t["attention_mask"].long(), t["weights"])
        ids, mask, w = self.tensors
        if dpo:
            n = ids.shape[0] // 2
            with torch.no_grad(), self.model.disable_adapter():
                ref, _, _ = self._logps(ids, mask, w)
            pol, logits, lmask = self._logps(ids, mask, w)
            h = (pol[:n] - pol[n:]) - (ref[:n] - ref[n:])
            loss = -F.logsigmoid(BETA * h).mean()
            with torch.no_grad():  # TRL's metrics: rewards, accuracies, mean logits over completions
                r_c, r_r = BETA * (pol[:n] - ref[:n]), BETA * (pol[n:] - ref[n:])
                _ = ((r_c > r_r).float().mean(), logits[:n][lmask[:n]].mean(), logits[n:][lmask[n:]].mean())
        else:
            logits = self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            lp = selective_log_softmax(logits[:, :-1], ids[:, 1:])
            loss = -(lp * w[:, 1:]).sum() / w.sum()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(loss.detach()), float(norm)
