"""The workloads the benchmarks share: model presets (transformers configs of random checkpoints), their
FLOP counts, the machine's matmul peak, and synthetic tool-shaped batches (SFT records and TPS-like
preference pairs) or records read from a run's tokenized file."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import torch

from ttpa_bench.report import best_time

PRESETS = {  # transformers configs; llama-22m is the decoding benchmark's checkpoint
    "llama-22m": dict(family="llama", vocab_size=32000, hidden_size=384, intermediate_size=1024, num_hidden_layers=6,
                      num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=True, rope_theta=500000.0),
    "qwen2-55m": dict(family="qwen2", vocab_size=32000, hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                      num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False),
    # Qwen2.5-0.5B / 1.5B shapes (random weights): the GPU presets
    "qwen2.5-0.5b": dict(family="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True, rope_theta=1000000.0),
    "qwen2.5-1.5b": dict(family="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True, rope_theta=1000000.0),
}


def projections(cfg: dict) -> list[tuple[int, int]]:
    """(in, out) of a decoder layer's projections: q, k, v, o, gate, up, down."""
    D, F = cfg["hidden_size"], cfg["intermediate_size"]
    KH = cfg["num_key_value_heads"] * D // cfg["num_attention_heads"]
    return [(D, D), (D, KH), (D, KH), (D, D), (D, F), (D, F), (F, D)]


def step_flops(cfg: dict, n_seq: int, seq_len: int, rank: int, dpo: bool) -> tuple[float, float, float]:
    """Model FLOPs of one LoRA step: (total, matmul part, attention part).

    Forward: 2 FLOPs per matmul weight per token (projections, the LoRA A and B, the LM head; not the
    embedding lookup) plus attention's QK^T and PV, 4*T^2*D per sequence and layer halved for the
    causal mask (D = heads * head dim). Backward: the frozen base needs activation gradients only
    (1x its forward), the adapters activation and weight gradients (2x), attention 2x. The DPO
    reference pass is one more forward of the base. Norms, softmax and elementwise work are not counted.
    """
    D, L, V = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    shapes = projections(cfg)
    base = L * sum(i * o for i, o in shapes) + V * D
    lora = L * sum(rank * (i + o) for i, o in shapes)
    tokens = n_seq * seq_len
    attn = L * n_seq * 4 * seq_len**2 * D / 2
    fwd_mm = 2 * (base + lora) * tokens
    bwd_mm = 2 * base * tokens + 4 * lora * tokens
    ref_mm = 2 * base * tokens if dpo else 0
    mm = fwd_mm + bwd_mm + ref_mm
    att = attn * (1 + 2 + (1 if dpo else 0))
    return mm + att, mm, att


def measured_peak(dtype: str) -> tuple[float, str]:
    """Best FLOP/s of a 2048^3 matmul in jax and in torch (fastest of 5 runs after a warm-up: the
    peak is what the cores reach when other work leaves them alone)."""
    n = 2048
    a = np.random.RandomState(0).standard_normal((n, n)).astype(np.float32)
    ja = jnp.asarray(a, dtype)
    mm = jax.jit(lambda x: x @ x)
    ta = torch.from_numpy(a).to(getattr(torch, dtype))
    t_jax, t_torch = best_time(lambda: mm(ja).block_until_ready()), best_time(lambda: ta @ ta)
    best = min(t_jax, t_torch)
    who = "jax" if t_jax <= t_torch else "torch"
    note = (f"measured: {n}x{n} {dtype} matmul, jax {2 * n**3 / t_jax / 1e9:.0f} / torch "
            f"{2 * n**3 / t_torch / 1e9:.0f} GFLOP/s, best ({who}) used")
    return 2 * n**3 / best, note


def device_peak(peak_tflops: float | None, dtype: str) -> tuple[float, str]:
    """The matmul peak FLOP/s a fraction is taken of: the datasheet's (``--peak-tflops``) or ``measured_peak``."""
    if peak_tflops:
        return peak_tflops * 1e12, "given with --peak-tflops"
    return measured_peak(dtype)


def pairs(rng, n, prompt, vocab, per_prompt=1):
    """Tool-shaped preference examples as TPS makes them: ``per_prompt`` pairs per prompt (the last
    prompt may have fewer), each the prompt's gold completion (20-80 tokens) as the chosen side and, as
    the rejected side, the gold completion up to a branch point 4-16 tokens in, then a sampled tail of
    its own; weights 1 on completion tokens."""
    out = []
    for g in range(-(-n // per_prompt)):
        p = prompt + int(rng.integers(-40, 40))
        gold = rng.integers(3, vocab, p + int(rng.integers(20, 80))).astype(np.int32)
        for _ in range(min(per_prompt, n - g * per_prompt)):
            fork = p + int(rng.integers(4, 16))
            tail = rng.integers(3, vocab, int(rng.integers(12, 64))).astype(np.int32)
            tail[0] = 3 + (gold[fork] - 2) % (vocab - 3)  # differs from the gold token at the branch point
            ex = {}
            for side, ids in (("chosen", gold), ("rejected", np.concatenate([gold[:fork], tail]))):
                ex[f"{side}_ids"], ex[f"{side}_weights"] = ids, (np.arange(len(ids)) >= p).astype(np.float32)
            out.append(ex)
    return out


def records(rng, n, prompt, vocab):
    out = []
    for _ in range(n):
        p, c = prompt + int(rng.integers(-120, 120)), int(rng.integers(20, 80))
        ids = rng.integers(3, vocab, p + c).astype(np.int32)
        out.append({"input_ids": ids, "weights": (np.arange(p + c) >= p).astype(np.float32)})
    return out


def run_records(path, n, rng):
    """``n`` records drawn from a run's tokenized SFT file (ids and loss weights as ``train`` wrote them)."""
    from ttpa_jax.train.example_proto import decode_example
    from ttpa_jax.train.recordio import open_source

    src = open_source(path, "tfrecord" if str(path).endswith(".tfrecord") else "arrayrecord")
    picks = rng.choice(len(src), size=min(n, len(src)), replace=False)
    return [{k: decode_example(src[int(i)])[k] for k in ("input_ids", "weights")} for i in sorted(picks)]


def to_longest(batch):
    """A rows batch (``TokenRows`` / ``PairRows``) cut to its longest real row, as the PyTorch side gets
    it (TRL's collator pads to the longest, no buckets): its [B, L] fields cut, the scored columns
    dropped (TRL scores every column)."""
    masks = batch.masks()
    L, n = masks[0].shape[1], max(int(np.asarray(m).sum(-1).max()) for m in masks)
    cut = {f.name: v[:, :n] for f in dataclasses.fields(batch)
           if (v := getattr(batch, f.name)) is not None and v.ndim == 2 and v.shape[1] == L and f.name != "score_cols"}
    return batch.replace(**cut, **({"score_cols": None} if hasattr(batch, "score_cols") else {}))
