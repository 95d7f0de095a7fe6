"""Shared-prefix DPO (a group's trunk once, then each distinct sequence's branch; groups packed into
rows) against the concatenated layout (2B full rows): the same losses, metrics and gradients; the
loader keeps a prompt's pairs together."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ttpa_jax.model.config import load_config
from ttpa_jax.model.lora import LoraConfig, apply_lora
from ttpa_jax.model.transformer import init_model
from ttpa_jax.train.batches import PairRows
from ttpa_jax.train.dpo.unit import make_dpo
from ttpa_jax.train.example_proto import encode_example
from ttpa_jax.train.loader import GroupedShuffle, Loader
from ttpa_jax.train.recordio import RecordWriter
from ttpa_jax.train.score_columns import pair_columns
from ttpa_jax.train.shared_prefix import common_prefix, shared_prefix_batch
from ttpa_jax.train.trainer import make_train_step, split_model

# (prompt, common generated prefix, chosen suffix, rejected suffix) lengths per pair; one chosen side
# is a prefix of its rejected side (empty chosen suffix), one pair forks right after the prompt
SHAPES = [(9, 3, 4, 6), (6, 0, 5, 2), (12, 2, 0, 3), (7, 4, 3, 3)]


def pair_batch(vocab: int, L: int = 32, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {f"{s}_{k}": np.zeros((len(SHAPES), L), np.float32 if k == "weights" else np.int32)
           for s in ("chosen", "rejected") for k in ("ids", "mask", "weights")}
    for i, (p, g, c, r) in enumerate(SHAPES):
        trunk = rng.integers(3, vocab, p + g)
        c_ids = np.concatenate([trunk, rng.integers(3, vocab, c)])
        r_ids = np.concatenate([trunk, rng.integers(3, vocab, r)])
        if c and r and c_ids[p + g] == r_ids[p + g]:
            r_ids[p + g] = 3 if c_ids[p + g] != 3 else 4
        for side, ids in (("chosen", c_ids), ("rejected", r_ids)):
            out[f"{side}_ids"][i, :len(ids)] = ids
            out[f"{side}_mask"][i, :len(ids)] = 1
            out[f"{side}_weights"][i, p:len(ids)] = rng.uniform(0.5, 1.5, len(ids) - p)  # completion tokens
        out["rejected_weights"][i, p:p + g] = out["chosen_weights"][i, p:p + g]  # one weight per shared token
    return out


def group_batch(vocab: int, seed: int = 0, prompt: int = 11) -> dict[str, np.ndarray]:
    """Pairs as TPS makes them: pairs 0-2 share a prompt and pairs 0 and 1 their chosen (gold) side;
    pair 2's chosen side is pair 1's rejected side; pair 3 has a prompt of its own."""
    rng = np.random.default_rng(seed)
    p, L = prompt, prompt + 29
    head, other = rng.integers(3, vocab, p), rng.integers(3, vocab, 7)
    gold = np.concatenate([head, rng.integers(3, vocab, 8)])
    fork = lambda seq, at, n: np.concatenate([seq[:at], [(seq[at] + 1 - 3) % (vocab - 3) + 3],  # noqa: E731
                                              rng.integers(3, vocab, n)])
    b1 = fork(gold, p + 2, 3)
    sides = [(gold, fork(gold, p + 4, 6), p), (gold, b1, p), (b1, fork(b1, p, 5), p),
             (np.concatenate([other, rng.integers(3, vocab, 5)]), np.concatenate([other, rng.integers(3, vocab, 9)]), 7)]
    out = {f"{s}_{k}": np.zeros((len(sides), L), np.float32 if k == "weights" else np.int32)
           for s in ("chosen", "rejected") for k in ("ids", "mask", "weights")}
    for i, (c, r, p) in enumerate(sides):
        for side, ids in (("chosen", c), ("rejected", r)):
            out[f"{side}_ids"][i, :len(ids)] = ids
            out[f"{side}_mask"][i, :len(ids)] = 1
            out[f"{side}_weights"][i, p:len(ids)] = 1.0
    out["ref_chosen_logp"] = np.array([-1.0, -2.0, -3.0, -4.0], np.float32)
    return out


def test_layout_of_one_pair():
    b = {"chosen_ids": np.array([[5, 6, 7, 8, 0]]), "chosen_mask": np.array([[1, 1, 1, 1, 0]]),
         "chosen_weights": np.array([[0, 0, 1, 1, 0]], np.float32),
         "rejected_ids": np.array([[5, 6, 7, 9, 4]]), "rejected_mask": np.array([[1, 1, 1, 1, 1]]),
         "rejected_weights": np.array([[0, 0, 1, 1, 1]], np.float32), "ref_chosen_logp": np.array([-1.0])}
    sp = shared_prefix_batch(PairRows(**b), pad_multiple=8, max_length=64)
    assert common_prefix(b["chosen_ids"][0], b["rejected_ids"][0]) == 3
    # trunk [5, 6]; each branch repeats the last shared token (7) at its position (2)
    assert sp["sp_ids"][0].tolist() == [5, 6, 7, 8, 7, 9, 4, 0]
    assert sp["sp_positions"][0].tolist() == [0, 1, 2, 3, 2, 3, 4, 0]
    assert sp["sp_branch"][0].tolist() == [0, 0, 1, 1, 2, 2, 2, 0]
    assert sp["sp_segment"][0].tolist() == [1] * 7 + [0]
    assert sp["sp_target"][0].tolist() == [6, 7, 8, 0, 9, 4, 0, 0]
    assert sp["sp_chosen_w"][0].tolist() == [[0, 1, 1, 0, 0, 0, 0, 0]]
    assert sp["sp_rejected_w"][0].tolist() == [[0, 1, 0, 0, 1, 1, 0, 0]]
    assert sp["sp_pair"].tolist() == [[0]] and sp["ref_chosen_logp"].tolist() == [[-1.0]]


def test_pairs_of_one_prompt_share_a_row_and_their_sequences():
    b = group_batch(64)
    sp = shared_prefix_batch(PairRows(**b), pad_multiple=8, max_length=64)
    slots = sp["sp_pair"]
    row_of = {int(p): r for r, row in enumerate(slots) for p in row if p >= 0}
    assert sorted(row_of) == [0, 1, 2, 3] and row_of[0] == row_of[1] == row_of[2]
    r = row_of[0]
    seg = sp["sp_segment"][r]
    group = seg == seg[sp["sp_chosen_w"][r, list(slots[r]).index(0)].argmax()]
    # four distinct sequences (gold, a branch of it at 15, one at 13, a branch of that one right after
    # the 11-token prompt) after a 10-token trunk (the shared prompt less the token each branch repeats)
    assert (sp["sp_branch"][r][group] == 0).sum() == 10 and len(set(sp["sp_branch"][r][group]) - {0}) == 4
    assert group.sum() == 10 + (19 - 10) + (22 - 10) + (17 - 10) + (17 - 10)
    assert {float(v) for v in sp["ref_chosen_logp"][slots >= 0]} == {-1.0, -2.0, -3.0, -4.0}
    one_each = shared_prefix_batch(PairRows(**b), pad_multiple=8, max_length=64, group=False)
    assert one_each["sp_pair"].tolist() == [[0], [1], [2], [3]]


def _steps(cfg, lora: bool, batch, chunk=0, placement=None):
    """One SGD step of DPO (sigmoid, an SFT term) -> (updated params, metrics)."""
    if isinstance(batch, dict):
        batch = PairRows(**batch)
    model = init_model(cfg, seed=1)
    if lora:
        model = apply_lora(model, LoraConfig(rank=4, alpha=8), seed=0)
    graphdef, trainable, frozen = split_model(model, lora=lora)
    trainable = jax.tree.map(lambda x: x + 0.01, trainable)  # policy != reference (LoRA B != 0; full: shifted)
    ref = None if lora else jax.tree.map(lambda x: x - 0.01, trainable)
    tx = optax.sgd(1.0)
    kw = {}
    if placement is not None:
        trainable, frozen, ref = placement.state(trainable), placement.state(frozen), (ref and placement.state(ref))
        kw["out_shardings"] = (placement.shardings(trainable), placement.replicated, placement.replicated)
        batch = placement.batch(batch)
    else:
        batch = jax.tree.map(jnp.asarray, batch)
    step = make_train_step(graphdef, make_dpo(0.1, "sigmoid", sft_weight=0.3, logits_chunk=chunk), tx, 1, lora, **kw)
    with jax.set_mesh(placement.mesh) if placement is not None else _null():
        params, _, m = step(trainable, frozen, ref, tx.init(trainable), batch, jax.random.key(0))
    return params, {k: float(v) for k, v in m.items()}


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _assert_same(a, b):
    (pa, ma), (pb, mb) = a, b
    assert ma.keys() == mb.keys()
    for k in ma:
        np.testing.assert_allclose(mb[k], ma[k], rtol=1e-5, atol=1e-5, err_msg=k)
    for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):  # SGD at lr 1: the same gradients
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("lora,tie,chunk", [(True, True, 7), (False, False, 0)])  # LoRA and full, tied and untied
@pytest.mark.parametrize("make", [pair_batch, group_batch])
def test_shared_prefix_step_equals_concatenated_step(lora, tie, chunk, make):
    cfg = dataclasses.replace(load_config("tiny-qwen2"), tie_word_embeddings=tie)
    batch = make(cfg.vocab_size)
    batch.pop("ref_chosen_logp", None)
    concat = _steps(cfg, lora, batch, chunk)
    assert concat[1]["rewards/margins"] != 0.0 and concat[1]["grad_norm"] > 0
    for group in (True, False):
        sp = shared_prefix_batch(PairRows(**batch), pad_multiple=8, max_length=64, group=group)
        _assert_same(concat, _steps(cfg, lora, sp.replace(sp_cols=pair_columns(sp)) if lora else sp, chunk))


def test_shared_prefix_step_on_a_mesh_equals_one_device():
    from ttpa_jax.model.sharding import Placement, make_mesh

    cfg = load_config("tiny-qwen2")
    for make in (pair_batch, group_batch):
        batch = make(cfg.vocab_size, seed=3)
        batch.pop("ref_chosen_logp", None)
        one = _steps(cfg, True, batch)
        sp = shared_prefix_batch(PairRows(**batch), pad_multiple=8, max_length=64, row_multiple=4)  # grouped, rows padded to the 4 devices
        _assert_same(one, _steps(cfg, True, sp, placement=Placement(make_mesh(2, 2, 2))))


def test_grouped_shuffle_keeps_a_prompts_records_together_every_epoch():
    order = GroupedShuffle([[0, 4], [1], [2, 3, 5]], seed=7)
    epochs = [[order(e * 6 + i) for i in range(6)] for e in range(4)]
    for ep in epochs:
        assert sorted(ep) == list(range(6))
        assert abs(ep.index(0) - ep.index(4)) == 1 and ep[ep.index(2):ep.index(2) + 3] == [2, 3, 5]
    assert len({tuple(ep) for ep in epochs}) > 1  # a new group order each epoch


def test_loader_batches_a_prompts_pairs_together_and_resumes(tmp_path):
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, 60, 9 + k) for k in range(3)]
    path = tmp_path / "dpo.arrayrecord"
    with RecordWriter(path) as w:  # three prompts' pairs interleaved in the file
        for j in range(3):
            for p in prompts:
                gold = np.concatenate([p, rng.integers(3, 60, 6)])
                rejected = np.concatenate([gold[:len(p) + j], rng.integers(3, 60, 4)])
                w.write(encode_example({"chosen_ids": gold, "chosen_weights": (np.arange(len(gold)) >= len(p)) * 1.0,
                                        "rejected_ids": rejected,
                                        "rejected_weights": (np.arange(len(rejected)) >= len(p)) * 1.0}))
    kw = dict(global_batch=3, seed=1, shuffle=True, pad_id=0, pad_multiple=8, max_length=128, layout="shared_prefix")
    a = Loader(path, "arrayrecord", **kw)
    for _ in range(7):  # across epochs (9 records, 3 per batch): every batch is one prompt's pairs, one row
        batch = next(a)
        assert batch["sp_pair"].shape[0] == 1 and set(batch["sp_segment"][0].tolist()) - {0} == {1}
    state = a.get_state()
    expected = [next(a) for _ in range(3)]
    b = Loader(path, "arrayrecord", **kw)
    b.set_state(state)
    for e in expected:
        got = next(b)
        assert jax.tree.structure(got) == jax.tree.structure(e)
        assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(e)))
