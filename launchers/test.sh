#!/usr/bin/env bash
# Runs the default test suite (everything not marked slow) in the project's environment.
# Extra arguments go to pytest, e.g. `launchers/test.sh -m slow` or `launchers/test.sh -k ppo`.
set -euo pipefail
cd "$(dirname "$0")/.."
source launchers/setup_env.sh test
if [ "$#" -eq 0 ]; then
  # One code dialect (pyproject.toml [tool.ruff]): formatting drift or a lint error fails the run.
  ruff format --check --quiet rlhf_jax tests configs bench launchers
  ruff check --quiet rlhf_jax tests configs bench launchers
  # Two workers (one per core here; more where there are more), each test file on one worker
  # so module-scoped fixtures (the smoke pipeline run) are built once.
  set -- -m "not slow" -n auto --dist loadfile
fi
exec python -m pytest -q "$@"
