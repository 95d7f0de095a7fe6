"""The LM head run over chunks of positions (``--logits-chunk``): the same losses, metrics and updates
as the whole-sequence head, with less memory in the compiled step."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from compiled_step import compiled_memory

from ttpa_jax.model.config import load_config
from ttpa_jax.model.lora import LoraConfig, apply_lora
from ttpa_jax.model.transformer import even_chunks, init_model
from ttpa_jax.train.batches import PairRows, TokenRows
from ttpa_jax.train.dpo.unit import make_dpo
from ttpa_jax.train.sft.unit import make_sft
from ttpa_jax.train.trainer import make_train_step, split_model

B, L = 2, 23  # 23 positions: chunks of at most 5 are 5 x 5 (2 padded), of at most 10 are 3 x 8 (1 padded)


def batches(vocab: int):
    rng = np.random.default_rng(0)
    mask = np.ones((B, L), np.int32)
    mask[1, :4] = 0  # left padding
    weights = np.zeros((B, L), np.float32)
    weights[:, 9:] = rng.uniform(0.5, 2.0, (B, L - 9))  # non-binary weights, as PKT makes
    sft = {"input_ids": rng.integers(0, vocab, (B, L)), "attention_mask": mask, "weights": weights}
    dpo = {}
    for side in ("chosen", "rejected"):
        dpo[f"{side}_ids"] = rng.integers(0, vocab, (B, L))
        dpo[f"{side}_mask"] = mask
        dpo[f"{side}_weights"] = (weights > 0).astype(np.float32)
    as_jax = lambda b: {k: jnp.asarray(v, jnp.int32 if v.dtype.kind == "i" else v.dtype) for k, v in b.items()}  # noqa: E731
    return TokenRows(**as_jax(sft)), PairRows(**as_jax(dpo))


@pytest.mark.parametrize("T, chunk, expected", [(23, 5, (5, 5)), (23, 10, (3, 8)), (384, 256, (2, 192)),
                                                 (1024, 256, (4, 256)), (7, 1, (7, 1))])
def test_even_chunks_cover_the_positions_with_the_least_padding(T, chunk, expected):
    n, size = even_chunks(T, chunk)
    assert (n, size) == expected
    assert size <= chunk and n * size >= T and n * size - T < n and n == -(-T // chunk)


@pytest.mark.parametrize("tie, chunk", [(True, 5), (False, 5), (True, 10)])
def test_chunked_head_gives_the_same_steps(tie, chunk):
    cfg = dataclasses.replace(load_config("tiny-qwen2"), tie_word_embeddings=tie)
    sft_batch, dpo_batch = batches(cfg.vocab_size)
    runs = {}
    for size in (0, chunk):
        # full fine-tuning SFT: gradients reach the head (the embedding when tied) through every chunk
        graphdef, trainable, frozen = split_model(init_model(cfg, seed=1), lora=False)
        tx = optax.sgd(0.5)
        step = make_train_step(graphdef, make_sft(size), tx, 1, lora=False)
        sft = step(trainable, frozen, None, tx.init(trainable), sft_batch, jax.random.key(0))
        # LoRA DPO: the reference (adapters off) runs through the chunked head too
        model = apply_lora(init_model(cfg, seed=1), LoraConfig(rank=4, alpha=8), seed=0)
        graphdef, trainable, frozen = split_model(model, lora=True)
        trainable = jax.tree.map(lambda x: x + 0.01, trainable)  # B != 0: policy and reference differ
        step = make_train_step(graphdef, make_dpo(0.1, "sigmoid", sft_weight=0.5, logits_chunk=size), tx, 1, lora=True)
        dpo = step(trainable, frozen, None, tx.init(trainable), dpo_batch, jax.random.key(0))
        runs[size] = (sft, dpo)
    for whole, chunked in zip(runs[0], runs[chunk]):
        (p0, _, m0), (p1, _, m1) = whole, chunked
        for k in m0:
            np.testing.assert_allclose(float(m1[k]), float(m0[k]), rtol=1e-5, atol=1e-6, err_msg=k)
        for a, b in zip(jax.tree.leaves(p0), jax.tree.leaves(p1)):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)
    assert float(runs[0][1][2]["rewards/margins"]) != 0.0  # the reference did differ from the policy


def test_chunked_head_needs_less_memory():
    kw = dict(objective="dpo", batch_size=4, seq_len=256)
    whole = compiled_memory("tiny-llama3", (1, 1, 1), **kw).temp_size_in_bytes  # vocabulary 4096
    chunked = compiled_memory("tiny-llama3", (1, 1, 1), logits_chunk=32, **kw).temp_size_in_bytes
    logits = 2 * 4 * 256 * 4096 * 4  # one float32 [2B, L, V] buffer
    assert chunked < whole - logits, (whole, chunked)
