"""Packed SFT (several records per row, segment-aware attention, positions per record) against one
record per row: the same loss, metrics and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ttpa_jax.model.config import load_config
from ttpa_jax.model.transformer import init_model
from ttpa_jax.train.loader import collate
from ttpa_jax.train.packing import efficiency, pack, plan_rows
from ttpa_jax.train.sft.unit import make_sft
from ttpa_jax.train.trainer import make_train_step, split_model

LENGTHS = [20, 7, 13, 30, 5, 9]


def examples(vocab: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [{"input_ids": rng.integers(3, vocab, n).astype(np.int32),
             "weights": (np.arange(n) >= n // 3) * rng.uniform(0.5, 1.5, n).astype(np.float32)} for n in LENGTHS]


def test_pack_places_every_record_whole_with_its_own_positions():
    exs = examples(100)
    b = pack(exs, pad_id=0, pad_multiple=8, max_length=64, row_multiple=2)
    R, L = b["input_ids"].shape
    assert R % 2 == 0 and R * L < len(LENGTHS) * 32  # fewer slots than one record per 32-token row
    found = []
    for r in range(R):
        for seg in range(1, b["segment_ids"][r].max() + 1):
            cols = np.nonzero(b["segment_ids"][r] == seg)[0]
            assert (np.diff(cols) == 1).all() and (b["positions"][r, cols] == np.arange(len(cols))).all()
            found.append(b["input_ids"][r, cols].tolist())
    assert sorted(found) == sorted(ex["input_ids"].tolist() for ex in exs)
    assert b["attention_mask"].sum() == sum(LENGTHS) and efficiency(b) == sum(LENGTHS) / (R * L)
    R, L, _ = plan_rows([10, 10, 10, 10, 20], 8, 64)
    assert (R, L) == (2, 32)  # the fewest slots (4 x 16 cannot hold 60 tokens), in two rows rather than 1 x 64


def test_packed_sft_step_equals_one_record_per_row():
    cfg = load_config("tiny-llama3")  # tied embeddings: gradients reach the head through every record
    exs = examples(cfg.vocab_size, seed=1)
    rows = collate(exs, 0, 8, 64)
    packed = collate(exs, 0, 8, 64, layout="packed")
    assert packed["input_ids"].shape[0] < rows["input_ids"].shape[0]
    out = {}
    for name, batch in (("rows", rows), ("packed", packed)):
        graphdef, trainable, frozen = split_model(init_model(cfg, seed=2), lora=False)
        tx = optax.sgd(1.0)
        step = make_train_step(graphdef, make_sft(logits_chunk=16), tx, 1, lora=False)
        out[name] = step(trainable, frozen, None, tx.init(trainable), jax.tree.map(jnp.asarray, batch),
                         jax.random.key(0))
    (p0, _, m0), (p1, _, m1) = out["rows"], out["packed"]
    for k in m0:
        np.testing.assert_allclose(float(m1[k]), float(m0[k]), rtol=1e-5, atol=1e-6, err_msg=k)
    for a, b in zip(jax.tree.leaves(p0), jax.tree.leaves(p1)):  # SGD at lr 1: the same gradients
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=1e-5)


def test_row_length_lets_a_row_take_more_records_than_max_length():
    exs = examples(100)  # records of 5-30 tokens, max_length 32
    capped = collate(exs, 0, 8, 32, layout="packed")
    longer = collate(exs, 0, 8, 32, layout="packed", row_length=128)
    assert capped["input_ids"].shape[1] <= 32 < longer["input_ids"].shape[1] <= 128
    assert efficiency(longer) > efficiency(capped)
    assert collate(exs, 0, 8, 32, row_length=128)["input_ids"].shape[1] == 32  # one record per row: max_length


def test_row_length_below_max_length_is_refused():
    import pytest

    from ttpa_jax.core.errors import ConfigError
    from ttpa_jax.train.config import DataConfig

    assert DataConfig(max_length=1024, row_length=2048).row_length == 2048
    with pytest.raises(ConfigError, match="dataset.row_length 512 is below dataset.max_length 1024"):
        DataConfig(max_length=1024, row_length=512)


def test_lengths_per_octave_sets_the_row_lengths_a_batch_may_take():
    import pytest

    from ttpa_jax.core.errors import ConfigError
    from ttpa_jax.train.config import DataConfig
    from ttpa_jax.train.packing import candidate_lengths

    assert candidate_lengths(500, 64, 2048, 1) == [512, 1024, 2048]
    assert candidate_lengths(500, 64, 2048) == [512, 768, 1024, 1536, 2048]
    assert candidate_lengths(800, 64, 2048, 4) == [896, 1024, 1280, 1536, 1792, 2048]
    exs = examples(100)  # records of 5-30 tokens: 4 per octave pads less
    coarse, fine = (collate(exs, 0, 8, 32, layout="packed", row_length=256, lengths_per_octave=n) for n in (2, 4))
    assert efficiency(fine) >= efficiency(coarse) and fine["attention_mask"].sum() == coarse["attention_mask"].sum()
    with pytest.raises(ConfigError, match="dataset.lengths_per_octave must be one of 1, 2, 4, 8, got 3"):
        DataConfig(lengths_per_octave=3)
