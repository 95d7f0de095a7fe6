#!/usr/bin/env bash
# Rehearse a multi-host run on this machine: N training processes on CPU, each with its own fake CPU
# devices, joined through JAX's coordinator exactly as hosts of a cluster would be.
#
# usage: launch/local.sh [-n PROCESSES] [-d DEVICES_PER_PROCESS] [-p PORT] [--] TRAIN_FLAGS...
#   launch/local.sh -n 2 -d 4 sft --model runs/demo/base-model --data train.jsonl --out runs/local
#
#   -n  processes to start (default 2)
#   -d  fake CPU devices per process (default 4); the mesh spans all N * D devices
#   -p  coordinator port on 127.0.0.1 (default 12355)
# env:
#   TTPA_PYTHON   the Python that has ttpa_jax installed (default: python)
#
# Each process gets TTPA_COORDINATOR=127.0.0.1:PORT, TTPA_NUM_PROCESSES=N and TTPA_PROCESS_ID=i
# (read by ttpa_jax.distributed) and JAX_PLATFORMS=cpu, which selects gloo CPU collectives. Output
# lines are prefixed with the process index. The script waits for all processes; if one fails, the
# others are stopped and its exit status is returned.
set -euo pipefail

processes=2
devices=4
port=12355
while getopts "n:d:p:h" opt; do
  case "$opt" in
    n) processes="$OPTARG" ;;
    d) devices="$OPTARG" ;;
    p) port="$OPTARG" ;;
    h) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "usage: $0 [-n PROCESSES] [-d DEVICES_PER_PROCESS] [-p PORT] [--] TRAIN_FLAGS..." >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
python="${TTPA_PYTHON:-python}"

pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for ((i = 0; i < processes; i++)); do
  JAX_PLATFORMS=cpu \
  XLA_FLAGS="--xla_force_host_platform_device_count=${devices} ${XLA_FLAGS:-}" \
  TTPA_COORDINATOR="127.0.0.1:${port}" \
  TTPA_NUM_PROCESSES="${processes}" \
  TTPA_PROCESS_ID="${i}" \
    "$python" -m ttpa_jax.train "$@" > >(sed -u "s/^/[${i}] /") 2>&1 &
  pids+=("$!")
done

# Poll rather than `wait -n`, so a failure is noticed whichever process has it.
running=("${pids[@]}")
while ((${#running[@]} > 0)); do
  still=()
  for pid in "${running[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      still+=("$pid")
      continue
    fi
    status=0
    wait "$pid" || status=$?
    if ((status != 0)); then
      echo "launch/local.sh: a training process exited with status ${status}; stopping the others" >&2
      exit "$status"
    fi
  done
  running=("${still[@]+"${still[@]}"}")
  ((${#running[@]} == 0)) || sleep 1
done
trap - EXIT
