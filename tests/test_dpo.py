"""DPO: losses and metrics against NumPy, the adapters-off reference, precomputed reference log-probs,
and export to merged HF weights and to a PEFT adapter."""

import math
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from helpers import metrics, preference_records, write_jsonl
from transformers import AutoModelForCausalLM

import ttpa_jax
from ttpa_jax.export.weights import load_run
from ttpa_jax.model.lora import LoraConfig
from ttpa_jax.model.transformer import Ctx
from ttpa_jax.train.batches import PairRows
from ttpa_jax.train.config import DataConfig, MeshConfig, OptimConfig
from ttpa_jax.train.dpo.config import DpoArgs, DpoConfig
from ttpa_jax.train.dpo.unit import make_dpo
from ttpa_jax.train.example_proto import decode_example
from ttpa_jax.train.loop import train
from ttpa_jax.train.recordio import open_source

METRICS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
           "logps/chosen", "logps/rejected", "logits/chosen", "logits/rejected")


def dpo_config(model_dir, data, out, **kw) -> DpoArgs:
    base = dict(model=str(model_dir), data=str(data), out=str(out),
                mesh=MeshConfig(data=1, fsdp=1, tensor=1), lora=LoraConfig(rank=8, alpha=16),
                dataset=DataConfig(batch_size=4, max_length=512, shuffle=False),
                optim=OptimConfig(lr=2e-2, warmup_steps=0), save_every=100)
    base.update(kw)
    return DpoArgs(**base)



# ------------------------------------------------------------------ losses and metrics vs NumPy
def _np_log_sigmoid(x):
    return -np.logaddexp(0, -x)


def _np_token_logps(logits, ids):
    """out[:, t] = log softmax(logits[:, t-1])[ids[:, t]]; out[:, 0] = 0."""
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    out = np.zeros(ids.shape)
    for t in range(1, ids.shape[1]):
        out[:, t] = logits[np.arange(len(ids)), t - 1, ids[:, t]] - lse[:, t - 1]
    return out


def numpy_dpo(pol_logits, ref_logits, batch, beta, loss_type, ls, sft_weight):
    """Independent NumPy DPO: sequence log-probs, per-pair losses, TRL's metrics."""
    n = batch["chosen_ids"].shape[0]
    ids = np.concatenate([batch["chosen_ids"], batch["rejected_ids"]])
    w = np.concatenate([batch["chosen_weights"], batch["rejected_weights"]]).astype(np.float64)
    pol = (_np_token_logps(pol_logits.astype(np.float64), ids) * w).sum(-1)
    ref = (_np_token_logps(ref_logits.astype(np.float64), ids) * w).sum(-1)
    pc, pr, rc, rr = pol[:n], pol[n:], ref[:n], ref[n:]
    cnt = w.sum(-1)
    if loss_type == "ipo":
        h = (pc / cnt[:n] - pr / cnt[n:]) - (rc / cnt[:n] - rr / cnt[n:])
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        h = (pc - pr) - (rc - rr)
        if loss_type == "sigmoid":
            losses = -(1 - ls) * _np_log_sigmoid(beta * h) - ls * _np_log_sigmoid(-beta * h)
        else:
            losses = np.maximum(0, 1 - beta * h)
    sft = -pc.sum() / cnt[:n].sum()
    chosen_r, rejected_r = beta * (pc - rc), beta * (pr - rr)
    # TRL's logits metric: the mean of the logits that predict completion tokens (position t - 1 for token t)
    prev_c, prev_r = pol_logits[:n, :-1], pol_logits[n:, :-1]
    mask_c, mask_r = batch["chosen_weights"][:, 1:] > 0, batch["rejected_weights"][:, 1:] > 0
    return {
        "loss": losses.mean() + sft_weight * sft,
        "rewards/chosen": chosen_r.mean(), "rewards/rejected": rejected_r.mean(),
        "rewards/accuracies": (chosen_r > rejected_r).mean(), "rewards/margins": (chosen_r - rejected_r).mean(),
        "logps/chosen": pc.mean(), "logps/rejected": pr.mean(),
        "logits/chosen": prev_c[mask_c].mean(), "logits/rejected": prev_r[mask_r].mean(),
    }


class FixedLogits:
    """A stand-in model with given logits, so the objective is tested on known numbers: its hidden
    states are the logits and its LM head the identity."""

    def __init__(self, logits):
        self.logits = jnp.asarray(logits)

    def hidden_states(self, ids, positions, kv_mask, **kw):
        return self.logits, None

    def head_weight(self):
        return jnp.eye(self.logits.shape[-1], dtype=self.logits.dtype)


@pytest.mark.parametrize("loss_type,ls,sft_weight", [
    ("sigmoid", 0.0, 0.0), ("sigmoid", 0.2, 0.0), ("sigmoid", 0.0, 0.5), ("ipo", 0.0, 0.0), ("hinge", 0.0, 0.0),
])
def test_dpo_losses_and_metrics_match_numpy(loss_type, ls, sft_weight):
    rng = np.random.default_rng(0)
    B, L, V = 3, 7, 11
    batch = {}
    for side in ("chosen", "rejected"):
        batch[f"{side}_ids"] = rng.integers(0, V, (B, L)).astype(np.int32)
        batch[f"{side}_mask"] = np.ones((B, L), np.int32)
        w = np.zeros((B, L), np.float32)
        for b in range(B):
            w[b, rng.integers(2, 4):rng.integers(5, L + 1)] = 1
        batch[f"{side}_weights"] = w
    pol = rng.normal(size=(2 * B, L, V)).astype(np.float32) * 2
    ref = rng.normal(size=(2 * B, L, V)).astype(np.float32) * 2
    beta = 0.3
    obj = make_dpo(beta, loss_type, ls, sft_weight)
    jb = PairRows(**{k: jnp.asarray(v) for k, v in batch.items()})
    _, sums = obj.loss(FixedLogits(pol), FixedLogits(ref), jb, Ctx(), obj.normalizers(jb))
    ours = {k: float(v) for k, v in obj.finalize(sums).items()}
    expected = numpy_dpo(pol, ref, batch, beta, loss_type, ls, sft_weight)
    for k in METRICS:
        assert abs(ours[k] - expected[k]) < 1e-5 * max(1, abs(expected[k])), k


# ------------------------------------------------------------------ training runs
def test_first_step_is_ln2_with_zero_rewards_and_logps_match_transformers(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", preference_records(4))
    train(dpo_config(tiny_model_dir, data, tmp_path / "run", steps=1), progress=False)
    first = metrics(tmp_path / "run")[0]
    assert abs(first["loss"] - math.log(2)) < 1e-6
    for k in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert abs(first[k]) < 1e-5

    # Sum of chosen-completion log-probs as transformers computes them for the same token ids.
    src = open_source(tmp_path / "run" / "data" / "preference.arrayrecord", "arrayrecord")
    hf = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    sums = []
    for i in range(len(src)):
        ex = decode_example(src[i])
        ids = torch.tensor(ex["chosen_ids"]).long()[None]
        with torch.no_grad():
            logp = torch.log_softmax(hf(ids).logits[0, :-1].double(), -1).gather(-1, ids[0, 1:, None])[:, 0]
        sums.append(float((logp * torch.tensor(ex["chosen_weights"][1:]).double()).sum()))
    assert abs(first["logps/chosen"] - np.mean(sums)) < 1e-4


def test_training_separates_pairs_and_leaves_base_unchanged(tiny_model_dir, tmp_path):
    # Every pair asks for the weather: a preference the untrained tiny model can learn from 4 pairs.
    data = write_jsonl(tmp_path / "pairs.jsonl", preference_records(4, seed=1, tools=["get_weather"]))
    train(dpo_config(tiny_model_dir, data, tmp_path / "run", steps=10, dpo=DpoConfig(beta=0.5),
                     optim=OptimConfig(lr=5e-3, warmup_steps=0)), progress=False)
    m = metrics(tmp_path / "run")
    assert m[-1]["rewards/accuracies"] == 1.0
    assert m[-1]["rewards/margins"] > m[0]["rewards/margins"] + 0.5
    assert m[-1]["loss"] < m[0]["loss"]
    trained, _, _ = load_run(tmp_path / "run")
    base = ttpa_jax.load_pretrained(tiny_model_dir)
    after = dict(nnx.to_flat_state(nnx.state(trained, nnx.Param)))
    for path, var in nnx.to_flat_state(nnx.state(base, nnx.Param)):
        np.testing.assert_array_equal(np.asarray(after[path][...]), np.asarray(var[...]))


def test_precomputed_reference_gives_the_same_losses(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", preference_records(8, seed=2))
    for name, pre in (("live", False), ("pre", True)):
        train(dpo_config(tiny_model_dir, data, tmp_path / name, steps=3,
                         dpo=DpoConfig(precompute_ref=pre)), progress=False)
    assert (tmp_path / "pre" / "data" / "preference-ref.arrayrecord").is_file()
    live, pre = metrics(tmp_path / "live"), metrics(tmp_path / "pre")
    for a, b in zip(live, pre):
        for k in METRICS:
            assert abs(a[k] - b[k]) < 1e-5, (a["step"], k)


def test_full_finetune_dpo_uses_a_frozen_reference(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", preference_records(4))
    train(dpo_config(tiny_model_dir, data, tmp_path / "run", steps=2, lora=LoraConfig(rank=0),
                     optim=OptimConfig(lr=1e-3, warmup_steps=0)), progress=False)
    m = metrics(tmp_path / "run")
    assert abs(m[0]["loss"] - math.log(2)) < 1e-6
    assert m[1]["rewards/margins"] != 0


# ------------------------------------------------------------------ export
def test_merged_and_peft_exports_reproduce_the_policy(tiny_model_dir, tmp_path):
    from peft import PeftModel

    data = write_jsonl(tmp_path / "pairs.jsonl", preference_records(4))
    run = tmp_path / "run"
    train(dpo_config(tiny_model_dir, data, run, steps=3, save_every=2), progress=False)
    policy, _, _ = load_run(run)
    ids = np.random.RandomState(0).randint(8, 500, (2, 24))
    ours = np.asarray(policy(jnp.asarray(ids)))

    for extra, out in (([], tmp_path / "merged"), (["--peft"], tmp_path / "adapter")):
        subprocess.run([sys.executable, "-m", "ttpa_jax.export", "--run", str(run), "--out", str(out), *extra],
                       check=True, capture_output=True)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert (tmp_path / "merged" / "tokenizer.json").is_file()
    reloaded = ttpa_jax.load_pretrained(tmp_path / "merged")  # strict: no adapter tensors left over
    np.testing.assert_allclose(np.asarray(reloaded(jnp.asarray(ids))), ours, atol=1e-4)
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "adapter").eval()
    with torch.no_grad():
        for hf in (merged, peft_model):
            np.testing.assert_allclose(hf(torch.tensor(ids)).logits.numpy(), ours, atol=1e-4)
    # --step picks an earlier checkpoint.
    subprocess.run([sys.executable, "-m", "ttpa_jax.export", "--run", str(run), "--out", str(tmp_path / "s2"), "--step", "2"],
                   check=True, capture_output=True)
    early, _, _ = load_run(run, step=2)
    s2 = AutoModelForCausalLM.from_pretrained(tmp_path / "s2").eval()
    with torch.no_grad():
        np.testing.assert_allclose(s2(torch.tensor(ids)).logits.numpy(), np.asarray(early(jnp.asarray(ids))), atol=1e-4)
