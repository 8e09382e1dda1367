"""PPO iteration throughput on the anchor workload, side by side with TRL and Tunix.

Workload (``../shared/anchors``): GPT-2 "small" / "medium" (random init), 64 prompts x 32
random tokens, 32 sampled response tokens (temperature 1, no stop token), policy +
reference + separate value model + reward model, 4 epochs x 4 minibatches of 16, one
optimizer step per minibatch (Adam, lr 1e-5), fixed KL coefficient 0.05 (k1), float32.

Reports samples/s of whole iterations (first iteration = compilation, excluded), the time
of the rollout phase and the update phase measured separately, the update phase's achieved
GFLOP/s (model FLOPs only: 6 * matmul params * tokens + attention, LM head on response
positions only) against the float32 matmul peak measured in the same run, and — when the
peers' virtual environments exist under $VENVS — TRL 1.12 PPOTrainer and Tunix PPOLearner
on the same workload, in the same run, as ratios.

  python bench/ppo.py --sizes small,medium --out bench/results/ppo.jsonl
  python bench/ppo.py --sizes small --dtype bfloat16 --no-peers     # bf16 compute
  python bench/ppo.py --sizes small --shared-trunk --no-peers       # value head on the policy
  python bench/ppo.py --sizes small --matmul-dtype bfloat16 --no-peers  # bf16 matmuls, f32 rest
  python bench/ppo.py --sizes small --compare f32,remat,bf16 --no-peers  # A/B, alternating
  python bench/ppo.py --sizes smollm2 --batch 16 --iters 2 --scan-unroll 1  # SmolLM2-135M shape

``--sizes smollm2`` is SmolLM2-135M's shape (Llama family, 30 x 576, GQA 9:3, vocabulary
49 152, tied; random init); TRL runs it through ``bench/peers/anchor_llama.py`` with the same
workload arguments; the Tunix anchor has no Llama shape and is skipped there.

``--compare`` builds each variant (``f32``: the defaults; ``remat``: per-block remat; ``bf16``:
``matmul_dtype=bfloat16``; ``bf16_remat``) and times whole iterations and update phases of all
of them in alternating rounds, so that a shared host's load falls on every variant alike; it
reports wall and process-CPU seconds (the steadier measure when other jobs share the cores).
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

from rlhf_jax import generation, ppo  # noqa: E402
from rlhf_jax.models import Transformer, TransformerConfig, init_params  # noqa: E402


def model_cfg(size, dtype, remat, head, scan_unroll=1, matmul_dtype=None):
  return _common.transformer_config(
    size, head, dtype=dtype, remat=remat, scan_unroll=scan_unroll, matmul_dtype=matmul_dtype
  )


def update_flops(cfg: TransformerConfig, batch, prompt_len, resp_len, epochs, shared_trunk):
  """Model FLOPs of the update phase (forward + backward = 3x forward), the LM head on the
  response positions only."""
  per_model_fwd = (
    _common.forward_flops_per_token(cfg, prompt_len + resp_len) * batch * (prompt_len + resp_len)
  )
  policy = per_model_fwd + 2 * cfg.vocab_size * cfg.d_model * batch * resp_len
  value = 0 if shared_trunk else per_model_fwd
  return 3 * (policy + value) * epochs


def _hparams(size, args) -> ppo.PPOHparams:
  """The benchmark's PPO settings (fixed β, whitened advantages, no stop token)."""
  return ppo.PPOHparams(
    response_len=args.response_len,
    num_minibatches=args.minibatches,
    epochs=args.epochs,
    temperature=1.0,
    eos_id=_common.SIZES[size]["vocab"],
    pad_id=0,
    adaptive_kl=False,
    whiten_advantages=True,
    shared_trunk=args.shared_trunk,
  )


def bench_ours(size, args, peak):
  b, p, n = args.batch, args.prompt_len, args.response_len
  hp = _hparams(size, args)
  head = "both" if args.shared_trunk else "lm"
  policy = Transformer(
    model_cfg(size, args.dtype, args.remat, head, args.scan_unroll, args.matmul_dtype)
  )
  rm = Transformer(
    model_cfg(size, args.dtype, args.remat, "scalar", args.scan_unroll, args.matmul_dtype)
  )
  k = jax.random.split(jax.random.PRNGKey(0), 3)
  pp = init_params(policy, k[0])
  rp = init_params(rm, k[1])
  params = {"policy": pp} if args.shared_trunk else {"policy": pp, "value": init_params(rm, k[2])}
  ref = jax.tree.map(jnp.copy, {key: v for key, v in pp.items() if key != "score"})
  frozen = ppo.PPOFrozen(ref, rp, jnp.float32(1.0), jnp.float32(0.0))
  opt = optax.adam(1e-5)
  state = ppo.init_ppo_state(params, opt, 0.05, jax.random.PRNGKey(1))
  ids = np.random.default_rng(0).integers(1, _common.SIZES[size]["vocab"], (b, p)).astype(np.int32)
  mask = np.ones_like(ids)
  value_model = None if args.shared_trunk else rm
  it = jax.jit(ppo.make_ppo_iteration(policy, value_model, rm, opt, hp), donate_argnums=0)
  holder = {"state": state}

  def one():
    holder["state"], m = it(holder["state"], frozen, ids, mask)
    jax.block_until_ready(m)

  t0 = time.perf_counter()
  one()
  first = time.perf_counter() - t0
  whole = _common.timeit(one, args.iters, warmup=0)

  rollout_fn, update_fn = ppo.make_ppo_iteration(policy, value_model, rm, opt, hp, phases=True)
  rollout_j = jax.jit(rollout_fn)
  update_j = jax.jit(update_fn)
  st = holder["state"]
  ro = rollout_j(st, frozen, ids, mask)
  jax.block_until_ready(ro)
  t_roll = _common.timeit(
    lambda: jax.block_until_ready(rollout_j(st, frozen, ids, mask)), args.iters
  )
  t_upd = _common.timeit(lambda: jax.block_until_ready(update_j(st, *ro)), args.iters)
  # The sampler as the iteration runs it (a pure function inside the program, params as the
  # state stores them) next to the public sampler that bench/generate.py times.
  pol = st.params["policy"]
  inner = jax.jit(lambda prm, r: ppo.sample_responses(policy, hp, prm, ids, mask, r)[0])
  seeds = iter(range(1, 10_000))
  jax.block_until_ready(inner(pol, jax.random.PRNGKey(0)))
  t_inner = _common.timeit(
    lambda: jax.block_until_ready(inner(pol, jax.random.PRNGKey(next(seeds)))), args.iters
  )

  def public():
    out = generation.sample(
      policy,
      pol,
      ids,
      mask,
      jax.random.PRNGKey(next(seeds)),
      max_new_tokens=n,
      eos_id=hp.eos_id,
      pad_id=hp.pad_id,
      temperature=1.0,
      top_k=0,
      top_p=1.0,
    )
    jax.block_until_ready(out.tokens_BT)

  public()
  t_public = _common.timeit(public, args.iters)
  flops = update_flops(policy.cfg, b, p, n, args.epochs, args.shared_trunk)
  upd_gflops = flops / t_upd["median"] / 1e9
  rec = {
    "tag": "ppo_rlhf_jax",
    "size": size,
    "dtype": args.dtype,
    "remat": args.remat,
    "matmul_dtype": args.matmul_dtype,
    "scan_unroll": policy.cfg.scan_unroll,
    "shared_trunk": args.shared_trunk,
    "batch": b,
    "prompt_len": p,
    "response_len": n,
    "epochs": args.epochs,
    "minibatches": args.minibatches,
    "first_iter_s": first,
    "s_per_iter": whole,
    "samples_per_s_median": b / whole["median"],
    "samples_per_s_best": b / whole["min"],
    "rollout_phase_s": t_roll,
    "update_phase_s": t_upd,
    "update_gflop": flops / 1e9,
    "sampler_in_iteration_s": t_inner,
    "generation_sample_s": t_public,
    "sampler_in_iteration_tok_per_s": b * n / t_inner["median"],
    "generation_sample_tok_per_s": b * n / t_public["median"],
    "update_gflops_median": upd_gflops,
    "update_fraction_of_peak": upd_gflops / peak["gflops_best"],
    "info": _common.info(),
  }
  _common.emit(rec, args.out)
  return rec


COMPARE = _common.COMPARE_VARIANTS


def compare(size, args, peak):
  """Whole iterations and update phases of each ``--compare`` variant, alternating."""
  b, p, n = args.batch, args.prompt_len, args.response_len
  hp = _hparams(size, args)
  ids = np.random.default_rng(0).integers(1, _common.SIZES[size]["vocab"], (b, p)).astype(np.int32)
  mask = np.ones_like(ids)
  runs = {}
  for name in args.compare.split(","):
    kw = COMPARE[name]
    head = "both" if args.shared_trunk else "lm"
    cfg = dict(scan_unroll=args.scan_unroll, matmul_dtype=kw.get("matmul_dtype"))
    policy = Transformer(model_cfg(size, args.dtype, kw.get("remat", False), head, **cfg))
    rm = Transformer(model_cfg(size, args.dtype, kw.get("remat", False), "scalar", **cfg))
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    pp, rp = init_params(policy, k[0]), init_params(rm, k[1])
    params = {"policy": pp} if args.shared_trunk else {"policy": pp, "value": init_params(rm, k[2])}
    ref = jax.tree.map(jnp.copy, {key: v for key, v in pp.items() if key != "score"})
    frozen = ppo.PPOFrozen(ref, rp, jnp.float32(1.0), jnp.float32(0.0))
    opt = optax.adam(1e-5)
    state = ppo.init_ppo_state(params, opt, 0.05, jax.random.PRNGKey(1))
    value_model = None if args.shared_trunk else rm
    it = jax.jit(ppo.make_ppo_iteration(policy, value_model, rm, opt, hp), donate_argnums=0)
    rollout_fn, update_fn = ppo.make_ppo_iteration(policy, value_model, rm, opt, hp, phases=True)
    holder = {"state": state}

    def one(it=it, holder=holder, frozen=frozen):
      holder["state"], m = it(holder["state"], frozen, ids, mask)
      jax.block_until_ready(m)

    one()
    st = jax.tree.map(jnp.copy, holder["state"])  # the iteration donates holder's state
    ro = jax.jit(rollout_fn)(st, frozen, ids, mask)
    update_j = jax.jit(update_fn)

    def upd(update_j=update_j, st=st, ro=ro):
      jax.block_until_ready(update_j(st, *ro))

    upd()
    runs[name] = (one, upd, policy.cfg)
  times = {name: {"iter": [], "update": [], "iter_cpu": [], "update_cpu": []} for name in runs}
  loads = []
  for _ in range(args.iters):
    loads.append(os.getloadavg()[0])
    for name, (one, upd, _) in runs.items():
      for key, fn in (("iter", one), ("update", upd)):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        times[name][key].append(time.perf_counter() - t0)
        times[name][f"{key}_cpu"].append(time.process_time() - c0)
  rows = []
  for name, (_, _, cfg) in runs.items():
    t = {key: _common.summarize(v) for key, v in times[name].items()}
    flops = update_flops(cfg, b, p, n, args.epochs, args.shared_trunk)
    rec = {
      "tag": "ppo_rlhf_jax_compare",
      "variant": name,
      "size": size,
      "dtype": args.dtype,
      "remat": cfg.remat,
      "matmul_dtype": cfg.matmul_dtype,
      "shared_trunk": args.shared_trunk,
      "batch": b,
      "s_per_iter": t["iter"],
      "cpu_s_per_iter": t["iter_cpu"],
      "update_phase_s": t["update"],
      "update_phase_cpu_s": t["update_cpu"],
      "samples_per_s_median": b / t["iter"]["median"],
      "samples_per_s_best": b / t["iter"]["min"],
      "update_gflops_best": flops / t["update"]["min"] / 1e9,
      "update_gflops_cpu_best": flops / t["update_cpu"]["min"] / 1e9,
      "update_fraction_of_peak": flops / t["update"]["min"] / 1e9 / peak["gflops_best"],
      "loadavg_per_round": loads,
      "info": _common.info(),
    }
    _common.emit(rec, args.out)
    rows.append(rec)
  base = rows[0]
  for r in rows:
    print(
      f"[compare] {size} {r['variant']:<10s} iter {r['s_per_iter']['min']:.3f} s "
      f"({r['samples_per_s_best']:.1f} samples/s, x{base['s_per_iter']['min'] / r['s_per_iter']['min']:.2f})"
      f"  update {r['update_phase_s']['min']:.3f} s wall / {r['update_phase_cpu_s']['min']:.3f} s CPU"
      f" (x{base['update_phase_s']['min'] / r['update_phase_s']['min']:.2f} wall,"
      f" x{base['update_phase_cpu_s']['min'] / r['update_phase_cpu_s']['min']:.2f} CPU)",
      flush=True,
    )
  return rows


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--sizes", default="small,medium")
  ap.add_argument("--batch", type=int, default=64)
  ap.add_argument("--prompt-len", type=int, default=32)
  ap.add_argument("--response-len", type=int, default=32)
  ap.add_argument("--epochs", type=int, default=4)
  ap.add_argument("--minibatches", type=int, default=4)
  ap.add_argument("--iters", type=int, default=5)
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
  ap.add_argument("--shared-trunk", action="store_true")
  ap.add_argument("--no-peers", action="store_true")
  ap.add_argument("--out", default=None)
  args = ap.parse_args()
  peak = _common.begin(args.out)
  if args.dtype != "float32":  # does XLA:CPU run this dtype's matmuls faster than float32?
    _common.emit(
      dict(
        _common.matmul_peak(dtype=args.dtype), tag=f"matmul_peak_{args.dtype}", info=_common.info()
      ),
      args.out,
    )
  summary = []
  if args.compare:
    for size in args.sizes.split(","):
      compare(size, args, peak)
    return
  for size in args.sizes.split(","):
    ours = bench_ours(size, args, peak)
    line = {
      "size": size,
      "dtype": args.dtype,
      "shared_trunk": args.shared_trunk,
      "ours_samples_per_s": ours["samples_per_s_median"],
      "update_fraction_of_peak": ours["update_fraction_of_peak"],
    }
    if not args.no_peers:
      iters = {"small": "6", "medium": "4"}.get(size, str(args.iters + 1))
      workload = [
        *("--iters", iters, "--batch", str(args.batch), "--epochs", str(args.epochs)),
        *("--prompt-len", str(args.prompt_len), "--response-len", str(args.response_len)),
      ]
      trl = _common.run_anchor(
        "trl112", "ppo_trl112.py", size, [*workload, "--minibatches", str(args.minibatches)]
      )
      tunix = []  # the Tunix anchor builds its own Qwen3 for the GPT-2 sizes only
      if "hf" not in _common.SIZES[size]:
        tunix = _common.run_anchor(
          "tunix",
          "ppo_tunix.py",
          size,
          [*workload[2:], "--iters", "5" if size == "small" else "4"]
          + ["--mini-batch", str(args.batch // args.minibatches)],
        )
      for name, recs in (("trl", trl), ("tunix", tunix)):
        if recs:
          r = recs[-1]
          _common.emit(dict(r, tag=f"peer_{r.get('tag', name)}"), args.out)
          line[f"{name}_samples_per_s"] = r["samples_per_s_median"]
          line[f"ratio_vs_{name}"] = ours["samples_per_s_median"] / r["samples_per_s_median"]
    summary.append(line)
  _common.emit({"tag": "ppo_summary", "rows": summary}, args.out)


if __name__ == "__main__":
  main()
