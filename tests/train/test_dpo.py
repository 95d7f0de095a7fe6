"""DPO: losses and metrics against NumPy, the adapters-off reference, precomputed reference log-probs,
and export to merged HF weights and to a PEFT adapter."""

import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from helpers import TOOLS, metrics, preference_records, write_jsonl
from transformers import AutoModelForCausalLM

import ttpa_jax
from ttpa_jax.export.weights import load_run
from ttpa_jax.model.lora import LoraConfig
from ttpa_jax.model.transformer import Ctx
from ttpa_jax.train.batches import PairRows
from ttpa_jax.train.config import DataConfig, MeshConfig, OptimConfig
from ttpa_jax.train.dataset import balance_lengths, length_balance_weights
from ttpa_jax.train.dpo.config import DpoArgs, DpoConfig
from ttpa_jax.train.dpo.unit import DPOP_METRICS, make_dpo
from ttpa_jax.train.example_proto import decode_example, encode_example
from ttpa_jax.train.loader import collate
from ttpa_jax.train.loop import train
from ttpa_jax.train.recordio import RecordWriter, open_source

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


def _np_branch_points(batch):
    """Per pair: the index of the first token where the chosen and rejected ids differ."""
    out = []
    for c, cm, r, rm in zip(batch["chosen_ids"], batch["chosen_mask"], batch["rejected_ids"], batch["rejected_mask"]):
        c, r = c[cm > 0], r[rm > 0]
        diff = [i for i in range(min(len(c), len(r))) if c[i] != r[i]]
        out.append(diff[0] if diff else min(len(c), len(r)))
    return np.array(out)


def numpy_dpo(pol_logits, ref_logits, batch, beta, loss_type, ls, sft_weight, dpop=0.0, sft_tokens="all",
              pair_weight=None):
    """Independent NumPy DPO: sequence log-probs, per-pair losses, TRL's metrics. ``dpop``: DPO-Positive's
    lambda; ``sft_tokens`` "after_branch": the NLL over each chosen side's tokens from its pair's branch
    point on; ``pair_weight`` [B]: the DPO term is sum(weight * loss) / B."""
    n = batch["chosen_ids"].shape[0]
    ids = np.concatenate([batch["chosen_ids"], batch["rejected_ids"]])
    w = np.concatenate([batch["chosen_weights"], batch["rejected_weights"]]).astype(np.float64)
    tok = _np_token_logps(pol_logits.astype(np.float64), ids)
    pol = (tok * w).sum(-1)
    ref = (_np_token_logps(ref_logits.astype(np.float64), ids) * w).sum(-1)
    pc, pr, rc, rr = pol[:n], pol[n:], ref[:n], ref[n:]
    cnt = w.sum(-1)
    penalty = np.maximum(0.0, rc - pc)
    if loss_type == "ipo":
        h = (pc / cnt[:n] - pr / cnt[n:]) - (rc / cnt[:n] - rr / cnt[n:])
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        h = (pc - pr) - (rc - rr) - dpop * penalty
        if loss_type == "sigmoid":
            losses = -(1 - ls) * _np_log_sigmoid(beta * h) - ls * _np_log_sigmoid(-beta * h)
        else:
            losses = np.maximum(0, 1 - beta * h)
    if pair_weight is not None:
        losses = losses * pair_weight
    sft = -pc.sum() / cnt[:n].sum()
    if sft_tokens == "after_branch":
        after = w[:n] * (np.arange(ids.shape[1])[None, :] >= _np_branch_points(batch)[:, None])
        sft = -(tok[:n] * after).sum() / after.sum()
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
        "dpop/penalty": penalty.mean(), "dpop/chosen_below_ref": (penalty > 0).mean(), "nll_loss": sft,
    }


class FixedLogits:
    """A stand-in model with given logits, so the objective is tested on known numbers: its hidden
    states are the logits and its LM head the identity."""

    def __init__(self, logits):
        self.logits = jnp.asarray(logits)

    def hidden_states(self, ids, view, **kw):
        return self.logits, None

    def head_weight(self):
        return jnp.eye(self.logits.shape[-1], dtype=self.logits.dtype)


@pytest.mark.parametrize("loss_type,ls,sft_weight,dpop", [
    ("sigmoid", 0.0, 0.0, 0.0), ("sigmoid", 0.2, 0.0, 0.0), ("sigmoid", 0.0, 0.5, 0.0), ("ipo", 0.0, 0.0, 0.0),
    ("hinge", 0.0, 0.0, 0.0), ("sigmoid", 0.0, 0.0, 1.5), ("hinge", 0.0, 0.0, 1.5),
])
def test_dpo_losses_and_metrics_match_numpy(loss_type, ls, sft_weight, dpop):
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
    obj = make_dpo(beta, loss_type, ls, sft_weight, dpop_lambda=dpop)
    jb = PairRows(**{k: jnp.asarray(v) for k, v in batch.items()})
    _, sums = obj.loss(FixedLogits(pol), FixedLogits(ref), jb, Ctx(), obj.normalizers(jb))
    ours = {k: float(v) for k, v in obj.finalize(sums).items()}
    expected = numpy_dpo(pol, ref, batch, beta, loss_type, ls, sft_weight, dpop)
    assert 0 < expected["dpop/chosen_below_ref"] < 1  # the penalty is active for some pairs only
    assert ("dpop/penalty" in ours) == bool(dpop)
    for k in METRICS + DPOP_METRICS * bool(dpop):
        assert abs(ours[k] - expected[k]) < 1e-5 * max(1, abs(expected[k])), k


# ------------------------------------------------------------------ options against likelihood displacement
def _fork_examples(vocab: int, seed: int = 0) -> list[dict]:
    """Four pairs as records: pairs 0-2 share a prompt and their chosen (gold) side and fork from it at
    different tokens (pair 2's rejected side stops early: a prefix of gold); pair 3's chosen side is a
    prefix of its rejected side. Chosen longer in pairs 0-2, shorter in pair 3: weights 2/3, 2/3, 2/3, 2."""
    rng = np.random.default_rng(seed)
    p, gold, other = 6, rng.integers(3, vocab, 14), rng.integers(3, vocab, 8)
    fork = lambda at, n: np.concatenate([gold[:at], [(gold[at] - 2) % (vocab - 3) + 3], rng.integers(3, vocab, n)])  # noqa: E731
    sides = [(gold, fork(p + 5, 1), p), (gold, fork(p + 2, 2), p), (gold, gold[:p + 3], p),
             (other, np.concatenate([other, rng.integers(3, vocab, 4)]), 5)]
    weights = length_balance_weights([len(c) - q for c, _, q in sides], [len(r) - q for _, r, q in sides])
    np.testing.assert_allclose(weights, [2 / 3, 2 / 3, 2 / 3, 2])
    return [{"chosen_ids": c, "chosen_weights": (np.arange(len(c)) >= q) * 1.0, "rejected_ids": r,
             "rejected_weights": (np.arange(len(r)) >= q) * 1.0, "pair_weight": np.array([w], np.float32)}
            for (c, r, q), w in zip(sides, weights)]


@pytest.mark.parametrize("opts", [dict(dpop_lambda=2.0), dict(sft_weight=0.5, sft_tokens="after_branch"),
                                  dict(balance_lengths=True), dict(dpop_lambda=2.0, sft_weight=0.5,
                                                                   sft_tokens="after_branch", balance_lengths=True)])
def test_options_match_numpy_on_a_tiny_model_in_every_layout(opts):
    from ttpa_jax.model.config import load_config
    from ttpa_jax.model.lora import apply_lora
    from ttpa_jax.model.transformer import init_model
    from ttpa_jax.train.trainer import split_model

    cfg = load_config("tiny-qwen2")
    graphdef, trainable, frozen = split_model(apply_lora(init_model(cfg, seed=1), LoraConfig(rank=4, alpha=8)), lora=True)
    leaves, tree = jax.tree.flatten(trainable)  # adapters away from zero: the policy differs from the reference
    keys = jax.random.split(jax.random.key(3), len(leaves))
    model = nnx.merge(graphdef, jax.tree.unflatten(tree, [x + 0.3 * jax.random.normal(k, x.shape)
                                                         for x, k in zip(leaves, keys)]), frozen)
    examples = _fork_examples(cfg.vocab_size)
    rows = collate(examples, 0, 8, 64, "rows")
    ids = np.concatenate([rows.chosen_ids, rows.rejected_ids])
    mask = np.concatenate([rows.chosen_mask, rows.rejected_mask])
    pol, ref = (np.asarray(model(jnp.asarray(ids), jnp.asarray(mask), ctx=Ctx(lora=lora))) for lora in (True, False))
    sft_weight, sft_tokens = opts.get("sft_weight", 0.0), opts.get("sft_tokens", "all")
    expected = numpy_dpo(pol, ref, rows, 0.1, "sigmoid", 0.0, sft_weight, opts.get("dpop_lambda", 0.0), sft_tokens,
                         rows.pair_weight if opts.get("balance_lengths") else None)
    assert 0 < expected["dpop/chosen_below_ref"] < 1  # some chosen sides are below the reference, some not
    obj = make_dpo(0.1, "sigmoid", **opts)
    keys = METRICS + DPOP_METRICS * ("dpop_lambda" in opts) + ("nll_loss",) * bool(sft_weight)
    for layout, one_process in (("rows", True), ("shared_prefix", True), ("shared_prefix", False)):
        batch = jax.tree.map(jnp.asarray, collate(examples, 0, 8, 64, layout, varying_shapes=one_process))
        _, sums = obj.loss(model, model, batch, Ctx(), obj.normalizers(batch))
        ours = {k: float(v) for k, v in obj.finalize(sums).items()}
        for k in keys:
            assert abs(ours[k] - expected[k]) < 1e-5 * max(1, abs(expected[k])), (layout, one_process, k)


def test_balance_weights_of_a_pair_file(tmp_path):
    path = tmp_path / "preference.arrayrecord"
    (tmp_path / "stats.json").write_text('{"fingerprint": "f"}')
    lengths = [(5, 3), (4, 2), (6, 1), (2, 7)]  # three pairs with a longer chosen side, one shorter
    with RecordWriter(path) as w:
        for c, r in lengths:
            w.write(encode_example({"chosen_ids": np.arange(3 + c), "chosen_weights": (np.arange(3 + c) >= 3) * 1.0,
                                    "rejected_ids": np.arange(3 + r), "rejected_weights": (np.arange(3 + r) >= 3) * 1.0}))
    out, summary = balance_lengths(path, "arrayrecord")
    src = open_source(out, "arrayrecord")
    weights = [float(decode_example(src[i])["pair_weight"][0]) for i in range(len(src))]
    np.testing.assert_allclose(weights, [2 / 3, 2 / 3, 2 / 3, 2], rtol=1e-6)  # 3 x 2/3 = 1 x 2; mean 1
    assert summary == {"longer": 3, "shorter": 1, "equal": 0, "longer_weight": weights[0], "shorter_weight": weights[3]}
    assert balance_lengths(path, "arrayrecord") == (out, summary)  # reused
    np.testing.assert_allclose(length_balance_weights([3, 3, 5, 4, 1, 2], [3, 1, 1, 1, 4, 2]),  # equal pairs: 1
                               [1, 2 / 3, 2 / 3, 2 / 3, 2, 1], rtol=1e-6)
    np.testing.assert_array_equal(length_balance_weights([3, 4], [1, 1]), [1, 1])  # nothing to balance against


def _arg_records() -> list[dict]:
    """Tool-call pairs forking where one side closes the call and the other adds an argument: the
    rejected side drops the city in three pairs (chosen longer) and adds a unit in one (chosen shorter)."""
    call = lambda args: [{"role": "assistant", "content": "", "tool_calls": [  # noqa: E731
        {"type": "function", "function": {"name": "get_weather", "arguments": args}}]}]
    out = []
    for i, city in enumerate(["Paris", "Rome", "Oslo", "Lima"]):
        rejected = {"city": city, "unit": "celsius"} if i == 3 else {}
        out.append({"prompt": [{"role": "user", "content": f"What is the weather in {city}?"}],
                    "chosen": call({"city": city}), "rejected": call(rejected), "tools": TOOLS})
    return out


def test_options_train_alike_in_both_layouts_and_first_step_matches_transformers(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", _arg_records())
    opts = dict(dpop_lambda=1.0, sft_weight=0.5, sft_tokens="after_branch", balance_lengths=True)
    for name, shared in (("rows", False), ("shared", True)):
        train(dpo_config(tiny_model_dir, data, tmp_path / name, steps=2,
                         dpo=DpoConfig(shared_prefix=shared, **opts)), progress=False)
    rows, shared = metrics(tmp_path / "rows"), metrics(tmp_path / "shared")
    for a, b in zip(rows, shared):
        for k in METRICS + DPOP_METRICS + ("nll_loss",):
            assert abs(a[k] - b[k]) < 1e-5 * max(1, abs(a[k])), (a["step"], k)

    src = open_source(tmp_path / "rows" / "data" / "preference-balanced.arrayrecord", "arrayrecord")
    examples = [decode_example(src[i]) for i in range(len(src))]
    np.testing.assert_allclose([float(ex["pair_weight"][0]) for ex in examples], [2 / 3, 2 / 3, 2 / 3, 2], rtol=1e-6)
    # The first step (adapters at zero: the policy is the reference) is ln 2 (weights averaging 1, no
    # penalty) + 0.5 * NLL of the chosen tokens from each pair's branch point on, by transformers.
    hf = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64).eval()
    nll, count = 0.0, 0.0
    for ex in examples:
        c, r = ex["chosen_ids"], ex["rejected_ids"]
        branch = next(i for i in range(min(len(c), len(r))) if c[i] != r[i])
        ids = torch.tensor(c).long()[None]
        with torch.no_grad():
            logp = torch.log_softmax(hf(ids).logits[0, :-1], -1).gather(-1, ids[0, 1:, None])[:, 0].numpy()
        w = ex["chosen_weights"][1:] * (np.arange(1, len(c)) >= branch)
        nll, count = nll - float((logp * w).sum()), count + float(w.sum())
    assert abs(rows[0]["loss"] - (math.log(2) + 0.5 * nll / count)) < 1e-5
    assert abs(rows[0]["nll_loss"] - nll / count) < 1e-5


def test_dpop_is_refused_where_it_is_not_defined():
    with pytest.raises(ValueError, match="ipo"):
        DpoConfig(dpop_lambda=1.0, loss_type="ipo")
    with pytest.raises(ValueError, match="label_smoothing"):
        make_dpo(0.1, "sigmoid", label_smoothing=0.1, dpop_lambda=1.0)
    out = subprocess.run([sys.executable, "-m", "ttpa_jax.train", "dpo", "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert all(f in out for f in ("--dpop-lambda", "--sft-tokens {all,after_branch}", "--balance-lengths"))


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
