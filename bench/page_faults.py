"""Page faults and kernel time of the pretraining step, with and without huge pages for malloc.

XLA:CPU allocates a step's buffers with ``malloc``; glibc serves the large ones with fresh
``mmap``'d pages and unmaps them on ``free``, so every step faults its working set in again.
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (set by every launcher, ``launchers/malloc_env.sh``)
asks for transparent huge pages on those mappings. This script runs the default run's
pretraining step (GPT-2 "small" shape, 32 x 64 tokens, vocabulary 8192, AdamW, jitted and
donated) in a fresh process per setting, alternating the settings for ``--rounds`` rounds, and
reports per step: minor page faults, user and kernel CPU time, and wall time
(``resource.getrusage`` around ``--steps`` steps after one warm-up step).

  python bench/page_faults.py --out bench/results/page_faults.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

SETTINGS = {"glibc_default": "", "hugetlb": "glibc.malloc.hugetlb=1"}


def child(steps: int) -> dict:
  """One process: the pretraining step ``steps`` times; the per-step resource usage."""
  import resource
  import time

  _common.set_xla_threads()
  import jax
  import numpy as np
  import optax

  from rlhf_jax import sft
  from rlhf_jax.models import Transformer, TransformerConfig, init_params

  cfg = TransformerConfig(vocab_size=8192, d_model=256, n_layers=4, n_heads=4, max_len=128)
  model = Transformer(cfg)
  opt = optax.adamw(1e-3)
  state = sft.init_lm_state(init_params(model, jax.random.PRNGKey(0)), opt)
  step = jax.jit(sft.make_lm_step(model, opt), donate_argnums=0)
  rng = np.random.default_rng(0)

  def batch():
    ids = rng.integers(1, cfg.vocab_size, (32, 64)).astype(np.int32)
    return {"ids": ids, "mask": np.ones_like(ids), "loss_mask": np.ones_like(ids)}

  state, metrics = step(state, batch(), None)
  jax.block_until_ready(metrics)
  r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
  for _ in range(steps):
    state, metrics = step(state, batch(), None)
  jax.block_until_ready(metrics)
  r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
  return {
    "wall_ms": (t1 - t0) / steps * 1e3,
    "user_ms": (r1.ru_utime - r0.ru_utime) / steps * 1e3,
    "sys_ms": (r1.ru_stime - r0.ru_stime) / steps * 1e3,
    "minor_faults": (r1.ru_minflt - r0.ru_minflt) / steps,
  }


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--steps", type=int, default=20)
  ap.add_argument("--rounds", type=int, default=2)
  ap.add_argument("--out", default=None)
  ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.child:
    print("CHILD " + json.dumps(child(args.steps)), flush=True)
    return
  for r in range(args.rounds):
    for name, tunables in SETTINGS.items():
      env = dict(os.environ, GLIBC_TUNABLES=tunables)
      proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", "--steps", str(args.steps)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
      )
      line = next(l for l in proc.stdout.splitlines() if l.startswith("CHILD "))
      rec = dict(json.loads(line[len("CHILD ") :]), setting=name, GLIBC_TUNABLES=tunables)
      rec.update(tag="page_faults_lm_step", round=r, steps=args.steps, info=_common.info())
      _common.emit(rec, args.out)
      print(
        f"[page_faults] {name:<14s} {rec['minor_faults']:>9.0f} faults/step, sys "
        f"{rec['sys_ms']:.0f} ms, user {rec['user_ms']:.0f} ms, wall {rec['wall_ms']:.0f} ms",
        flush=True,
      )


if __name__ == "__main__":
  main()
