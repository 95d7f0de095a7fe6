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

import numpy as np
import torch
import transformers

from ttpa_bench import report, sides
from ttpa_bench.workloads import PRESETS, device_peak, step_flops

transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()
warnings.filterwarnings("ignore", category=FutureWarning)

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
