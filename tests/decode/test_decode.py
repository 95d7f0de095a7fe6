"""Batched decoding against transformers' generate, stop rules, sampling, and continuing from a
forked cache."""

import jax
import numpy as np
import pytest
import torch
from helpers import left_padded_batch, tiny_hf_model

import ttpa_jax
from ttpa_jax.decode.loop import _prefill_and_decode, continue_decoding, generate, prompt_bucket, round_up, stop_hits
from ttpa_jax.decode.rules import Sampling, top_k_filter, top_p_filter
from ttpa_jax.text.prompts import left_pad

N_NEW = 10


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    hf = tiny_hf_model("qwen2", seed=1)
    d = tmp_path_factory.mktemp("qwen")
    hf.save_pretrained(d)
    return hf, ttpa_jax.load_pretrained(d)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    hf = tiny_hf_model("llama", tie=True, seed=2)
    d = tmp_path_factory.mktemp("llama")
    hf.save_pretrained(d)
    return hf, ttpa_jax.load_pretrained(d)


def hf_greedy(hf, ids, mask, n):
    """transformers' greedy tokens [B, n] and softmax of its logits [B, n, V] (no EOS stop)."""
    with torch.no_grad():
        out = hf.generate(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask, dtype=torch.long),
                          max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0,
                          return_dict_in_generate=True, output_logits=True)
    probs = torch.softmax(torch.stack(out.logits, 1).float(), -1).numpy()
    return out.sequences[:, ids.shape[1]:].numpy(), probs


@pytest.mark.parametrize("family,lengths", [("qwen2", [12, 7, 3]), ("llama", [21, 9, 4])])
def test_greedy_and_top2_match_transformers(request, family, lengths):
    hf, model = request.getfixturevalue("qwen" if family == "qwen2" else "llama")
    ids, mask = left_padded_batch(96, lengths, seed=5)
    ref_tokens, ref_probs = hf_greedy(hf, ids, mask, N_NEW)
    res = generate(model, ids, mask, max_new_tokens=N_NEW, eos_ids=())
    np.testing.assert_array_equal(res.tokens, ref_tokens)
    np.testing.assert_array_equal(res.lengths, [N_NEW] * len(lengths))
    top_p, top_i = torch.topk(torch.tensor(ref_probs), 2, -1)
    np.testing.assert_allclose(res.top_probs[..., 0], top_p[..., 0].numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(res.top_probs[..., 1], top_p[..., 1].numpy(), atol=1e-5, rtol=0)
    np.testing.assert_array_equal(res.top_ids[..., 0], top_i[..., 0].numpy())
    np.testing.assert_array_equal(res.top_ids[..., 1], top_i[..., 1].numpy())
    np.testing.assert_array_equal(res.top_ids[..., 0], res.tokens)  # greedy picks the top-1 token


def test_prompt_lengths_in_one_bucket_share_a_compiled_loop(qwen):
    _, model = qwen
    ids, mask = left_padded_batch(96, [12, 7, 3], seed=5)
    generate(model, ids, mask, max_new_tokens=N_NEW, eos_ids=())
    before = _prefill_and_decode._cache_size()
    ids2, mask2 = left_padded_batch(96, [20, 2, 5], seed=6)  # width 20 instead of 12: same bucket of 32
    generate(model, ids2, mask2, max_new_tokens=N_NEW, eos_ids=())
    assert _prefill_and_decode._cache_size() == before


def test_prompt_bucket():
    assert [prompt_bucket(n, 32) for n in (1, 12, 32, 33, 100, 257, 500, 1000, 1025, 3000)] == \
        [32, 32, 32, 64, 128, 320, 512, 1024, 1280, 3072]
    assert all(n <= prompt_bucket(n, 32) <= max(round_up(n, 32), 1.25 * n) for n in range(1, 9000))
    assert len({prompt_bucket(n, 32) for n in range(2049, 4097)}) == 4  # 4 widths per doubling


def expected_stop(tokens, eos, seqs):
    """Reference: length of a row decoded without stops once EOS ids / stop sequences apply."""
    for s, tok in enumerate(tokens):
        if tok in eos or any(s + 1 >= len(q) and tuple(tokens[s + 1 - len(q): s + 1]) == q for q in seqs):
            return s + 1
    return len(tokens)


def test_eos_and_stop_sequences_end_rows(qwen):
    _, model = qwen
    ids, mask = left_padded_batch(96, [12, 7, 3, 9], seed=5)
    free = generate(model, ids, mask, max_new_tokens=N_NEW, eos_ids=())
    eos = (int(free.tokens[0, 4]),)
    seqs = (tuple(int(t) for t in free.tokens[1, 2:4]), tuple(int(t) for t in free.tokens[3, 5:8]))
    res = generate(model, ids, mask, max_new_tokens=N_NEW, eos_ids=eos, stop_token_seqs=seqs)
    for b in range(len(ids)):
        n = expected_stop(free.tokens[b].tolist(), eos, seqs)
        assert res.lengths[b] == n
        np.testing.assert_array_equal(res.tokens[b, :n], free.tokens[b, :n])
        assert (res.tokens[b, n:] == model.config.pad_token_id).all()
        np.testing.assert_allclose(res.top_probs[b, :n], free.top_probs[b, :n], atol=1e-6)
        assert (res.top_probs[b, n:] == 0).all()
    assert res.lengths[0] <= 5 and res.lengths[1] <= 4 and res.lengths[3] <= 8


def test_stop_hits_windows():
    tokens = jax.numpy.asarray([[5, 6, 7, 8], [6, 7, 0, 0], [7, 7, 7, 7]])
    step = jax.numpy.asarray([2, 1, 0])
    hits = np.asarray(stop_hits(tokens, step, ((6, 7), (7,))))
    np.testing.assert_array_equal(hits, [True, True, True])
    hits = np.asarray(stop_hits(tokens, step, ((6, 7),)))
    np.testing.assert_array_equal(hits, [True, True, False])  # row 2: too early for a 2-token window


def test_sampling_is_reproducible_for_a_key(qwen):
    _, model = qwen
    ids, mask = left_padded_batch(96, [12, 7, 3], seed=5)
    s = Sampling(temperature=1.0, top_k=40, top_p=0.95)
    a = generate(model, ids, mask, max_new_tokens=N_NEW, sampling=s, key=jax.random.key(3), eos_ids=())
    b = generate(model, ids, mask, max_new_tokens=N_NEW, sampling=s, key=jax.random.key(3), eos_ids=())
    c = generate(model, ids, mask, max_new_tokens=N_NEW, sampling=s, key=jax.random.key(4), eos_ids=())
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert (a.tokens != c.tokens).any()
    assert (a.tokens != a.top_ids[..., 0]).any()  # it did sample, not argmax
    # A row's draws depend only on its own key: reversing the rows (and their keys) reverses the output.
    keys = jax.random.split(jax.random.key(3), 3)
    r = generate(model, ids[::-1], mask[::-1], max_new_tokens=N_NEW, sampling=s, key=keys[::-1], eos_ids=())
    np.testing.assert_array_equal(r.tokens[::-1], a.tokens)


def test_top_k_and_top_p_filters():
    logits = jax.numpy.log(jax.numpy.asarray([[0.5, 0.05, 0.3, 0.15], [0.25, 0.25, 0.25, 0.25]]))
    k2 = np.isfinite(np.asarray(top_k_filter(logits, 2)))
    np.testing.assert_array_equal(k2[0], [True, False, True, False])
    p = np.isfinite(np.asarray(top_p_filter(logits, 0.75)))
    np.testing.assert_array_equal(p[0], [True, False, True, False])  # 0.5 + 0.3 reaches 0.75
    p = np.isfinite(np.asarray(top_p_filter(logits, 0.5)))
    np.testing.assert_array_equal(p[0], [True, False, False, False])  # 0.5 alone reaches 0.5
    p = np.isfinite(np.asarray(top_p_filter(logits, 0.1)))
    np.testing.assert_array_equal(p[0], [True, False, False, False])  # never empty
    np.testing.assert_array_equal(np.isfinite(np.asarray(top_k_filter(logits, 0))), True)
    with pytest.raises(ValueError, match="top_p"):
        Sampling(temperature=1.0, top_p=0.0)


def test_branch_from_forked_cache_equals_decoding_the_prefix_from_scratch(qwen):
    _, model = qwen
    ids, mask = left_padded_batch(96, [12, 7, 3], seed=5)
    base = generate(model, ids, mask, max_new_tokens=N_NEW, eos_ids=(), record_k=3, keep_cache=True)
    rows, steps, ranks = [0, 1, 2, 0, 2], [3, 0, 6, 8, 1], [1, 1, 2, 2, 1]
    forced = [int(base.top_ids[r, s, k]) for r, s, k in zip(rows, steps, ranks)]
    br = continue_decoding(model, base, rows, steps, forced, eos_ids=(), pad_rows_to=8)
    assert br.tokens.shape == (5, N_NEW) and (br.lengths == N_NEW).all()
    prompts = [ids[r][mask[r] == 1].tolist() + base.tokens[r, :s].tolist() + [t] for r, s, t in zip(rows, steps, forced)]
    p_ids, p_mask = left_pad(prompts, 0)
    scratch = generate(model, p_ids, p_mask, max_new_tokens=N_NEW, eos_ids=(), record_k=3)
    for j, (r, s, t) in enumerate(zip(rows, steps, forced)):
        np.testing.assert_array_equal(br.tokens[j, :s], base.tokens[r, :s])  # the shared prefix
        assert br.tokens[j, s] == t
        np.testing.assert_allclose(br.top_probs[j, : s + 1], base.top_probs[r, : s + 1])  # copied, not recomputed
        rest = N_NEW - s - 1
        np.testing.assert_array_equal(br.tokens[j, s + 1:], scratch.tokens[j, :rest])
        np.testing.assert_allclose(br.top_probs[j, s + 1:], scratch.top_probs[j, :rest], atol=1e-5)
        np.testing.assert_array_equal(br.top_ids[j, s + 1:], scratch.top_ids[j, :rest])


def test_branch_rows_stop_on_their_own(qwen):
    _, model = qwen
    ids, mask = left_padded_batch(96, [12, 7, 3], seed=5)
    base = generate(model, ids, mask, max_new_tokens=N_NEW, eos_ids=(), keep_cache=True)
    forced = [int(base.top_ids[0, 2, 1]), int(base.top_ids[1, 5, 1])]
    free = continue_decoding(model, base, [0, 1], [2, 5], forced, eos_ids=())
    eos = (int(free.tokens[0, 6]),)  # a token the first branch makes after its branch point
    res = continue_decoding(model, base, [0, 1], [2, 5], forced, eos_ids=eos)
    for j, s in enumerate([2, 5]):
        n = s + expected_stop(free.tokens[j, s:].tolist(), eos, ())  # the forced token counts too
        assert res.lengths[j] == n
        np.testing.assert_array_equal(res.tokens[j, :n], free.tokens[j, :n])
    assert res.lengths[0] <= 7
    with pytest.raises(ValueError, match="within the decoded length"):
        continue_decoding(model, base, [0], [N_NEW], [1])
    with pytest.raises(ValueError, match="keep_cache"):
        continue_decoding(model, generate(model, ids, mask, max_new_tokens=N_NEW, eos_ids=()), [0], [1], [1])


def test_shared_prefill_equals_decoding_each_prompt_alone(qwen):
    """Rows reading prefixes of two conversations (one prefill each) decode as their own prompts do,
    and branches from the shared cache equal branches from the separate one."""
    _, model = qwen
    convs, conv_mask = left_padded_batch(96, [23, 15], seed=7)
    real = [convs[u][conv_mask[u] == 1].tolist() for u in range(2)]
    conv, lengths = [0, 0, 1, 0, 1], [23, 9, 15, 16, 4]
    ids, mask = left_pad([real[u][:n] for u, n in zip(conv, lengths)], 0)
    alone = generate(model, ids, mask, max_new_tokens=N_NEW, eos_ids=(), record_k=3, keep_cache=True)
    shared = generate(model, convs, conv_mask, conv=conv, lengths=lengths, max_new_tokens=N_NEW, eos_ids=(),
                      record_k=3, keep_cache=True)
    np.testing.assert_array_equal(shared.tokens, alone.tokens)
    np.testing.assert_allclose(shared.top_probs, alone.top_probs, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(shared.top_ids, alone.top_ids)
    rows, steps = [1, 3, 4], [2, 0, 5]
    forced = [int(alone.top_ids[r, s, 1]) for r, s in zip(rows, steps)]
    a = continue_decoding(model, alone, rows, steps, forced, eos_ids=())
    b = continue_decoding(model, shared, rows, steps, forced, eos_ids=())
    np.testing.assert_array_equal(b.tokens, a.tokens)
    np.testing.assert_allclose(b.top_probs, a.top_probs, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="between 1 and its conversation's length"):
        generate(model, convs, conv_mask, conv=[1], lengths=[16], max_new_tokens=N_NEW)
