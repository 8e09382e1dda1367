"""The matmul-only ceiling of the PPO update phase and the reward step on this host.

A training step cannot run faster than its matrix multiplications. This script times a
"linear trunk" that performs exactly the model's dense matmuls — per layer q, k, v, o
(d x d), MLP up (d x 4d) and down (4d x d), plus the LM head on the response positions for
the policy — forward and backward (input and weight gradients), with no layer norm,
activation, attention softmax, embedding or optimizer. Its time is the floor for any
implementation that uses XLA's matmuls on this host; the goal "update phase at X% of the
matmul peak" is reachable only if X% of the peak is below the ceiling's rate. PyTorch's f32
GEMM rate on the same host is measured too (the anchors' peak.py, when its venv exists): a
goal "N x TRL" presumes a GEMM advantage that varies from host to host.

Workloads are those of bench/ppo.py (16 minibatch steps of 16 x 64 tokens, policy + separate
value model) and bench/reward.py (32 pairs x 64 tokens). Rates use the same model-FLOP
counts as those scripts, so the numbers compare directly.

  python bench/ceiling.py --sizes small,medium --out bench/results/ceiling.jsonl
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

_common.set_xla_threads()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ppo as bench_ppo  # noqa: E402  (the model-FLOP count the PPO benchmark reports)


def linear_trunk_grad(n_layers, d, vocab, tokens, head_tokens, models):
  """A jitted fwd+bwd over the model's dense matmuls only; returns (fn, weights, x)."""
  keys = iter(jax.random.split(jax.random.PRNGKey(0), 64 * n_layers * models + 8))

  def w(*shape):
    return jax.random.normal(next(keys), shape, jnp.float32) * 0.02

  layers = [
    [
      dict(q=w(d, d), k=w(d, d), v=w(d, d), o=w(d, d), up=w(d, 4 * d), down=w(4 * d, d))
      for _ in range(n_layers)
    ]
    for _ in range(models)
  ]
  head = w(d, vocab) if head_tokens else None
  x = jax.random.normal(next(keys), (tokens, d), jnp.float32)

  def loss(params, x):
    layers, head = params
    total = 0.0
    for m, stack in enumerate(layers):
      h = x
      for p in stack:
        h = h + (h @ p["q"] + h @ p["k"] + h @ p["v"]) @ p["o"]
        h = h + (h @ p["up"]) @ p["down"]
      if m == 0 and head is not None:
        h = h[:head_tokens] @ head
      total = total + jnp.sum(h)
    return total

  return jax.jit(jax.grad(loss, argnums=(0, 1))), (layers, head), x


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--sizes", default="small,medium")
  ap.add_argument("--repeats", type=int, default=7)
  ap.add_argument("--no-peers", action="store_true")
  ap.add_argument("--out", default=None)
  args = ap.parse_args()
  peak = _common.begin(args.out)
  if not args.no_peers:  # PyTorch's (MKL) f32 GEMM rate on the same host, for the ratios
    for rec in _common.run_peer(
      "torch", "peak.py", ["--lib", "torch", "--sizes", "2048", "--copy-mib", "64"]
    ):
      if rec.get("test") == "matmul":
        _common.emit(dict(rec, tag="peer_matmul_peak_torch"), args.out)

  for size in args.sizes.split(","):
    s = _common.SIZES[size]
    if "hf" in s:  # linear_trunk_grad stacks GPT-2 blocks (d -> 4d MLP, full-width K/V)
      raise SystemExit(f"bench/ceiling.py: --sizes {size}: only the GPT-2 sizes small, medium")
    n, d, vocab = s["n_layer"], s["n_embd"], s["vocab"]
    # PPO update phase: 4 epochs x 4 minibatches; a minibatch is 16 x (32 + 32) tokens, the
    # LM head on the 16 x 32 response positions, policy + separate value model.
    fn, params, x = linear_trunk_grad(n, d, vocab, 16 * 64, 16 * 32, models=2)
    t = _common.timeit(lambda: jax.block_until_ready(fn(params, x)), args.repeats)
    cfg = bench_ppo.model_cfg(size, "float32", False, "lm")
    flops = bench_ppo.update_flops(cfg, 64, 32, 32, 4, False)
    update_s = 16 * t["min"]
    _common.emit(
      {
        "tag": "ceiling_ppo_update",
        "size": size,
        "minibatch_step_s": t,
        "update_phase_ceiling_s": update_s,
        "update_gflop": flops / 1e9,
        "ceiling_gflops": flops / update_s / 1e9,
        "ceiling_fraction_of_peak": flops / update_s / 1e9 / peak["gflops_best"],
        "info": _common.info(),
      },
      args.out,
    )
    # Reward step: 64 sequences x 64 tokens, scalar head (a d-vector: no matmul worth timing).
    fn, params, x = linear_trunk_grad(n, d, vocab, 64 * 64, 0, models=1)
    t = _common.timeit(lambda: jax.block_until_ready(fn(params, x)), args.repeats)
    flops = _common.reward_step_flops(bench_ppo.model_cfg(size, "float32", False, "scalar"), 64, 64)
    _common.emit(
      {
        "tag": "ceiling_reward_step",
        "size": size,
        "step_s": t,
        "ceiling_pairs_per_s": 32 / t["min"],
        "ceiling_gflops": flops / t["min"] / 1e9,
        "ceiling_fraction_of_peak": flops / t["min"] / 1e9 / peak["gflops_best"],
        "info": _common.info(),
      },
      args.out,
    )


if __name__ == "__main__":
  main()
