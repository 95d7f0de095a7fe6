#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md in one command, for a lent NVIDIA machine whose image already
# holds jax (CUDA), torch, transformers and peft but none of our other dependencies and no registry:
#
#   make gpu-wheels            # here, with the registries: the missing wheels into .whl/ (6 MB)
#   bash bench/gpu.sh          # there, from the repository root, with .whl/ carried along
#   bash bench/gpu.sh shared   # only some parts: decode, dpo, shared (default: decode dpo; all three
#                              # take more than one 10-minute call)
#
# It installs the carried wheels (no dependencies resolved, nothing of the image replaced) into
# /tmp/site, then runs, each with a time limit (LIMIT seconds, default 240) and its output kept in
# $OUT (default gpu-out/): greedy decoding of a random Qwen2.5-0.5B in bf16 at batch 1 and 8 against
# transformers' generate (HBM bandwidth fraction), and the bf16 DPO step of Qwen2.5-0.5B and 1.5B
# against transformers + peft (MFU); "shared": the shared-prefix DPO step of bench/method_step.py on
# Qwen2.5-0.5B in bf16 (8 pairs, one per prompt) against our concatenated step and PyTorch's. The
# datasheet peaks are taken from the card's name (H100 SXM: 989 TFLOP/s dense bf16, 3350 GB/s; H200:
# 989, 4800); PEAK_TFLOPS / PEAK_GBPS override them.
set -uo pipefail
OUT=${OUT:-gpu-out}
LIMIT=${LIMIT:-240}
mkdir -p "$OUT"
# bench/decode.py runs on the CPU unless told otherwise; JAX takes at most half the card, PyTorch the rest
export JAX_PLATFORMS=${JAX_PLATFORMS:-cuda} PYTHONPATH=$PWD PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.5
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu.sh: installing .whl/*.whl failed" >&2; exit 1; }
  export PYTHONPATH=/tmp/site:$PYTHONPATH
fi

card=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
case "$card" in
  *H200*) gbps=4800 ;;
  *H100*) gbps=3350 ;;
  *) gbps=0 ;;
esac
PEAK_TFLOPS=${PEAK_TFLOPS:-989}
PEAK_GBPS=${PEAK_GBPS:-$gbps}
{ echo "card: ${card:-none}; peaks: $PEAK_TFLOPS TFLOP/s, $PEAK_GBPS GB/s"; nvidia-smi 2>&1 | head -15
  python3 -c "import jax, torch, flax; print('jax', jax.__version__, jax.devices(), '| torch', torch.__version__, '| flax', flax.__version__)"
} 2>&1 | tee "$OUT/machine.txt"

run() {  # run NAME ARGS...: one benchmark, its output in $OUT/NAME.log
  local name=$1; shift
  echo "== $name: python3 $*"
  timeout "$LIMIT" python3 "$@" 2>&1 | tee "$OUT/$name.log"
  echo "== $name: exit ${PIPESTATUS[0]}"
}
parts=" ${*:-decode dpo} "
[[ $parts == *" decode "* ]] && run decode bench/decode.py --preset qwen2.5-0.5b --dtype bfloat16 --batch 1 8 --prompt-len 650 750 \
  --peak-tflops "$PEAK_TFLOPS" --peak-gbps "$PEAK_GBPS" --runs 3
[[ $parts == *" dpo "* ]] && for preset in qwen2.5-0.5b qwen2.5-1.5b; do
  run "dpo-$preset" bench/train_step.py --preset "$preset" --dtype bfloat16 --peak-tflops "$PEAK_TFLOPS" \
    --batch 4 --seq-len 1024 --steps 4 --warmup 1 --skip-sft --logits-chunk 256
done
[[ $parts == *" shared "* ]] && run shared-prefix bench/method_step.py --preset qwen2.5-0.5b --dtype bfloat16 \
  --peak-tflops "$PEAK_TFLOPS" --pairs 8 --pairs-per-prompt 1 --steps 4 --warmup 1 --skip-sft
true
