"""Training-step benchmark: our jitted LoRA DPO and SFT steps against the same steps in PyTorch
(transformers + peft), on one random checkpoint, the same batch and the same cores.

The reference step is what TRL's ``DPOTrainer`` computes for a peft model: one forward over the
concatenated chosen + rejected sequences, masked sums of completion log-probs (gather minus
logsumexp), the reference pass with the adapters disabled under ``no_grad``, the sigmoid loss, then
global-norm clipping and AdamW on the adapters. The SFT step is the weighted mean token NLL. Both
sides start from the same adapter weights; the first step's loss and gradient norm are compared.

Throughput counts every token of every sequence in the step (a DPO step of B pairs at length L is
2*B*L tokens; the SFT step uses 2*B sequences, so both steps see the same tokens). Model FLOPs
utilisation (MFU) divides the model FLOPs (``step_flops``) by the step time and the peak: given with
``--peak-tflops``, else the best fp32 FLOP/s a large matmul reaches on this machine (jax or torch).

    python bench/train_step.py            # 2-4 minutes on 2 CPU cores
    python bench/train_step.py --preset qwen2-55m --dtype bfloat16 --peak-tflops 989   # an H100
    python bench/train_step.py --preset qwen2.5-0.5b --dtype bfloat16 --peak-tflops 989 --batch 8 --seq-len 1024
"""

from __future__ import annotations

import argparse
import os
import tempfile
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

import report
from report import best_time
import train_step_sides as sides

transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()
warnings.filterwarnings("ignore", category=FutureWarning)

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
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per side (median reported)")
    ap.add_argument("--warmup", type=int, default=1,
                    help="untimed steps per side (the first compares losses; ours compiles before)")
    ap.add_argument("--batch", type=int, default=2, help="preference pairs per DPO step (SFT: 2x this sequences)")
    ap.add_argument("--seq-len", type=int, default=256, help="tokens per sequence (prompt is the first half)")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="llama-22m")
    ap.add_argument("--layers", type=int, help="override the preset's num_hidden_layers")
    ap.add_argument("--hidden", type=int, help="override hidden_size (intermediate size scales along)")
    ap.add_argument("--vocab", type=int, help="override vocab_size")
    ap.add_argument("--rank", type=int, default=8, help="LoRA rank (alpha = 2 * rank) on all 7 projections")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                    help="compute dtype and dtype of the frozen base (adapters stay float32)")
    ap.add_argument("--peak-tflops", type=float, help="device peak for MFU (default: measured fp32 matmul)")
    ap.add_argument("--threads", type=int, help="cores for both sides (default: all this process may use)")
    ap.add_argument("--logits-chunk", type=int, default=0,
                    help="our LM head over this many positions at a time (as train --logits-chunk; 0: whole sequence)")
    ap.add_argument("--skip-sft", action="store_true", help="time the DPO step only")
    return ap.parse_args()


def model_config(args) -> dict:
    cfg = dict(PRESETS[args.preset])
    if args.hidden:
        scale = args.hidden / cfg["hidden_size"]
        cfg.update(hidden_size=args.hidden, intermediate_size=int(cfg["intermediate_size"] * scale) // 64 * 64)
    if args.layers:
        cfg["num_hidden_layers"] = args.layers
    if args.vocab:
        cfg["vocab_size"] = args.vocab
    return cfg


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


def main() -> None:
    args = parse_args()
    if args.threads:  # before jax's first use: XLA sizes its thread pool from the affinity mask
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.threads])
    torch.set_num_threads(report.cores())
    cfg = model_config(args)
    n_seq = 2 * args.batch
    with tempfile.TemporaryDirectory() as d:
        n_params = sides.make_checkpoint(d, cfg)
        ours = sides.Ours(d, args.rank, args.dtype)
        ref = sides.Torch(d, args.rank, args.dtype, ours.lora_a())
    print(report.machine_line())
    print(f"model: random {cfg['family']}, {n_params / 1e6:.1f}M parameters, {args.dtype}; LoRA rank {args.rank}, "
          f"alpha {2 * args.rank}, all 7 projections; AdamW, clip 1.0")
    peak, peak_note = device_peak(args.peak_tflops, args.dtype)

    rng = np.random.RandomState(0)
    pairs = sides.preference_batch(rng, args.batch, args.seq_len, cfg["vocab_size"])
    runs = [("DPO", f"{args.batch} pairs", True, pairs)]
    if not args.skip_sft:
        runs.append(("SFT", f"{n_seq} sequences", False, sides.sft_batch(rng, n_seq, args.seq_len, cfg["vocab_size"])))
    for name, what, dpo, batch in runs:
        compile_s = ours.compile(batch, dpo, args.logits_chunk)
        (loss_a, gn_a), (loss_b, gn_b) = ours.step(), ref.step(batch, dpo)  # first step from equal weights
        t_ours, t_ref = report.median_times([ours.step, lambda: ref.step(batch, dpo)], args.steps,
                                            warmup=max(args.warmup - 1, 0))
        tokens = n_seq * args.seq_len
        flops, mm, att = step_flops(cfg, n_seq, args.seq_len, args.rank, dpo)
        print(f"\n{name} step, {what} x {args.seq_len} tokens ({tokens} tokens/step; median of {args.steps} after "
              f"{args.warmup} warm-up); first step loss {loss_a:.5f} vs {loss_b:.5f}, grad norm {gn_a:.4g} vs {gn_b:.4g}")
        report.rate("ttpa_jax make_train_step", tokens, t_ours)
        report.rate("transformers + peft", tokens, t_ref)
        report.ratio("ratio (ours / transformers)", t_ref / t_ours)
        report.value("ours: compile", compile_s, "s")
        report.value("ours: step temporaries", ours.temp_bytes() / 2**20, "MiB",
                     f"--logits-chunk {args.logits_chunk}" if args.logits_chunk else "whole-sequence LM head")
        report.value("model FLOPs per step", flops / 1e9, "GFLOP", f"matmuls {mm / 1e9:.1f}, attention {att / 1e9:.1f}")
        report.value("ours: MFU", 100 * flops / t_ours / peak, "%", f"of {peak / 1e9:.0f} GFLOP/s peak, {peak_note}")
        report.value("transformers + peft: MFU", 100 * flops / t_ref / peak, "%")


if __name__ == "__main__":
    main()
