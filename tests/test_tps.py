"""Token-level preference sampling: the branch-point rules, and branches against transformers'
greedy decoding of the branched prefix from scratch."""

import numpy as np
import pytest
import torch
from helpers import left_padded_batch, tiny_hf_model

import ttpa_jax
from ttpa_jax.decode.tps import (
    TPSConfig,
    alternatives,
    plan_branches,
    probability_gaps,
    row_bucket,
    select_branch_points,
    tps,
)

GAPS = [0.5, 0.05, 0.3, 0.01, 0.2]


@pytest.mark.parametrize("kwargs,expected", [
    (dict(epsilon=0.1), [1, 3]),  # the steps under epsilon, in step order
    (dict(epsilon=0.1, dynamic_m=3), [1, 3, 4]),  # only 2 under epsilon: the 3 smallest gaps
    (dict(epsilon=0.1, dynamic_m=2), [1, 3]),  # enough under epsilon: the threshold stands
    (dict(epsilon=0.35, max_points=2), [1, 3]),  # 4 qualify; the cap keeps the smallest gaps
    (dict(epsilon=0.0), []),
    (dict(epsilon=0.0, dynamic_m=1), [3]),
    (dict(epsilon=0.0, dynamic_m=9), [0, 1, 2, 3, 4]),  # m beyond the length: every step
    (dict(epsilon=1.0, dynamic_m=2, max_points=1), [3]),
])
def test_select_branch_points(kwargs, expected):
    assert select_branch_points(GAPS, **kwargs) == expected


def test_select_branch_points_ties_and_empty():
    assert select_branch_points([0.2, 0.1, 0.1, 0.1], epsilon=0.0, dynamic_m=2) == [1, 2]
    assert select_branch_points([], epsilon=0.5, dynamic_m=3) == []


def test_probability_gaps_and_alternatives():
    probs = np.array([[0.5, 0.3, 0.1], [0.4, 0.4, 0.1]])
    np.testing.assert_allclose(probability_gaps(probs), [0.2, 0.0])
    ids = np.array([7, 3, 9])
    assert alternatives(ids, probs[0], greedy_token=7, k=3) == [(3, 1, 0.3), (9, 2, 0.1)]
    assert alternatives(ids, probs[0], greedy_token=7, k=2) == [(3, 1, 0.3)]
    assert alternatives(ids, np.array([1.0, 0.0, 0.0]), greedy_token=7, k=3) == []  # zero probability: no branch
    with pytest.raises(ValueError, match="top_k"):
        TPSConfig(top_k=1)


def test_plan_branches_never_at_eos_and_respects_min_prob_and_eligibility():
    greedy = np.array([5, 6, 7, 2])  # 2 is EOS
    top_ids = np.array([[5, 8, 9], [6, 2, 9], [7, 8, 9], [2, 4, 9]])
    top_probs = np.array([[0.40, 0.35, 0.20], [0.40, 0.38, 0.01], [0.34, 0.33, 0.02], [0.40, 0.39, 0.2]])
    cfg = TPSConfig(epsilon=0.1, top_k=3, max_branch_points=4, min_alt_prob=0.05)
    gaps, allowed, points, alts = plan_branches(greedy, top_ids, top_probs, cfg, eos_ids=(2,))
    # step 1: its only alternatives are EOS and a 0.01 token; step 3 emits EOS.
    assert allowed.tolist() == [True, False, True, False] and points == [0, 2]
    assert alts == [(0, 8, 1, 0.35), (0, 9, 2, 0.20), (2, 8, 1, 0.33)]  # k = 3: two alternatives at step 0
    _, allowed, points, _ = plan_branches(greedy, top_ids, top_probs, cfg, (2,), np.array([False, True, True, True]))
    assert points == [2]  # outside the eligible steps nothing branches
    # The dynamic threshold takes the m smallest gaps among allowed steps only.
    wide = TPSConfig(epsilon=0.0, top_k=3, dynamic_m=3, min_alt_prob=0.0)  # step 1 keeps its 0.01 token
    assert plan_branches(greedy, top_ids, top_probs, wide, eos_ids=(2,))[2] == [0, 1, 2]


def test_row_bucket():
    assert [row_bucket(n, 32) for n in (1, 2, 3, 5, 17, 32)] == [1, 2, 4, 8, 32, 32]
    assert row_bucket(5, 6) == 6 and row_bucket(7, 4) == 7


def hf_continue(hf, prefix, n):
    """transformers' greedy continuation of an unpadded prefix (stops after EOS id 1)."""
    with torch.no_grad():
        out = hf.generate(torch.tensor([prefix]), attention_mask=torch.ones(1, len(prefix), dtype=torch.long),
                          max_new_tokens=n, do_sample=False, eos_token_id=1, pad_token_id=0)
    return out[0, len(prefix):].tolist()


def test_tps_branches_equal_decoding_the_branched_prefix(tmp_path):
    hf = tiny_hf_model("qwen2", seed=1)
    hf.save_pretrained(tmp_path)
    model = ttpa_jax.load_pretrained(tmp_path)
    ids, mask = left_padded_batch(96, [12, 7, 3], seed=5)
    prompts = [ids[b][mask[b] == 1].tolist() for b in range(3)]
    n_new = 10
    cfg = TPSConfig(epsilon=0.0, top_k=3, dynamic_m=2, max_branch_points=4, min_alt_prob=0.0)
    results = tps(model, prompts, max_new_tokens=n_new, config=cfg, batch_size=2)  # 2 batches, the last padded
    assert len(results) == 3
    for prompt, res in zip(prompts, results):
        assert res.greedy == hf_continue(hf, prompt, n_new)
        assert len(res.gaps) == len(res.greedy) and (res.gaps >= 0).all()
        assert res.branch_points == sorted(np.argsort(res.gaps, kind="stable")[:2].tolist())
        assert len(res.branches) == 2 * 2  # 2 points x (top_k - 1) alternatives
        for b in res.branches:
            p = b.position
            assert p in res.branch_points and b.gap == pytest.approx(res.gaps[p])
            assert b.tokens[:p] == res.greedy[:p]  # shared prefix
            assert b.tokens[p] == b.token_id != res.greedy[p] and b.rank in (1, 2)
            assert b.tokens[p + 1:] == hf_continue(hf, prompt + b.tokens[: p + 1], n_new - p - 1)
        assert len({(b.position, b.token_id) for b in res.branches}) == 4  # distinct alternatives
