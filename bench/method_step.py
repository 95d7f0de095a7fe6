"""The method's training steps on the real base model, tool-shaped data, one process:

- DPO: our shared-prefix step (what a prompt's pairs share run once, ``--shared-prefix``) vs our
  concatenated step (2B full rows) vs the PyTorch reference (transformers + peft, TRL's loss
  computation; its batch padded to the longest row as TRL's collator does), the same pairs: a
  ~700-token tool prompt, then the gold completion (chosen) and a branch of it (rejected), with one
  pair per prompt and with several (TPS makes one per branch point, all with the gold chosen side);
- SFT: our packed step (``--dataset.pack``) vs one record per row (bucket lengths, as ``train``
  pads) vs PyTorch, the same records: random ones shaped like tool records, or with ``--sft-data``
  records a run tokenized (``RUN_DIR/data/sft.arrayrecord``: real tool conversations);
- each as a fraction of this machine's measured fp32 matmul peak (model FLOPs of the real tokens),
  with the measured memory bandwidth printed alongside.

    python bench/method_step.py                       # SmolLM2-135M-Instruct, all 30 layers
    python bench/method_step.py --layers 8            # its first 8 layers (real weights): less memory
    python bench/method_step.py --skip-dpo --records 3 --sft-data runs/demo/sft/data/sft.arrayrecord
    python bench/method_step.py --preset qwen2.5-0.5b --dtype bfloat16 --peak-tflops 989 --pairs 8   # a GPU

Timings are medians of alternating runs (the sides see the same machine load); each ratio also prints
its range over the rounds, how much the machine moved during the run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

from ttpa_jax.cpu import tune
from ttpa_jax.cpu.malloc import release_free_memory

tune()  # as the trainer does, before jax starts its threads

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ttpa_bench import report, sides  # noqa: E402
from ttpa_bench import workloads as wl  # noqa: E402
from ttpa_jax.model import transformer  # noqa: E402
from ttpa_jax.train.batches import PairRows, SharedPrefixPairs  # noqa: E402
from ttpa_jax.train.loader import collate  # noqa: E402
from ttpa_jax.train.packing import LENGTHS_PER_OCTAVE, efficiency  # noqa: E402


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct", help="base model name, GGUF or HF directory")
    ap.add_argument("--preset", choices=sorted(wl.PRESETS), default=None,
                    help="a random model of this shape instead of --model (the GPU figures: qwen2.5-0.5b / 1.5b)")
    ap.add_argument("--layers", type=int, default=0, help="keep the first N decoder layers (0: all)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                    help="compute dtype and dtype of the frozen base, both sides (adapters stay float32)")
    ap.add_argument("--peak-tflops", type=float, help="device peak for the fractions (default: measured matmul)")
    ap.add_argument("--pairs", type=int, default=2,
                    help="preference pairs per DPO step (the rows step of 2 pairs holds 8 GiB at 30 layers)")
    ap.add_argument("--pairs-per-prompt", type=int, nargs="+", default=[1, 2],
                    help="pairs sharing a prompt and their gold chosen side, one DPO run per value (TPS "
                         "made 42 pairs from 17 prompts in the ablation's audit: 2.5 per prompt)")
    ap.add_argument("--records", type=int, default=4, help="records per SFT step")
    ap.add_argument("--sft-data", default=None,
                    help="a run's tokenized SFT records (RUN_DIR/data/sft.arrayrecord or .tfrecord): the SFT step "
                         "takes --records of them, drawn at random, instead of random token records")
    ap.add_argument("--prompt", type=int, default=700, help="prompt tokens (tool schemas + query)")
    ap.add_argument("--steps", type=int, default=2, help="timed steps per side (median)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--logits-chunk", type=int, default=256)
    ap.add_argument("--row-length", type=int, default=0,
                    help="longest packed / shared-prefix row in tokens (train's --dataset.row-length; 0: 4096, "
                         "the shape then chosen as train chooses it)")
    ap.add_argument("--attention-block", type=int, default=0,
                    help="attention tile size of our steps (0: the model's default, attention.DEFAULT_BLOCK)")
    ap.add_argument("--lengths-per-octave", type=int, default=2, choices=LENGTHS_PER_OCTAVE,
                    help="row lengths per doubling for the packed and shared-prefix layouts "
                         "(--dataset.lengths-per-octave; one-sequence-per-row batches keep powers of two)")
    ap.add_argument("--skip-sft", action="store_true")
    ap.add_argument("--skip-dpo", action="store_true")
    ap.add_argument("--skip-torch", action="store_true")
    return ap.parse_args()


def our_step(ours, batch, dpo, chunk):
    """A compiled step of ours on this batch -> (step(), compile seconds, temp MiB)."""
    compile_s = ours.compile(batch, dpo, chunk)
    st = {"c": ours.compiled, "t": ours.trainable, "o": ours.opt_state, "b": ours.batch}
    temp = ours.compiled.memory_analysis().temp_size_in_bytes / 2**20
    free = available_mib() if jax.default_backend() == "cpu" else None  # host memory holds a CPU step
    if free is not None and temp > free:
        print(f"method_step: a {'DPO' if dpo else 'SFT'} step of this batch needs {temp / 1024:.1f} GiB of "
              f"temporaries and this machine has {free / 1024:.1f} GiB available: use fewer --pairs / --records, "
              f"or --layers", file=sys.stderr)
        sys.exit(2)

    def step():
        with jax.set_mesh(ours.placement.mesh):
            st["t"], st["o"], m = st["c"](st["t"], ours.frozen, None, st["o"], st["b"], ours.key)
        return float(m["loss"]), float(m["grad_norm"])

    return step, compile_s, temp


def available_mib() -> float | None:
    """MemAvailable from /proc/meminfo in MiB (None where there is none)."""
    try:
        with open("/proc/meminfo") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return None
    return kb / 1024


def flops(cfg, lengths, rank, dpo):
    return sum(wl.step_flops(cfg, 1, n, rank, dpo)[0] for n in lengths)


def run_flops(cfg, batch, rank, dpo):
    """Model FLOPs of the tokens an SFT or shared-prefix DPO step runs (``workloads.step_flops``'s count):
    the decoder's matmuls over its real tokens (the last layer's, but for its keys and values, over the
    scored columns only), the LM head over the columns it scores (``sp_cols`` / ``score_cols``, else
    every real token), attention over the query-key pairs its mask keeps (per segment, a causal trunk,
    then each branch over the trunk and causally over itself)."""
    if isinstance(batch, SharedPrefixPairs):
        seg, branch, cols = batch.sp_segment, batch.sp_branch, batch.sp_cols
    else:  # SFT: packed rows' segments, or one segment per row
        _, seg = batch.segments()
        seg = batch.attention_mask if seg is None else seg
        branch, cols = np.zeros_like(seg), batch.score_cols
    tokens, pairs = 0, 0.0
    for r in range(seg.shape[0]):
        for s in set(seg[r].tolist()) - {0}:
            b = branch[r][seg[r] == s]
            t, sizes = int((b == 0).sum()), np.bincount(b)[1:]
            tokens += len(b)
            pairs += t * t / 2 + float(sum(n * t + n * n / 2 for n in sizes))
    head = (6 if dpo else 4) * cfg["vocab_size"] * cfg["hidden_size"]  # per column: forward, input gradient, reference
    L = cfg["num_hidden_layers"]
    layer = (wl.step_flops(cfg, 1, 1, rank, dpo)[1] - head) / L  # one layer's matmuls per token
    attention = L * 4 * cfg["hidden_size"] * pairs * (3 + dpo)
    if cols is None:
        return layer * L * tokens + head * tokens + attention
    # with scored columns the last layer runs its keys and values at every token, the rest at those columns
    # (its attention is still counted at every query: under 1% of the step)
    shapes = wl.projections(cfg)
    kv = sum(i * o + rank * (i + o) for i, o in shapes[1:3]) / sum(i * o + rank * (i + o) for i, o in shapes)
    scored = int((cols >= 0).sum())
    return layer * ((L - 1 + kv) * tokens + (1 - kv) * scored) + head * scored + attention


def main():
    args = parse_args()
    torch.set_num_threads(report.cores())
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        if args.preset:
            d = tmp
            sides.make_checkpoint(d, dict(wl.PRESETS[args.preset], **(
                {"num_hidden_layers": args.layers} if args.layers else {})))
        else:
            d = report.base_model_dir(args.model, args.layers, tmp)
        hf_cfg = json.load(open(os.path.join(d, "config.json")))
        if args.attention_block:  # read by each attention layer as the model is built
            transformer.DEFAULT_BLOCK = args.attention_block
        ours = sides.Ours(d, 8, args.dtype)
        ref = None if args.skip_torch else sides.Torch(d, 8, args.dtype, ours.lora_a())
    cfg = {k: hf_cfg[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size",
                                  "num_attention_heads", "num_key_value_heads")}
    pad = hf_cfg.get("pad_token_id") or 0
    print(report.machine_line())
    print(f"model: {'random ' + args.preset if args.preset else args.model}" +
          (f", first {args.layers} layers" if args.layers else "") +
          f" ({cfg['num_hidden_layers']} layers, hidden {cfg['hidden_size']}, vocab {cfg['vocab_size']}), {args.dtype}; "
          f"LoRA rank 8 on all 7 projections; --logits-chunk {args.logits_chunk}; malloc tuned (cpu/malloc.py)")
    peak, peak_note = wl.device_peak(args.peak_tflops, args.dtype)
    bw = report.bandwidth()
    report.value("matmul peak", peak / 1e9, "GFLOP/s", peak_note)
    report.value("memory bandwidth (measured)", bw / 1e9, "GB/s", "jitted a * c over 256 MiB, read + write")

    runs = []
    for k in [] if args.skip_dpo else args.pairs_per_prompt:
        exs = wl.pairs(rng, args.pairs, args.prompt, cfg["vocab_size"], k)
        lengths = [len(e[s]) for e in exs for s in ("chosen_ids", "rejected_ids")]
        fast = collate(exs, pad, 64, 4096, layout="shared_prefix", row_length=args.row_length,
                       lengths_per_octave=args.lengths_per_octave)
        runs.append(("DPO", collate(exs, pad, 64, 4096), fast, True,
                     lengths, f"{args.pairs} pairs, {k} per prompt, sequences of {min(lengths)}-{max(lengths)} tokens"))
    if not args.skip_sft:
        recs = (wl.run_records(args.sft_data, args.records, rng) if args.sft_data
                else wl.records(rng, args.records, args.prompt, cfg["vocab_size"]))
        rlen = [len(r["input_ids"]) for r in recs]
        fast = collate(recs, pad, 64, 4096, layout="packed", row_length=args.row_length,
                       lengths_per_octave=args.lengths_per_octave)
        runs.append(("SFT", collate(recs, pad, 64, 4096), fast, False, rlen,
                     f"{args.records} {'records of ' + args.sft_data if args.sft_data else 'records'}, "
                     f"{min(rlen)}-{max(rlen)} tokens"))
    for name, plain, fast, dpo, lens, what in runs:
        fast_name = "shared-prefix" if dpo else "packed"
        f_step, f_comp, f_temp = our_step(ours, fast, dpo, args.logits_chunk)
        p_step, p_comp, p_temp = our_step(ours, plain, dpo, args.logits_chunk)
        fns = [f_step, p_step]
        torch_batch = wl.to_longest(plain)
        if ref is not None:
            fns.append(lambda: ref.step(torch_batch, dpo))
        first = [fn() for fn in fns]  # from equal adapters: the same loss
        rounds = report.alternating_times(fns, args.steps, warmup=max(args.warmup - 1, 0))
        times = [statistics.median(ts) for ts in rounds]
        fl = flops(cfg, lens, 8, dpo)
        tokens = sum(lens)
        print(f"\n{name} step, {what} ({tokens} real tokens; median of {args.steps} after {args.warmup} warm-up); "
              f"first-step loss " + " / ".join(f"{lo:.5f}" for lo, _ in first))
        def shape(b):  # rows x length of the sequences the step runs (a rows DPO batch: chosen and rejected rows)
            if isinstance(b, PairRows):
                R, L = b.chosen_ids.shape
                return f"{2 * R}x{L}"
            return "x".join(map(str, (b.sp_ids if isinstance(b, SharedPrefixPairs) else b.input_ids).shape))
        report.rate(f"ours {fast_name} [{shape(fast)}]", tokens, times[0])
        report.rate(f"ours rows [{shape(plain)}]", tokens, times[1])
        if ref is not None:
            report.rate(f"transformers + peft [{shape(torch_batch)}]", tokens, times[2])
        report.ratio(f"{fast_name} / ours rows", times[1] / times[0], report.round_ratios(rounds[1], rounds[0]))
        if ref is not None:
            report.ratio(f"{fast_name} / transformers", times[2] / times[0], report.round_ratios(rounds[2], rounds[0]))
            report.ratio("ours rows / transformers", times[2] / times[1], report.round_ratios(rounds[2], rounds[1]))
        report.value(f"{fast_name}: slot efficiency", 100 * efficiency(fast), "%", f"rows: {100 * efficiency(plain):.0f}%")
        fast_fl = run_flops(cfg, fast, 8, dpo)
        rows_fl = fl if dpo else run_flops(cfg, plain, 8, dpo)  # SFT rows score the assistant columns too
        report.value("model FLOPs, transformers", fl / 1e9, "GFLOP", "every sequence in full, the LM head on every token")
        report.value(f"model FLOPs, ours {fast_name} / rows", fast_fl / 1e9, "GFLOP",
                     f"rows {rows_fl / 1e9:.0f}: the tokens, LM-head columns and attention pairs each runs")
        for label, f, t in zip([fast_name, "ours rows", "transformers"], [fast_fl, rows_fl, fl], times):
            report.value(f"{label}: of matmul peak", 100 * f / t / peak, "%")
        report.value("ours: step temporaries", f_temp, "MiB", f"{fast_name}; rows {p_temp:.0f} MiB")
        report.value("ours: compile", f_comp, "s", f"rows {p_comp:.0f} s")
        sys.stdout.flush()
        release_free_memory()  # the heap keeps its peak otherwise, and DPO's and SFT's add up (cpu/malloc.py)


if __name__ == "__main__":
    main()
