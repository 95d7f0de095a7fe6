#!/usr/bin/env bash
# Train on every worker of a Cloud TPU pod slice: install or update the package on all workers, then
# start the same `python -m ttpa_jax.train` command on each. JAX finds the other workers itself
# (TPU_WORKER_HOSTNAMES), so no coordinator address is needed.
#
# usage: launch/tpu_pod.sh TPU_NAME ZONE TRAIN_FLAGS...
#   TTPA_PACKAGE='ttpa-jax[tpu] @ git+https://github.com/ORG/ttpa-jax@main' \
#     launch/tpu_pod.sh my-v5p-64 us-east5-a dpo --model /mnt/models/qwen2.5-7b \
#       --data /mnt/data/pairs.jsonl --out /mnt/runs/dpo --mesh.fsdp -1
#
# Paths must exist on every worker (a shared disk, gcsfuse, or the same copy on each).
# env:
#   TTPA_PACKAGE   pip requirement installed on each worker (required), e.g. the line above or a
#                  path to a checkout on a shared disk: '/mnt/src/ttpa-jax[tpu]'
#   TTPA_VENV      virtual environment on the workers (default: ~/ttpa-venv; created if missing)
#   TTPA_WORKDIR   directory the command runs in on the workers (default: the home directory)
#   TTPA_PROJECT   Google Cloud project (default: gcloud's configured project)
#   TTPA_GCLOUD_FLAGS  extra flags for `gcloud compute tpus tpu-vm ssh`, e.g. '--tunnel-through-iap'
set -euo pipefail

if (($# < 2)); then
  sed -n '2,21p' "$0" >&2
  exit 2
fi
tpu_name="$1"
zone="$2"
shift 2
: "${TTPA_PACKAGE:?set TTPA_PACKAGE to the pip requirement to install on the workers (see the usage above)}"
venv="${TTPA_VENV:-\$HOME/ttpa-venv}"
workdir="${TTPA_WORKDIR:-\$HOME}"

gcloud_flags=(--zone "$zone" --worker=all)
if [[ -n "${TTPA_PROJECT:-}" ]]; then
  gcloud_flags+=(--project "$TTPA_PROJECT")
fi
if [[ -n "${TTPA_GCLOUD_FLAGS:-}" ]]; then
  read -r -a extra <<< "$TTPA_GCLOUD_FLAGS"
  gcloud_flags+=("${extra[@]}")
fi

# The training flags travel as one shell-quoted string and are split back on each worker.
train_args=$(printf '%q ' "$@")
package=$(printf '%q' "$TTPA_PACKAGE")
remote="set -euo pipefail
[ -x \"${venv}/bin/python\" ] || python3 -m venv \"${venv}\"
\"${venv}/bin/pip\" install --quiet --upgrade pip
\"${venv}/bin/pip\" install --quiet --upgrade ${package}
cd \"${workdir}\"
exec \"${venv}/bin/python\" -m ttpa_jax.train ${train_args}"

exec gcloud compute tpus tpu-vm ssh "$tpu_name" "${gcloud_flags[@]}" --command "$remote"
