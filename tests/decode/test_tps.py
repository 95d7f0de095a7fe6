"""Token-level preference sampling: the branch-point rules, and branches against transformers'
greedy decoding of the branched prefix from scratch."""

import numpy as np
import pytest
import torch
from helpers import left_padded_batch, tiny_hf_model

import ttpa_jax
from ttpa_jax.decode.batching import collect
from ttpa_jax.decode.tps import (
    TPSConfig,
    alternatives,
    iter_anchored,
    plan_anchored,
    plan_branches,
    probability_gaps,
    row_bucket,
    select_anchor_points,
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


@pytest.mark.parametrize("kwargs,expected", [
    (dict(epsilon=0.1), [1, 2, 3]),  # mismatches (step 2) and gaps under epsilon
    (dict(epsilon=0.0), [2]),  # a mismatch needs no small gap
    (dict(epsilon=0.0, dynamic_m=3), [1, 2, 3]),  # mismatch first, then the smallest gaps
    (dict(epsilon=0.35, max_points=2), [2, 3]),  # the cap keeps the mismatch, then the smallest gap
    (dict(epsilon=1.0, allowed=[True, True, False, True, True]), [0, 1, 3, 4]),
])
def test_select_anchor_points(kwargs, expected):
    mismatch = [False, False, True, False, False]
    assert select_anchor_points(GAPS, mismatch, **kwargs) == expected


def test_plan_anchored_alternative_is_the_models_top_token_other_than_gold():
    gold = np.array([5, 6, 7, 2])  # 2 is EOS
    top_ids = np.array([[5, 8, 9], [4, 6, 9], [2, 7, 9], [2, 4, 9]])  # step 1: top-1 4 is not the gold 6
    top_probs = np.array([[0.40, 0.35, 0.2], [0.5, 0.3, 0.1], [0.34, 0.33, 0.02], [0.40, 0.39, 0.2]])
    cfg = TPSConfig(epsilon=0.1, max_branch_points=4, min_alt_prob=0.0)
    gaps, mismatch, allowed, points, alts = plan_anchored(gold, top_ids, top_probs, cfg, eos_ids=(2,))
    assert mismatch.tolist() == [False, True, True, False]
    # step 2: the top-1 is EOS and the top-2 the gold token: no alternative; step 3 is the gold EOS.
    assert allowed.tolist() == [True, True, False, False] and points == [0, 1]
    assert alts == [(0, 8, 1, 0.35), (1, 4, 0, 0.5)]  # the top-2 where top-1 is gold, else the top-1
    assert plan_anchored(gold, top_ids, top_probs, cfg, (2,), np.array([False, True, True, True]))[3] == [1]
    strict = TPSConfig(epsilon=0.1, min_alt_prob=0.4)  # step 0's alternative (0.35) is too unlikely
    assert plan_anchored(gold, top_ids, top_probs, strict, eos_ids=(2,))[3] == [1]


def hf_top2(hf, ids):
    with torch.no_grad():
        probs = torch.softmax(hf(torch.tensor([ids])).logits[0, -1].float(), -1)
    p, i = torch.topk(probs, 2)
    return i.tolist(), p.tolist()


@pytest.mark.parametrize("n_new", [10, 24])  # 10: the longest gold is cut to the budget; 24: 16 of 24 steps read
def test_anchored_branches_fork_the_teacher_forced_gold(tmp_path, n_new):
    """The model reads the gold completion once; each branch keeps the gold prefix, takes the model's
    alternative there (as transformers ranks the next token after that prefix) and continues as
    transformers' greedy decoding of it would."""
    hf = tiny_hf_model("qwen2", seed=1)
    hf.save_pretrained(tmp_path)
    model = ttpa_jax.load_pretrained(tmp_path)
    ids, mask = left_padded_batch(96, [12, 7, 3], seed=5)
    prompts = [ids[b][mask[b] == 1].tolist() for b in range(3)]
    rng = np.random.RandomState(3)
    golds = [rng.randint(2, 96, n).tolist() + [1] for n in (6, 9, 30)]  # ends with EOS (id 1)
    cfg = TPSConfig(epsilon=0.0, dynamic_m=3, max_branch_points=3, min_alt_prob=0.0)
    eligible = lambda i, g: np.arange(len(g)) >= 1  # noqa: E731 - never the first step
    results = collect(iter_anchored(model, prompts, golds, max_new_tokens=n_new, config=cfg, batch_size=2,
                                    eligible=eligible), 3)
    for prompt, gold, res in zip(prompts, golds, results):
        assert res.anchor == gold[:n_new]
        for s in range(len(res.anchor)):
            top, probs = hf_top2(hf, prompt + gold[:s])
            assert res.mismatch[s] == (top[0] != gold[s])
            assert res.gaps[s] == pytest.approx(probs[0] - probs[1], abs=1e-4)
        allowed = [s >= 1 and gold[s] != 1 for s in range(len(res.anchor))]
        assert res.branch_points == select_anchor_points(res.gaps, res.mismatch, 0.0, 3, 3, allowed)
        assert len(res.branches) == len(res.branch_points) == 3 and 0 not in res.branch_points
        for b in res.branches:
            p = b.position
            top, _ = hf_top2(hf, prompt + gold[:p])
            assert b.tokens[:p] == gold[:p] and b.tokens[p] == b.token_id != gold[p]
            assert b.token_id == (top[0] if top[0] != gold[p] else top[1]) and b.rank == (top[0] == gold[p])
            rest = n_new - p - 1  # a branch at the budget's last step has no continuation
            assert b.tokens[p + 1:] == (hf_continue(hf, prompt + b.tokens[: p + 1], rest) if rest else [])
