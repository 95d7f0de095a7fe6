"""ORPO (``train orpo``): the first step's loss against TRL's formula computed independently with
transformers on the same token ids, and its command line."""

import subprocess
import sys

import numpy as np
import torch
from helpers import metrics, preference_records, write_jsonl
from transformers import AutoModelForCausalLM

from ttpa_jax.model.lora import LoraConfig
from ttpa_jax.train.config import DataConfig, MeshConfig, OptimConfig
from ttpa_jax.train.example_proto import decode_example
from ttpa_jax.train.loop import train
from ttpa_jax.train.orpo.config import OrpoArgs, OrpoConfig
from ttpa_jax.train.recordio import open_source


def trl_orpo_loss(model_dir, examples, beta: float) -> dict[str, float]:
    """TRL's ``ORPOTrainer`` on one batch, in float64: mean per-token log-probs of each completion,
    log odds = (c - r) - (log1p(-exp(c)) - log1p(-exp(r))), loss = NLL(chosen) - mean(beta * logsigmoid(log odds)),
    the NLL a mean over every chosen completion token of the batch."""
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64).eval()
    means, nll_sum, nll_count = {"chosen": [], "rejected": []}, 0.0, 0
    for ex in examples:
        for side in ("chosen", "rejected"):
            ids = torch.tensor(ex[f"{side}_ids"]).long()[None]
            labels = torch.tensor(ex[f"{side}_weights"][1:]) > 0  # completion tokens (the prompt is -100 in TRL)
            with torch.no_grad():
                logp = torch.log_softmax(hf(ids).logits[0, :-1], -1).gather(-1, ids[0, 1:, None])[:, 0]
            means[side].append(float(logp[labels].sum() / labels.sum()))
            if side == "chosen":
                nll_sum, nll_count = nll_sum - float(logp[labels].sum()), nll_count + int(labels.sum())
    c, r = np.array(means["chosen"]), np.array(means["rejected"])
    log_odds = (c - r) - (np.log1p(-np.exp(c)) - np.log1p(-np.exp(r)))
    ratio = -np.logaddexp(0.0, -log_odds)  # log sigmoid
    return {"loss": nll_sum / nll_count - (beta * ratio).mean(), "nll_loss": nll_sum / nll_count,
            "log_odds_ratio": ratio.mean(), "log_odds_chosen": log_odds.mean(), "logps/chosen": c.mean()}


def test_first_step_loss_equals_trls_formula(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", preference_records(4))
    run = tmp_path / "run"
    beta = 0.25
    train(OrpoArgs(model=str(tiny_model_dir), data=str(data), out=str(run), steps=1,
                   mesh=MeshConfig(data=1, fsdp=1, tensor=1), lora=LoraConfig(rank=8, alpha=16),
                   dataset=DataConfig(batch_size=4, max_length=512, shuffle=False),
                   optim=OptimConfig(lr=2e-2, warmup_steps=0), orpo=OrpoConfig(beta=beta)), progress=False)
    first = metrics(run)[0]  # the adapters start at zero: the step's loss is the base model's
    src = open_source(run / "data" / "preference.arrayrecord", "arrayrecord")
    expected = trl_orpo_loss(tiny_model_dir, [decode_example(src[i]) for i in range(len(src))], beta)
    for k, v in expected.items():
        assert abs(first[k] - v) < 1e-5, (k, first[k], v)
    assert first["grad_norm"] > 0


def test_cli_lists_orpos_flags_only():
    out = subprocess.run([sys.executable, "-m", "ttpa_jax.train", "orpo", "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert "--beta" in out and "--shared-prefix" in out and "--loss-type" not in out and "--group-size" not in out
