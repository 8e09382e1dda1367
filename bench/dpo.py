"""DPO training throughput (pairs/s) on GPT-2 "small", side by side with TRL ``DPOTrainer``.

Workload (the peer is ``bench/peers/dpo_trl.py``, run in ``$VENVS/torch`` when it exists):
GPT-2 "small" language model (random init), 32 pairs per step, each a 32-token random
prompt and two 32-token responses (31 random tokens, then EOS) = 64 sequences of 64
tokens, sigmoid DPO loss, beta 0.1, Adam lr 1e-5, float32. Two settings of the reference,
the same on both sides:

* ``precompute`` (this library's way, :func:`rlhf_jax.train.dpo.train_dpo`; TRL's
  ``precompute_ref_log_probs=True``): the reference's summed response log-probs of every
  pair are computed once before training (timed on its own) and each step runs the policy
  only;
* ``live`` (TRL's default): each step also runs the frozen reference on its batch (here the
  jitted step is ``make_pair_logprobs`` on the reference params, then ``make_dpo_step``).

pairs/s = 32 / median step time; the first two steps (compilation) are excluded, as TRL's
first two. The step's model GFLOP/s (policy forward + backward, plus the reference forward
when live; LM head on response positions only) is set against the f32 matmul peak measured
in the same run.

  python bench/dpo.py --out bench/results/dpo.jsonl                  # both settings, with TRL
  python bench/dpo.py --refs precompute --no-peers                   # ours only
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
from ppo import model_cfg  # noqa: E402  (the anchors' GPT-2 shapes)

from rlhf_jax import dpo as dpo_lib  # noqa: E402
from rlhf_jax.models import Transformer, TransformerConfig, init_params  # noqa: E402

PEER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers", "dpo_trl.py")


def dpo_step_flops(cfg: TransformerConfig, pairs, prompt_len, resp_len, live_ref):
  """Model FLOPs of one step: policy forward + backward (3x forward) over both sides, plus a
  reference forward when it runs in the step. Full (not causal-halved) attention; the LM
  head only on the positions that predict response tokens."""
  seqs, t = 2 * pairs, prompt_len + resp_len
  tokens = seqs * t
  fwd = 2 * 12 * cfg.n_layers * cfg.d_model**2 * tokens
  fwd += 2 * 2 * cfg.n_layers * cfg.d_model * t * tokens
  fwd += 2 * cfg.vocab_size * cfg.d_model * seqs * resp_len
  return (3 + (1 if live_ref else 0)) * fwd


def make_pairs(n, prompt_len, resp_len, vocab, seed=0):
  """``n`` pairs in the library's layout: prompt then response (31 random ids + EOS), all
  real tokens, label "a preferred"."""
  rng = np.random.default_rng(seed)
  eos = vocab - 1
  prompt = rng.integers(0, vocab - 2, (n, prompt_len)).astype(np.int32)
  out = {}
  for side in ("a", "b"):
    resp = rng.integers(0, vocab - 2, (n, resp_len)).astype(np.int32)
    resp[:, -1] = eos
    out[f"ids_{side}"] = np.concatenate([prompt, resp], 1)
    out[f"mask_{side}"] = np.ones((n, prompt_len + resp_len), np.int32)
  out["label"] = np.zeros(n, np.int32)
  return out


def bench_ours(ref_mode, args, peak):
  b, p, n = args.pairs, args.prompt_len, args.response_len
  vocab = _common.SIZES[args.size]["vocab"]
  model = Transformer(model_cfg(args.size, "float32", False, "lm", args.scan_unroll))
  ref = init_params(model, jax.random.PRNGKey(0))
  hp = dpo_lib.DPOHparams(beta=args.beta)
  opt = dpo_lib.dpo_optimizer(optax.adam(1e-5), hp)
  state = dpo_lib.init_dpo_state(jax.tree.map(jnp.copy, ref), opt, hp)
  n_steps = args.warmup + args.steps
  data = make_pairs(b * n_steps, p, n, vocab)
  batches = [{k: v[i * b : (i + 1) * b] for k, v in data.items()} for i in range(n_steps)]
  pair_logprobs = jax.jit(dpo_lib.make_pair_logprobs(model, n))
  dpo_step = dpo_lib.make_dpo_step(model, opt, hp, n)
  precompute_s = None
  if ref_mode == "precompute":  # once over the whole set, as train_dpo does
    t0 = time.perf_counter()
    for batch in batches:
      ra, rb = pair_logprobs(ref, batch)
      batch["ref_logp_a"], batch["ref_logp_b"] = np.asarray(ra), np.asarray(rb)
    precompute_s = time.perf_counter() - t0  # includes its compilation
    step = jax.jit(dpo_step, donate_argnums=0)
  else:

    def live(state, batch, ref_params):
      ra, rb = dpo_lib.make_pair_logprobs(model, n)(ref_params, batch)
      return dpo_step(state, dict(batch, ref_logp_a=ra, ref_logp_b=rb))

    live_j = jax.jit(live, donate_argnums=0)

    def step(state, batch):
      return live_j(state, batch, ref)

  holder = {"state": state, "i": 0}

  def one():
    holder["state"], m = step(holder["state"], batches[holder["i"]])
    holder["i"] += 1
    jax.block_until_ready(m)

  t_step = _common.timeit(one, args.steps, warmup=args.warmup)
  flops = dpo_step_flops(model.cfg, b, p, n, ref_mode == "live")
  gflops = flops / t_step["median"] / 1e9
  rec = {
    "tag": "dpo_rlhf_jax",
    "size": args.size,
    "ref": ref_mode,
    "dtype": "float32",
    "scan_unroll": model.cfg.scan_unroll,
    "pairs_per_step": b,
    "prompt_len": p,
    "response_len": n,
    "beta": args.beta,
    "s_per_step": t_step,
    "pairs_per_s_median": b / t_step["median"],
    "pairs_per_s_best": b / t_step["min"],
    "ref_precompute_s": precompute_s,
    "train_pairs": b * n_steps,
    "step_gflop": flops / 1e9,
    "gflops_median": gflops,
    "fraction_of_peak": gflops / peak["gflops_best"],
    "info": _common.info(),
  }
  _common.emit(rec, args.out)
  return rec


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--size", default="small", choices=list(_common.SIZES))
  ap.add_argument("--refs", default="precompute,live", help="reference settings to run")
  ap.add_argument("--pairs", type=int, default=32, help="pairs per step")
  ap.add_argument("--prompt-len", type=int, default=32)
  ap.add_argument("--response-len", type=int, default=32)
  ap.add_argument("--beta", type=float, default=0.1)
  ap.add_argument("--steps", type=int, default=12, help="timed steps")
  ap.add_argument("--warmup", type=int, default=2)
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
  for ref_mode in args.refs.split(","):
    if ref_mode not in ("precompute", "live"):
      ap.error(f"--refs: {ref_mode!r} is not 'precompute' or 'live'")
    ours = bench_ours(ref_mode, args, peak)
    row = {"size": args.size, "ref": ref_mode, "ours_pairs_per_s": ours["pairs_per_s_median"]}
    if not args.no_peers:
      recs = _common.run_peer(
        "torch",
        PEER,
        [
          "--size",
          args.size,
          "--ref",
          ref_mode,
          "--batch",
          str(args.pairs),
          "--prompt-len",
          str(args.prompt_len),
          "--response-len",
          str(args.response_len),
          "--beta",
          str(args.beta),
          "--steps",
          str(args.steps),
          "--warmup",
          str(args.warmup),
        ],
      )
      _common.record_peer(row, recs, "peer_dpo_trl", "trl", "pairs_per_s", ours, args.out)
    rows.append(row)
  _common.emit({"tag": "dpo_summary", "rows": rows, "info": _common.info()}, args.out)


if __name__ == "__main__":
  main()
