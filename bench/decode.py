"""Decoding benchmark: our jitted greedy decode against transformers' ``generate``, and TPS branching
from a forked KV cache against branching by re-prefilling every branched prefix.

By default a random checkpoint of ``--preset``'s shape made with transformers (``ttpa_bench.workloads.PRESETS``:
llama-22m, a ~22M Llama 3; qwen2.5-0.5b / 1.5b for a GPU), saved to a temp dir; ``--model`` takes a
real one (a base model name, FILE.gguf or HF directory), with tool-shaped prompts (``--prompt-len``,
~700 tokens: a system prompt with tool schemas). Both sides decode the same left-padded batch with no
EOS stop (every row runs the full budget), at each ``--batch``. Timings are medians of several runs
after a warm-up run (which also compiles). Prints ratios, and our prefill as a fraction of the matmul
peak and our decode steps as a fraction of the memory bandwidth (each step reads every weight and the
KV cache once): measured here, or the datasheet's with ``--peak-tflops`` / ``--peak-gbps``.

    python bench/decode.py                                   # about 2-3 minutes on 2 CPU cores
    python bench/decode.py --model smollm2-135m-instruct     # the real default base, ~700-token prompts
    JAX_PLATFORMS=cuda python bench/decode.py --preset qwen2.5-0.5b --dtype bfloat16 --batch 1 8 \
        --prompt-len 650 750 --peak-tflops 989 --peak-gbps 4800    # an H200; transformers runs on the GPU too
"""

from __future__ import annotations

import argparse
import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from ttpa_jax.cpu import tune  # noqa: E402

tune()  # as every ttpa_jax command does, before jax starts its threads; torch gains alike

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

import ttpa_jax  # noqa: E402
from ttpa_bench import report  # noqa: E402
from ttpa_bench.report import median_times  # noqa: E402
from ttpa_bench.sides import make_checkpoint  # noqa: E402
from ttpa_bench.workloads import PRESETS, device_peak  # noqa: E402
from ttpa_jax.decode.branching import alternatives, probability_gaps, select_branch_points  # noqa: E402
from ttpa_jax.decode.loop import generate  # noqa: E402
from ttpa_jax.decode.settings import TPSConfig  # noqa: E402
from ttpa_jax.decode.tps import tps  # noqa: E402
from ttpa_jax.model.transformer import count_params  # noqa: E402
from ttpa_jax.text.prompts import left_pad  # noqa: E402


def prompts(n: int, lo: int, hi: int, seed: int = 0, vocab: int = 32000) -> list[list[int]]:
    rng = np.random.RandomState(seed)
    return [rng.randint(3, vocab, rng.randint(lo, hi + 1)).tolist() for _ in range(n)]


def bench_greedy(model, hf, batch, n_new, runs):
    ids, mask = left_pad(batch, 0)
    t_ids, t_mask = (torch.tensor(a, dtype=torch.long, device=hf.device) for a in (ids, mask))

    def ours():
        return generate(model, ids, mask, max_new_tokens=n_new, eos_ids=())

    def theirs():
        with torch.no_grad():
            out = hf.generate(t_ids, attention_mask=t_mask, max_new_tokens=n_new, do_sample=False,
                              eos_token_id=None, pad_token_id=0)
        return out.cpu()  # waits for the device

    def prefill():  # one new token: the prefill and one step
        return generate(model, ids, mask, max_new_tokens=1, eos_ids=())

    mine, their = ours().tokens, theirs()[:, ids.shape[1]:].numpy()
    return (*median_times([ours, theirs, prefill], runs), float((mine == their).mean()))


def tps_by_reprefill(model, batch, n_new, cfg: TPSConfig):
    """The comparison: the same branches, each decoded by prefilling prompt + prefix + forced token."""
    ids, mask = left_pad(batch, 0)
    base = generate(model, ids, mask, max_new_tokens=n_new, eos_ids=(), record_k=cfg.top_k)
    branch_prompts, starts = [], []
    for r in range(len(batch)):
        n = int(base.lengths[r])
        gaps = probability_gaps(base.top_probs[r, :n])
        for s in select_branch_points(gaps, cfg.epsilon, cfg.dynamic_m, cfg.max_branch_points):
            for tok, _, _ in alternatives(base.top_ids[r, s], base.top_probs[r, s], int(base.tokens[r, s]), cfg.top_k):
                branch_prompts.append(batch[r] + base.tokens[r, :s].tolist() + [tok])
                starts.append(s)
    b_ids, b_mask = left_pad(branch_prompts, 0)
    cont = generate(model, b_ids, b_mask, max_new_tokens=n_new - 1 - min(starts), eos_ids=())
    return [cont.tokens[j, : n_new - 1 - s].tolist() for j, s in enumerate(starts)]


def report_greedy(model, hf, batch, args, peak: float, bw: float) -> None:
    """Greedy decoding of ``batch`` on both sides, our prefill against the matmul peak ``peak`` (FLOP/s)
    and our decode steps against the bandwidth ``bw`` (bytes/s)."""
    t_ours, t_hf, t_prefill, same = bench_greedy(model, hf, batch, args.new_tokens, args.runs)
    lo, hi = min(map(len, batch)), max(map(len, batch))
    print(f"\ngreedy decode, batch {len(batch)}, prompts {lo}-{hi} tokens, {args.new_tokens} new tokens "
          f"(median of {args.runs}); tokens identical to transformers': {100 * same:.1f}%")
    report.rate("ttpa_jax.decode.loop.generate", len(batch) * args.new_tokens, t_ours)
    report.rate("transformers generate", len(batch) * args.new_tokens, t_hf)
    report.ratio("ratio (ours / transformers)", t_hf / t_ours)
    cfg, n_params = model.config, count_params(model)
    width = {"float32": 4, "bfloat16": 2}[args.dtype]  # bytes per weight and per cached key or value
    step = (t_ours - t_prefill) / max(args.new_tokens - 1, 1)
    kv_bytes = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * width * len(batch) * (
        hi + args.new_tokens)
    report.millis("ours: prefill (+1 step)", t_prefill)
    report.value("ours: prefill of matmul peak", 100 * 2 * n_params * sum(map(len, batch)) / t_prefill / peak, "%",
                 "2 FLOPs per weight per prompt token")
    report.millis("ours: one decode step", step)
    report.value("ours: decode of bandwidth", 100 * (width * n_params + kv_bytes) / step / bw, "%",
                 "weights + KV cache read once per step")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="timed runs per measurement (median reported)")
    ap.add_argument("--batch", type=int, nargs="+", default=[8], help="prompts per batch (one measurement each)")
    ap.add_argument("--new-tokens", type=int, default=64, help="tokens generated per prompt")
    ap.add_argument("--model", default=None,
                    help="a real model (base model name, FILE.gguf or HF directory) instead of the random 22M one")
    ap.add_argument("--prompt-len", type=int, nargs=2, default=None, metavar=("LO", "HI"),
                    help="greedy prompt lengths (default 24 56; with --model 650 750, tool-shaped)")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="llama-22m",
                    help="shape of the random checkpoint (without --model)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                    help="weights and activations, both sides")
    ap.add_argument("--peak-tflops", type=float,
                    help="device matmul peak for the prefill fraction (default: measured)")
    ap.add_argument("--peak-gbps", type=float,
                    help="device memory bandwidth for the decode fraction (default: measured)")
    args = ap.parse_args()
    torch.set_num_threads(report.cores())
    device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"

    with tempfile.TemporaryDirectory() as d:
        if args.model is None:
            make_checkpoint(d, PRESETS[args.preset])
        path = d if args.model is None else report.base_model_dir(args.model, 0, d)
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, args.dtype)).to(device).eval()
        model = ttpa_jax.load_pretrained(path, dtype=args.dtype)
    n_params, vocab = count_params(model), model.config.vocab_size
    print(report.machine_line())
    print(f"model: {args.model or 'random ' + args.preset}, {n_params / 1e6:.1f}M parameters, {args.dtype}; "
          f"transformers on {device}")
    peak, peak_note = device_peak(args.peak_tflops, args.dtype)
    bw, bw_note = ((args.peak_gbps * 1e9, "given with --peak-gbps") if args.peak_gbps
                   else (report.bandwidth(), "jitted a * c over 256 MiB, read + write"))
    report.value("matmul peak", peak / 1e9, "GFLOP/s", peak_note)
    report.value("memory bandwidth", bw / 1e9, "GB/s", bw_note)

    lo, hi = args.prompt_len or ((24, 56) if args.model is None else (650, 750))
    for n_batch in args.batch:
        report_greedy(model, hf, prompts(n_batch, lo, hi, vocab=vocab), args, peak, bw)

    tool_prompts = prompts(4, 160, 224, seed=1, vocab=vocab) if args.model is None else prompts(4, lo, hi, vocab=vocab)
    cfg = TPSConfig(epsilon=1.0, top_k=2, max_branch_points=4, min_alt_prob=0.0)  # 4 branch points per prompt: 16 branches
    n_new = 32

    def forked():
        return tps(model, tool_prompts, max_new_tokens=n_new, config=cfg, batch_size=4, eos_ids=())

    def reprefill():
        return tps_by_reprefill(model, tool_prompts, n_new, cfg)

    res = forked()
    same = [b.tokens[b.position + 1:] for r in res for b in r.branches] == reprefill()
    t_fork, t_re = median_times([forked, reprefill], args.runs)
    t_lo, t_hi = min(map(len, tool_prompts)), max(map(len, tool_prompts))
    print(f"\nTPS, 4 prompts of {t_lo}-{t_hi} tokens, {n_new} new tokens, 4 branch points x 1 alternative each "
          f"(greedy pass included in both; median of {args.runs}); identical branches: {same}")
    report.millis("branches from a forked cache", t_fork)
    report.millis("branches by re-prefill", t_re)
    report.ratio("ratio (re-prefill / forked)", t_re / t_fork)


if __name__ == "__main__":
    main()
