"""Where a training step's time goes: user vs system (kernel) CPU time, page faults and wall time
of our jitted LoRA SFT / DPO step on a random model of SmolLM2-135M's shape (30 layers, hidden 576,
9 / 3 heads, vocab 49152, tied), batch and length as given.

    python bench/sys_time.py --objective sft --batch 2 --seq-len 1024 --logits-chunk 256
    XLA_FLAGS=--xla_cpu_multi_thread_eigen=false python bench/sys_time.py ...   # compare a setting

System time counts the process's kernel work (page faults on fresh buffers, thread wake-ups);
minor faults are pages mapped for the first time.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

if "--default-malloc" in sys.argv:
    os.environ["TTPA_MALLOC"] = "default"
from ttpa_jax.cpu import tune  # noqa: E402

TUNED = tune()  # before jax starts its threads (the trainer does the same on import)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from ttpa_jax.model.config import ModelConfig  # noqa: E402

SMOLLM2 = ModelConfig(model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
                      num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
                      max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=100000.0,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objective", choices=["sft", "dpo"], default="sft")
    ap.add_argument("--batch", type=int, default=2, help="sequences (sft) or pairs (dpo)")
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--prompt-len", type=int, default=0, help="dpo: shared prompt tokens (default: 3/4 of seq-len)")
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--logits-chunk", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--shared-prefix", action="store_true", help="dpo: the shared-prefix layout")
    ap.add_argument("--default-malloc", action="store_true", help="leave glibc malloc as it is (cpu/malloc.py)")
    return ap.parse_args()


def snapshot():
    t, r = os.times(), resource.getrusage(resource.RUSAGE_SELF)
    return np.array([time.perf_counter(), t.user, t.system, r.ru_minflt, r.ru_majflt, r.ru_nvcsw, r.ru_nivcsw])


def report(label, d):
    wall, user, sys_, minflt, majflt, vcs, ivcs = d
    print(f"  {label:<14} wall {wall:7.2f} s  user {user:7.2f} s  sys {sys_:7.2f} s ({100 * sys_ / max(user + sys_, 1e-9):4.1f}% "
          f"of CPU)  minor faults {minflt:9.0f}  ctx switches {vcs:.0f}/{ivcs:.0f}", flush=True)


def main():
    import dataclasses

    from flax import nnx

    from ttpa_jax.model.lora import LoraConfig, apply_lora
    from ttpa_jax.model.sharding import Placement, make_mesh
    from ttpa_jax.model.transformer import Transformer
    from ttpa_jax.train.batches import TokenRows
    from ttpa_jax.train.config import OptimConfig
    from ttpa_jax.train.dpo.unit import make_dpo
    from ttpa_jax.train.optim import make_optimizer
    from ttpa_jax.train.sft.unit import make_sft
    from ttpa_jax.train.trainer import make_train_step, split_model

    args = parse_args()
    cfg = dataclasses.replace(SMOLLM2, num_hidden_layers=args.layers)
    model = apply_lora(Transformer(cfg, rngs=nnx.Rngs(0)), LoraConfig(rank=8, alpha=16.0))
    graphdef, trainable, frozen = split_model(model, lora=True)
    placement = Placement(make_mesh(1, 1, 1))
    trainable, frozen = placement.state(trainable), placement.state(frozen)
    tx = make_optimizer(OptimConfig(lr=1e-4, warmup_steps=0), 100)
    opt_state = placement.optimizer_state(tx, trainable)
    rng = np.random.RandomState(0)
    B, L = args.batch, args.seq_len
    if args.objective == "sft":
        objective = make_sft(args.logits_chunk)
        ids = rng.randint(3, cfg.vocab_size, (B, L)).astype(np.int32)
        batch = TokenRows(input_ids=ids, attention_mask=np.ones_like(ids),
                          weights=(np.arange(L) >= L // 2).astype(np.float32)[None].repeat(B, 0))
    else:
        from ttpa_jax.train.loader import collate

        P = args.prompt_len or 3 * L // 4
        exs = []
        for _ in range(B):
            trunk = rng.randint(3, cfg.vocab_size, P + 8)
            ex = {}
            for side in ("chosen", "rejected"):
                ids = np.concatenate([trunk, rng.randint(3, cfg.vocab_size, L - P - 8)]).astype(np.int32)
                ex[f"{side}_ids"], ex[f"{side}_weights"] = ids, (np.arange(L) >= P).astype(np.float32)
            exs.append(ex)
        batch = collate(exs, 2, 64, L, layout="shared_prefix" if args.shared_prefix else "rows")
        objective = make_dpo(0.1, "sigmoid", logits_chunk=args.logits_chunk)
    out_sh = (placement.shardings(trainable), jax.tree.map(lambda x: x.sharding, opt_state), placement.replicated)
    step = make_train_step(graphdef, objective, tx, 1, True, out_sh)
    key = jax.random.key(0)
    dev_batch = placement.batch(batch)
    print(f"{args.objective} step, batch {B} x {L}, {args.layers} layers, logits chunk {args.logits_chunk}; "
          f"malloc {'tuned' if TUNED else 'default'}; load average {os.getloadavg()[0]:.1f}", flush=True)
    s0 = snapshot()
    with jax.set_mesh(placement.mesh):
        compiled = step.lower(trainable, frozen, None, opt_state, dev_batch, key).compile()
    s1 = snapshot()
    report("compile", s1 - s0)
    ma = compiled.memory_analysis()
    print(f"  temporaries {ma.temp_size_in_bytes / 2**20:.0f} MiB, arguments {ma.argument_size_in_bytes / 2**20:.0f} MiB")
    for i in range(args.steps):
        a = snapshot()
        with jax.set_mesh(placement.mesh):
            trainable, opt_state, m = compiled(trainable, frozen, None, opt_state, dev_batch, key)
        float(m["loss"])
        report(f"step {i}", snapshot() - a)
    print(f"  peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
