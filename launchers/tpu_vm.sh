#!/usr/bin/env bash
# Run a config on every worker of a Cloud TPU VM slice (multi-host). JAX's multi-controller
# runtime does the rest: rlhf_jax.main calls jax.distributed.initialize() (TPU workers are
# auto-detected when config.distributed.auto=True) and every process runs the same program.
#
# Usage: launchers/tpu_vm.sh TPU_NAME ZONE CONFIG[:ARG] WORKDIR [--config.field=value ...]
#   WORKDIR should be shared storage (e.g. a gs:// bucket mounted with gcsfuse) so that
#   checkpoints from all hosts land in one place.
# Example:
#   launchers/tpu_vm.sh my-v4-32 us-central2-b configs/sentiment.py /mnt/runs/sentiment \
#       --config.mesh.fsdp=-1 --config.base.optimizer.learning_rate=3e-4
set -euo pipefail
if [ "$#" -lt 4 ]; then sed -n 2,14p "$0"; exit 2; fi
tpu="$1"; zone="$2"; config="$3"; workdir="$4"; shift 4
repo_url="${RLHF_JAX_REPO:-$(git -C "$(dirname "$0")/.." remote get-url origin 2>/dev/null || true)}"
overrides=$(printf '%q ' "$@")
remote_cmd="set -e
if [ -n '$repo_url' ] && [ ! -d rlhf_jax_src ]; then git clone '$repo_url' rlhf_jax_src; fi
cd rlhf_jax_src
python3 -m venv .venv && .venv/bin/pip install -q -U pip
.venv/bin/pip install -q 'jax[tpu]' -e .
.venv/bin/python -m rlhf_jax.main --config '$config' --workdir '$workdir' \
  --config.distributed.auto=True $overrides"
status=0
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "$remote_cmd" \
  || status=$?
if [ "$status" -eq 75 ]; then  # EX_TEMPFAIL: preempted after saving a checkpoint
  echo "preempted (exit 75): rerun this command (same WORKDIR) to resume" >&2
fi
exit "$status"
