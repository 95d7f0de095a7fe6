"""The LM head (and the last layer's queries, attention output and MLP) on the scored columns only
(``train.score_columns``): the same hidden states, SFT and DPO losses, metrics and gradients as scoring
every column."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_packing import examples
from test_shared_prefix import _assert_same, _steps, group_batch

from ttpa_jax.model.config import load_config
from ttpa_jax.model.transformer import Visibility, init_model
from ttpa_jax.train.batches import PairRows
from ttpa_jax.train.loader import collate
from ttpa_jax.train.score_columns import pair_columns, score_columns, sft_columns
from ttpa_jax.train.sft.unit import make_sft
from ttpa_jax.train.shared_prefix import shared_prefix_batch
from ttpa_jax.train.trainer import make_train_step, split_model


def test_columns_in_order_padded_to_a_fraction_of_the_row():
    sel = np.zeros((2, 16), bool)
    sel[0, [3, 4, 9]] = True
    sel[1, [1]] = True
    assert score_columns(sel).tolist() == [[3, 4, 9, -1], [1, -1, -1, -1]]  # K = 16 / 4 holds 3
    sel[0, :] = True
    assert score_columns(sel).shape == (2, 16)
    assert score_columns(np.zeros((1, 8), bool)).tolist() == [[-1]]
    w = np.array([[0, 0, 1, 1, 0, 0, 0, 2]], np.float32)
    assert sft_columns(w).tolist() == [[1, 2, 6, -1]]  # column c predicts token c + 1


@pytest.mark.parametrize("remat", [False, True])
def test_hidden_states_at_columns_equal_every_columns_hidden_states(remat):
    cfg = load_config("tiny-llama3")
    batch = collate(examples(cfg.vocab_size, seed=5), 0, 8, 64, layout="packed")
    model = init_model(cfg, seed=1, remat=remat)
    ids, positions, mask, segments = (jnp.asarray(batch[k]) for k in ("input_ids", "positions", "attention_mask",
                                                                      "segment_ids"))
    cols = jnp.asarray(sft_columns(batch["weights"]).clip(0))  # [R, C]
    every, _ = model.hidden_states(ids, Visibility(positions, mask, segment_ids=segments))
    at, _ = model.hidden_states(ids, Visibility(positions, mask, segment_ids=segments, columns=cols))
    assert at.shape == (*cols.shape, cfg.hidden_size)
    np.testing.assert_allclose(np.asarray(at), np.asarray(jnp.take_along_axis(every, cols[..., None], axis=1)),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("layout,chunk", [("packed", 16), ("rows", 0)])
def test_sft_step_on_scored_columns_equals_every_column(layout, chunk):
    cfg = load_config("tiny-llama3")  # tied embeddings: the head's gradient comes from the scored columns
    exs = examples(cfg.vocab_size, seed=3)
    for ex in exs:  # the last quarter of each record weighted, as an assistant turn after a long prompt
        ex["weights"][: 3 * len(ex["weights"]) // 4] = 0
    batch = collate(exs, 0, 8, 64, layout=layout)
    assert batch["score_cols"].shape[1] < batch["input_ids"].shape[1]
    out = []
    for b in (batch, batch.replace(score_cols=None)):
        graphdef, trainable, frozen = split_model(init_model(cfg, seed=2), lora=False)
        tx = optax.sgd(1.0)
        step = make_train_step(graphdef, make_sft(logits_chunk=chunk), tx, 1, lora=False)
        params, _, m = step(trainable, frozen, None, tx.init(trainable), jax.tree.map(jnp.asarray, b),
                            jax.random.key(0))
        out.append((params, {k: float(v) for k, v in m.items()}))
    assert out[0][1]["grad_norm"] > 0
    _assert_same(out[1], out[0])


@pytest.mark.parametrize("lora,tie,chunk", [(True, True, 3), (False, False, 0)])
def test_dpo_step_on_scored_columns_equals_every_column(lora, tie, chunk):
    cfg = dataclasses.replace(load_config("tiny-qwen2"), tie_word_embeddings=tie)
    batch = group_batch(cfg.vocab_size, seed=4, prompt=40)
    batch.pop("ref_chosen_logp")
    sp = shared_prefix_batch(PairRows(**batch), pad_multiple=8, max_length=128)  # grouped, as one process collates
    cols = sp.replace(sp_cols=pair_columns(sp))
    assert cols["sp_cols"].shape[1] < sp["sp_ids"].shape[1]
    every, scored = _steps(cfg, lora, sp, chunk), _steps(cfg, lora, cols, chunk)
    assert every[1]["rewards/margins"] != 0.0
    _assert_same(every, scored)
