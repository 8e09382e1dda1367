"""Critic-free iteration throughput (GRPO, RLOO) on the anchor workload, side by side with TRL.

Workload (``../shared/anchors/rloo_trl.py``): GPT-2 "small" (random init), one iteration =
64 sampled completions = 32 prompts of 32 random tokens x 2 samples per prompt (group size
2), 32 response tokens (temperature 1, no stop token), a reference model (beta 0.05) and a
GPT-2 scalar reward model, no value model, 4 epochs x 4 minibatches of 16 = 16 optimizer
steps (Adam, lr 1e-5), float32. The KL sits where each algorithm puts it, here and in TRL:
GRPO a k3 loss term, RLOO a k1 penalty on the sequence reward.

Reports samples/s (sampled completions per second of whole iterations; the first iteration
= compilation, excluded), the rollout phase (sampling, reference and reward forwards,
advantages) and the update phase timed separately, and the update phase's model GFLOP/s
against the f32 matmul peak measured in the same run. With ``$VENVS/torch`` present, TRL
1.16 ``GRPOTrainer`` / ``RLOOTrainer`` (``rloo_trl.py --algo grpo|rloo``) run in the same
invocation and the ratios are recorded. For GRPO, with ``$VENVS/tunix`` present, Google Tunix
0.1.7's ``GRPOLearner`` (``bench/peers/grpo_tunix.py``: a Tunix Qwen3 of the same size, the
reward model applied as a reward function, the same completions and optimizer steps per
iteration; its docstring lists the differences in order) runs too, recorded as
``peer_grpo_tunix`` with the ratio ``ratio_vs_tunix`` (for the sizes "small" and "medium").

  python bench/grpo.py --out bench/results/grpo.jsonl               # grpo and rloo, with TRL
  python bench/grpo.py --algos grpo --no-peers                      # ours only
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

_common.set_xla_threads()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from ppo import model_cfg, update_flops  # noqa: E402  (same model shapes and FLOP count)

from rlhf_jax import ppo  # noqa: E402
from rlhf_jax.models import Transformer, init_params  # noqa: E402

# Tunix GRPO peer (run in $VENVS/tunix) and the sizes it builds (the anchors' Qwen3 shapes).
TUNIX_GRPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers", "grpo_tunix.py")
TUNIX_SIZES = ("small", "medium")


def hparams(algo: str, args, vocab: int) -> ppo.PPOHparams:
  """The anchor's settings as ``PPOHparams``. GRPO: TRL's default loss ``"dapo"`` is the token
  mean over the minibatch, with the k3 KL term. RLOO: the KL is a k1 penalty on the sequence
  reward on both sides; TRL clips one ratio per sequence (``exp`` of the summed log-ratio),
  this library one per token (token mean) — the same forward and backward work."""
  return ppo.PPOHparams(
    algorithm=algo,
    group_size=args.group_size,
    response_len=args.response_len,
    num_minibatches=args.minibatches,
    epochs=args.epochs,
    temperature=1.0,
    eos_id=vocab,  # outside the vocabulary: never sampled, every response is 32 tokens
    pad_id=0,
    adaptive_kl=False,
    loss_reduction="token",
  )


def bench_ours(algo, size, args, peak):
  prompts, g = args.prompts, args.group_size
  b, p, n = prompts * g, args.prompt_len, args.response_len
  vocab = _common.SIZES[size]["vocab"]
  hp = hparams(algo, args, vocab)
  policy = Transformer(model_cfg(size, "float32", False, "lm", args.scan_unroll))
  rm = Transformer(model_cfg(size, "float32", False, "scalar", args.scan_unroll))
  k = jax.random.split(jax.random.PRNGKey(0), 2)
  pp = init_params(policy, k[0])
  rp = init_params(rm, k[1])
  ref = jax.tree.map(jnp.copy, pp)
  frozen = ppo.PPOFrozen(ref, rp, jnp.float32(1.0), jnp.float32(0.0))
  opt = optax.adam(1e-5)
  state = ppo.init_ppo_state({"policy": pp}, opt, 0.05, jax.random.PRNGKey(1))
  ids = np.random.default_rng(0).integers(1, vocab, (prompts, p)).astype(np.int32)
  mask = np.ones_like(ids)
  it = jax.jit(ppo.make_ppo_iteration(policy, None, rm, opt, hp), donate_argnums=0)
  holder = {"state": state}

  def one():
    holder["state"], m = it(holder["state"], frozen, ids, mask)
    jax.block_until_ready(m)

  t0 = time.perf_counter()
  one()
  first = time.perf_counter() - t0
  whole = _common.timeit(one, args.iters - 1, warmup=0)

  # The two halves of the same iteration, each jitted on its own, to say where time goes.
  rollout_fn, update_fn = ppo.make_ppo_iteration(policy, None, rm, opt, hp, phases=True)
  rollout_j, update_j = jax.jit(rollout_fn), jax.jit(update_fn)
  st = holder["state"]
  ro = rollout_j(st, frozen, ids, mask)
  jax.block_until_ready(ro)
  t_roll = _common.timeit(
    lambda: jax.block_until_ready(rollout_j(st, frozen, ids, mask)), args.iters - 1
  )
  t_upd = _common.timeit(lambda: jax.block_until_ready(update_j(st, *ro)), args.iters - 1)
  # Policy-only update FLOPs (shared_trunk=True counts no value model; the head is negligible).
  flops = update_flops(policy.cfg, b, p, n, args.epochs, True)
  upd_gflops = flops / t_upd["median"] / 1e9
  rec = {
    "tag": "grpo_rlhf_jax",
    "algo": algo,
    "size": size,
    "dtype": "float32",
    "scan_unroll": policy.cfg.scan_unroll,
    "prompts": prompts,
    "group_size": g,
    "gen_batch": b,
    "prompt_len": p,
    "response_len": n,
    "epochs": args.epochs,
    "minibatches": args.minibatches,
    "kl_in_loss": hp.kl_in_loss_resolved,
    "loss_reduction": hp.loss_reduction_resolved,
    "first_iter_s": first,
    "s_per_iter": whole,
    "samples_per_s_median": b / whole["median"],
    "samples_per_s_best": b / whole["min"],
    "rollout_phase_s": t_roll,
    "update_phase_s": t_upd,
    "update_gflop": flops / 1e9,
    "update_gflops_median": upd_gflops,
    "update_fraction_of_peak": upd_gflops / peak["gflops_best"],
    "info": _common.info(),
  }
  _common.emit(rec, args.out)
  return rec


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--algos", default="grpo,rloo")
  ap.add_argument("--size", default="small", choices=list(_common.SIZES))
  ap.add_argument("--prompts", type=int, default=32)
  ap.add_argument("--group-size", type=int, default=2)
  ap.add_argument("--prompt-len", type=int, default=32)
  ap.add_argument("--response-len", type=int, default=32)
  ap.add_argument("--epochs", type=int, default=4)
  ap.add_argument("--minibatches", type=int, default=4)
  ap.add_argument("--iters", type=int, default=6, help="iterations, the first one excluded")
  ap.add_argument(
    "--scan-unroll",
    type=_common.unroll_arg,
    default="all",
    help="layers per scan iteration; 'all' (default) unrolls every layer",
  )
  ap.add_argument("--no-peers", action="store_true")
  ap.add_argument("--out", default=None)
  args = ap.parse_args()
  if args.iters < 2:
    ap.error("--iters must be >= 2 (the first iteration is excluded)")
  peak = _common.begin(args.out)
  summary = []
  for algo in args.algos.split(","):
    ours = bench_ours(algo, args.size, args, peak)
    line = {"algo": algo, "size": args.size, "ours_samples_per_s": ours["samples_per_s_median"]}
    if not args.no_peers:
      # The workload both peers take, under the same flag names.
      workload = [
        *("--size", args.size, "--iters", str(args.iters)),
        *("--num-generations", str(args.group_size), "--epochs", str(args.epochs)),
        *("--prompt-len", str(args.prompt_len), "--response-len", str(args.response_len)),
        *("--minibatches", str(args.minibatches)),
      ]
      gen_batch = str(args.prompts * args.group_size)
      trl = _common.run_peer(
        "torch", "rloo_trl.py", ["--algo", algo, "--gen-batch", gen_batch, *workload]
      )
      _common.record_peer(line, trl, "peer_rl_trl116", "trl", "samples_per_s", ours, args.out)
      if algo == "grpo" and args.size in TUNIX_SIZES:
        tunix = _common.run_peer("tunix", TUNIX_GRPO, ["--prompts", str(args.prompts), *workload])
        _common.record_peer(
          line, tunix, "peer_grpo_tunix", "tunix", "samples_per_s", ours, args.out
        )
    summary.append(line)
  _common.emit({"tag": "grpo_summary", "rows": summary, "info": _common.info()}, args.out)


if __name__ == "__main__":
  main()
