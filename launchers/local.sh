#!/usr/bin/env bash
# The main job on one machine: installs the environment if needed, then runs a config.
# Usage: launchers/local.sh [CONFIG[:ARG]] [WORKDIR] [--config.field=value ...]
# Default: the built-in sentiment RLHF run, offline (configs/sentiment.py -> runs/sentiment).
set -euo pipefail
cd "$(dirname "$0")/.."
source launchers/setup_env.sh base
config="${1:-configs/sentiment.py}"
workdir="${2:-runs/sentiment}"
shift $(( $# > 2 ? 2 : $# ))
export RLHF_JAX_COMPILATION_CACHE="${RLHF_JAX_COMPILATION_CACHE:-$HOME/.cache/rlhf_jax/xla}"
exec python -m rlhf_jax.main --config "$config" --workdir "$workdir" "$@"
