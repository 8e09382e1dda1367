"""Reward-model training throughput (pairs/s) on the anchor workload, next to TRL.

Workload (``../shared/anchors/reward_trl.py``): GPT-2 "small" / "medium" with a scalar head,
32 pairs per step (64 sequences of 64 random tokens, the last one EOS), pairwise
Bradley-Terry loss, Adam(W) lr 1e-5, float32. The first two steps (compilation) are
excluded. TRL 1.16 ``RewardTrainer`` runs in the same invocation when ``$VENVS/torch``
exists.

  python bench/reward.py --sizes small,medium --out bench/results/reward.jsonl
  python bench/reward.py --sizes small --compare f32,remat,bf16   # A/B, alternating steps
  python bench/reward.py --sizes smollm2 --pairs 8 --steps 4 --scan-unroll 1  # SmolLM2-135M shape

``--sizes smollm2``: SmolLM2-135M's shape (random init); TRL through ``bench/peers/anchor_llama.py``.

``--compare`` (variants as in ``bench/ppo.py``) builds each variant and times their steps in
alternating rounds, wall and process-CPU seconds; TRL then runs once after them.
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
import optax  # noqa: E402

from rlhf_jax import reward  # noqa: E402
from rlhf_jax.models import Transformer, init_params  # noqa: E402


def bench_ours(size, args, peak):
  rec, one = build(size, args)
  t_step = _common.timeit(one, args.steps, warmup=2)
  rec.update(
    {
      "s_per_step": t_step,
      "pairs_per_s_median": args.pairs / t_step["median"],
      "pairs_per_s_best": args.pairs / t_step["min"],
      "gflops_median": rec["step_gflop"] / t_step["median"],
      "fraction_of_peak": rec["step_gflop"] / t_step["median"] / peak["gflops_best"],
      "info": _common.info(),
    }
  )
  _common.emit(rec, args.out)
  return rec


COMPARE = _common.COMPARE_VARIANTS


def compare(size, args, peak):
  """The reward step of each ``--compare`` variant, alternating; returns the first's record."""
  built = {}
  for name in args.compare.split(","):
    kw = COMPARE[name]
    sub = argparse.Namespace(
      **dict(vars(args), remat=kw.get("remat", False), matmul_dtype=kw.get("matmul_dtype"))
    )
    rec, one = build(size, sub)
    one()
    one()
    built[name] = (rec, one)
  wall = {k: [] for k in built}
  cpu = {k: [] for k in built}
  loads = []
  for _ in range(args.steps):
    loads.append(os.getloadavg()[0])
    for name, (_, one) in built.items():
      t0, c0 = time.perf_counter(), time.process_time()
      one()
      wall[name].append(time.perf_counter() - t0)
      cpu[name].append(time.process_time() - c0)
  recs = []
  for name, (rec, _) in built.items():
    w, c = _common.summarize(wall[name]), _common.summarize(cpu[name])
    rec = dict(
      rec,
      tag="reward_rlhf_jax_compare",
      variant=name,
      s_per_step=w,
      cpu_s_per_step=c,
      pairs_per_s_median=args.pairs / w["median"],
      pairs_per_s_best=args.pairs / w["min"],
      gflops_best=rec["step_gflop"] / w["min"],
      fraction_of_peak=rec["step_gflop"] / w["min"] / peak["gflops_best"],
      loadavg_per_round=loads,
      info=_common.info(),
    )
    _common.emit(rec, args.out)
    recs.append(rec)
  for r in recs:
    print(
      f"[compare] {size} {r['variant']:<10s} step {r['s_per_step']['min']:.3f} s wall "
      f"(x{recs[0]['s_per_step']['min'] / r['s_per_step']['min']:.2f}), "
      f"{r['cpu_s_per_step']['min']:.3f} s CPU "
      f"(x{recs[0]['cpu_s_per_step']['min'] / r['cpu_s_per_step']['min']:.2f}), "
      f"{r['pairs_per_s_best']:.1f} pairs/s",
      flush=True,
    )
  return recs[0]


def build(size, args):
  """The record's fixed fields and ``one()``: one jitted, donated step on a fixed batch."""
  s = _common.SIZES[size]
  cfg = _common.transformer_config(
    size,
    "scalar",
    dtype=args.dtype,
    remat=args.remat,
    matmul_dtype=args.matmul_dtype,
    scan_unroll=args.scan_unroll,
  )
  model = Transformer(cfg)
  hp = reward.RewardHparams(tie_model="bradley_terry", learn_tie_param=False)
  opt = optax.adamw(1e-5)
  state = reward.init_reward_state(init_params(model, jax.random.PRNGKey(0)), opt, hp)
  step = jax.jit(reward.make_reward_step(model, opt, hp), donate_argnums=0)
  b, t = args.pairs, args.seq_len
  batch = _common.reward_batch(b, t, s["vocab"])
  holder = {"state": state}

  def one():
    holder["state"], m = step(holder["state"], batch)
    jax.block_until_ready(m)

  rec = {
    "tag": "reward_rlhf_jax",
    "size": size,
    "dtype": args.dtype,
    "remat": args.remat,
    "matmul_dtype": args.matmul_dtype,
    "scan_unroll": cfg.scan_unroll,
    "pairs_per_step": b,
    "seq_len": t,
    "step_gflop": _common.reward_step_flops(cfg, t, 2 * b) / 1e9,
  }
  return rec, one


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--sizes", default="small,medium")
  ap.add_argument("--pairs", type=int, default=32)
  ap.add_argument("--seq-len", type=int, default=64)
  ap.add_argument("--steps", type=int, default=10)
  ap.add_argument("--dtype", default="float32")
  ap.add_argument("--remat", action="store_true")
  ap.add_argument("--matmul-dtype", default=None, help="e.g. bfloat16: bf16 matmuls, f32 rest")
  ap.add_argument("--compare", default=None, help=f"A/B variants, some of {list(COMPARE)}")
  ap.add_argument(
    "--scan-unroll",
    type=_common.unroll_arg,
    default="all",
    help="layers per scan iteration; 'all' (default) unrolls every layer",
  )
  ap.add_argument("--no-peers", action="store_true")
  ap.add_argument("--out", default=None)
  args = ap.parse_args()
  peak = _common.begin(args.out)
  rows = []
  for size in args.sizes.split(","):
    ours = compare(size, args, peak) if args.compare else bench_ours(size, args, peak)
    row = {"size": size, "ours_pairs_per_s": ours["pairs_per_s_median"]}
    if not args.no_peers:
      recs = _common.run_anchor(
        "torch", "reward_trl.py", size, ["--batch", str(args.pairs), "--seq-len", str(args.seq_len)]
      )
      _common.record_peer(row, recs, "peer_reward_trl", "trl", "pairs_per_s", ours, args.out)
    rows.append(row)
  _common.emit({"tag": "reward_summary", "rows": rows}, args.out)


if __name__ == "__main__":
  main()
