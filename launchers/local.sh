#!/usr/bin/env bash
# The main job on one machine: installs the environment if needed, then runs a config.
# Usage: launchers/local.sh [CONFIG[:ARG]] [WORKDIR] [--config.field=value ...]
# Default: the built-in sentiment RLHF run, offline (configs/sentiment.py -> runs/sentiment).
# Exit status: 0 finished, 2 a user error (bad field or input), 1 failed, 75 preempted.
set -euo pipefail
cd "$(dirname "$0")/.."
source launchers/setup_env.sh base
config="${1:-configs/sentiment.py}"
workdir="${2:-runs/sentiment}"
shift $(( $# > 2 ? 2 : $# ))
export RLHF_JAX_COMPILATION_CACHE="${RLHF_JAX_COMPILATION_CACHE:-$HOME/.cache/rlhf_jax/xla}"
# Exit status 75 (EX_TEMPFAIL) means "preempted: a checkpoint is saved, rerun me". With
# RLHF_JAX_RERUNS=N the run is restarted up to N times after a preemption.
reruns="${RLHF_JAX_RERUNS:-0}"
while true; do
  status=0
  python -m rlhf_jax.main --config "$config" --workdir "$workdir" "$@" || status=$?
  if [ "$status" -ne 75 ]; then exit "$status"; fi
  if [ "$reruns" -le 0 ]; then
    echo "[local.sh] preempted (exit 75): rerun the same command to resume from $workdir" >&2
    exit 75
  fi
  reruns=$((reruns - 1))
  echo "[local.sh] preempted (exit 75): resuming from $workdir" >&2
done
