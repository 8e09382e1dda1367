"""Where the time of one PPO update minibatch and one reward step goes, on this host.

Two kinds of evidence, both at the anchors' shapes (``bench/ppo.py`` / ``bench/reward.py``:
GPT-2 "small" or "medium", a PPO minibatch of 16 x (32 prompt + 32 response) tokens with the
policy and a separate value model, a reward step of 32 pairs x 64 tokens):

1. **Ablations**, timed alternately in rounds within one process so that a shared machine's
   load hits every variant alike (min over rounds): the library's own step, then the same
   step with pieces removed — the optimizer update, the entropy metric, the log-softmax over
   the vocabulary (the chosen logit alone), the backward pass (forward only) — and the
   matmul-only ceiling of ``bench/ceiling.py`` for the same shapes. The differences are what
   each piece costs in the compiled program (XLA fuses across pieces, so they need not add up).
2. **Per-thunk times** from a ``jax.profiler`` trace of the compiled step: XLA:CPU runs a
   program as a sequence of thunks (one per fusion, matmul or copy); the trace has one event
   per thunk with its HLO instruction name. Each is classified from the optimized HLO (its
   fusion kind, output shape and the JAX op path in its metadata): matmul, vocabulary-sized
   (log-softmax / entropy), attention softmax and mask, layer norm, GELU, embedding gather /
   scatter, optimizer, copies / transposes / slices, other elementwise. Times are summed over
   XLA's worker threads (both cores): the sum is CPU time, which can exceed the wall time.

  python bench/profile_steps.py --size small --out bench/results/profile.jsonl
  python bench/profile_steps.py --size small --remat --no-trace          # the same, per-block remat
  python bench/profile_steps.py --size small --matmul-dtype bfloat16      # bf16 matmul operands
  python bench/profile_steps.py --only matmul      # does this CPU multiply bf16 faster than f32?
  python bench/profile_steps.py --ab "f32,f32 remat,bf16 matmuls"   # the options, alternating
  XLA_FLAGS="--xla_cpu_experimental_ynn_fusion_type=+eltwise,+reduce" python bench/profile_steps.py

``--top N`` prints the N most expensive thunks with their op paths.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

_common.set_xla_threads()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import ppo as bench_ppo  # noqa: E402
from ceiling import linear_trunk_grad  # noqa: E402

from rlhf_jax import losses, ops, ppo, reward  # noqa: E402
from rlhf_jax.models import Transformer, init_params  # noqa: E402
from rlhf_jax.update import guarded_update  # noqa: E402

# --------------------------------------------------------------------------------------------
# Per-thunk profile


def _hlo_instructions(hlo_text: str):
  """``name -> (opcode, kind, shape, op_name, fused_opcodes)`` for every HLO instruction."""
  fused_ops = collections.defaultdict(set)
  current = None
  out = {}
  line_re = re.compile(r"^\s+(?:ROOT )?%?([\w.\-]+) = (\S+?)(?:\{[^}]*\})? ([\w\-]+)\(")
  for line in hlo_text.splitlines():
    head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) \(", line)
    if head and not line.startswith(" "):
      current = head.group(1)
      continue
    m = line_re.match(line)
    if not m:
      continue
    name, shape, opcode = m.groups()
    fused_ops[current].add(opcode)
    kind = re.search(r"kind=(k\w+)", line)
    calls = re.search(r"calls=%?([\w.\-]+)", line)
    op_name = re.search(r'op_name="([^"]*)"', line)
    out[name] = (
      opcode,
      kind.group(1) if kind else "",
      shape,
      op_name.group(1) if op_name else "",
      calls.group(1) if calls else None,
    )
  return {
    k: (opc, kind, shape, op, fused_ops.get(calls, set()) if calls else set())
    for k, (opc, kind, shape, op, calls) in out.items()
  }


def classify(name: str, info, vocab: int) -> str:
  """A thunk's category from its HLO instruction (see the module docstring)."""
  if info is None:
    return "other (not in HLO)"
  opcode, kind, shape, op_name, fused = info
  if opcode in ("dot", "convolution") or "dot" in fused:
    return "matmul"
  path = op_name.lower()
  dims = re.findall(r"\d+", shape.split("{")[0])
  if "cond/" in path or "branch" in path or "adam" in path or "optimizer" in path:
    return "optimizer update"
  if dims and int(dims[-1]) == vocab and "embed" not in path:
    return "vocabulary-sized (log-softmax, entropy)"
  if opcode in ("gather", "scatter") or "gather" in fused or "scatter" in fused:
    return "embedding / index gather-scatter"
  if "/attn/" in path and "/attn/q" not in path:
    return "attention softmax + mask"
  if "norm" in path:
    return "layer norm"
  if "/mlp/" in path:
    return "GELU (MLP activation)"
  if opcode in ("copy", "transpose", "slice", "bitcast", "dynamic-slice") or (
    fused and fused <= {"copy", "transpose", "slice", "bitcast", "parameter", "dynamic-slice"}
  ):
    return "copy / transpose / slice"
  if name.startswith(("copy", "transpose", "slice")):
    return "copy / transpose / slice (fused with elementwise)"
  if opcode in ("while", "conditional", "call", "tuple", "get-tuple-element"):
    return "control flow"
  return "other elementwise / reduce"


def thunk_profile(compiled, args, vocab: int, repeats: int = 3, top: int = 0):
  """Runs ``compiled(*args)`` ``repeats`` times under the profiler; returns per-category and
  top per-thunk CPU milliseconds per call, and the traced wall time per call."""
  info = _hlo_instructions(compiled.as_text())
  jax.block_until_ready(compiled(*args))
  tmp = tempfile.mkdtemp(prefix="rlhf_jax_profile_")
  try:
    jax.profiler.start_trace(tmp)
    t0 = time.perf_counter()
    for _ in range(repeats):
      jax.block_until_ready(compiled(*args))
    wall = (time.perf_counter() - t0) / repeats
    jax.profiler.stop_trace()
    path = sorted(glob.glob(os.path.join(tmp, "**", "*.xplane.pb"), recursive=True))[-1]
    data = jax.profiler.ProfileData.from_file(path)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  per_thunk = collections.Counter()
  for plane in data.planes:
    for line in plane.lines:
      if not line.name.startswith("tf_XLA"):
        continue
      for ev in line.events:
        if ev.name.startswith(("ThunkExecutor", "ThreadpoolListener", "end: ")):
          continue
        per_thunk[ev.name] += ev.duration_ns / 1e6 / repeats
  per_cat = collections.Counter()
  for name, ms in per_thunk.items():
    per_cat[classify(name, info.get(name), vocab)] += ms
  total = sum(per_cat.values())
  rows = [
    {"category": c, "cpu_ms": round(ms, 3), "share": round(ms / total, 4)}
    for c, ms in per_cat.most_common()
  ]
  tops = []
  for name, ms in per_thunk.most_common(top):
    i = info.get(name)
    tops.append(
      {
        "thunk": name,
        "cpu_ms": round(ms, 3),
        "category": classify(name, i, vocab),
        "shape": i[2] if i else "",
        "op_name": (i[3] if i else "")[-110:],
      }
    )
  return {"wall_ms_traced": wall * 1e3, "cpu_ms_total": total, "categories": rows, "top": tops}


def print_profile(title, prof):
  print(
    f"\n== {title}: traced wall {prof['wall_ms_traced']:.1f} ms/call, "
    f"thunk CPU time {prof['cpu_ms_total']:.1f} ms/call (2 threads)"
  )
  for r in prof["categories"]:
    print(f"  {r['category']:<50s} {r['cpu_ms']:8.1f} ms  {100 * r['share']:5.1f}%")
  for r in prof["top"]:
    print(
      f"    {r['thunk']:<34s} {r['cpu_ms']:7.2f} ms  {r['category']:<28.28s} {r['shape']:<22.22s}"
      f" {r['op_name']}"
    )


# --------------------------------------------------------------------------------------------
# Ablations


def alternate(fns: dict, rounds: int, per_round: int):
  """``{name: fn}`` timed in alternating rounds; returns ``{name: summary of per-call wall
  seconds}`` and ``{name: summary of per-call CPU seconds of this process}``. On a host shared
  with other jobs the CPU time is the steadier measure of the work a variant does; the wall
  time is what a run sees."""
  for fn in fns.values():
    fn()
  wall = {k: [] for k in fns}
  cpu = {k: [] for k in fns}
  for _ in range(rounds):
    for k, fn in fns.items():
      t0, c0 = time.perf_counter(), time.process_time()
      for _ in range(per_round):
        fn()
      wall[k].append((time.perf_counter() - t0) / per_round)
      cpu[k].append((time.process_time() - c0) / per_round)
  return (
    {k: _common.summarize(v) for k, v in wall.items()},
    {k: _common.summarize(v) for k, v in cpu.items()},
  )


def print_times(title, wall, cpu, ref):
  print(f"\n== {title}; load {os.getloadavg()[0]:.2f}")
  for k in wall:
    w, c = wall[k], cpu[k]
    print(
      f"  {k:<45s} wall {1e3 * w['min']:8.1f} ms (median {1e3 * w['median']:7.1f}) {100 * w['min'] / wall[ref]['min']:5.1f}%"
      f"  | CPU {1e3 * c['min']:8.1f} ms (median {1e3 * c['median']:7.1f}) {100 * c['min'] / cpu[ref]['min']:5.1f}%"
    )


def ppo_setup(args):
  """Models, a state and one minibatch (16 rollouts) of a real rollout at the anchor shape."""
  size = args.size
  s = _common.SIZES[size]
  cfg_kw = dict(remat=args.remat)
  if args.matmul_dtype:
    cfg_kw["matmul_dtype"] = args.matmul_dtype
  policy = Transformer(bench_ppo.model_cfg(size, "float32", False, "lm", 0).replace(**cfg_kw))
  value = Transformer(bench_ppo.model_cfg(size, "float32", False, "scalar", 0).replace(**cfg_kw))
  k = jax.random.split(jax.random.PRNGKey(0), 3)
  pp, rp = init_params(policy, k[0]), init_params(value, k[1])
  params = {"policy": pp, "value": init_params(value, k[2])}
  frozen = ppo.PPOFrozen(pp, rp, jnp.float32(1.0), jnp.float32(0.0))
  opt = optax.adam(1e-5)
  state = ppo.init_ppo_state(params, opt, 0.05, jax.random.PRNGKey(1))
  hp = ppo.PPOHparams(
    response_len=args.response_len,
    num_minibatches=1,
    epochs=1,
    temperature=1.0,
    eos_id=s["vocab"],
    pad_id=0,
    adaptive_kl=False,
  )
  mb = args.minibatch
  ids = np.random.default_rng(0).integers(1, s["vocab"], (mb, args.prompt_len)).astype(np.int32)
  rollout_fn, update_fn = ppo.make_ppo_iteration(policy, value, value, opt, hp, phases=True)
  ro = jax.jit(rollout_fn)(state, frozen, ids, np.ones_like(ids))
  return policy, value, opt, hp, state, ro, update_fn


def ppo_variants(policy, value, opt, hp, state, ro, update_fn, args):
  """The library's minibatch step and the same step with pieces removed (jitted)."""
  p = args.prompt_len
  rollout = ro[0]
  heads = (p - 1, p + hp.response_len - 1)

  def make(optimizer=True, entropy=True, logsoftmax=True, backward=True):
    def loss_fn(params, mb):
      logits = policy.apply(
        {"params": params["policy"]}, mb.seq_ids_BS, mb.seq_mask_BS, head_slice=heads
      )
      values = value.apply(
        {"params": params["value"]}, mb.seq_ids_BS, mb.seq_mask_BS, head_slice=heads
      )
      tokens = mb.seq_ids_BS[:, p:]
      if logsoftmax:
        logp = ops.token_logprobs(logits, tokens, hp.temperature)
      else:  # the chosen logit alone: no reduction over the vocabulary
        logp = jnp.take_along_axis(logits, tokens[..., None], axis=-1)[..., 0]
      pg, _ = losses.ppo_policy_loss(
        logp, mb.logp_old_BT, mb.advantages_BT, mb.response_mask_BT, clip_eps=hp.clip_eps
      )
      vf, _ = losses.ppo_value_loss(
        values, mb.values_old_BT, mb.returns_BT, mb.response_mask_BT, hp.value_clip_eps
      )
      loss = pg + hp.vf_coef * vf
      ent = (
        losses.entropy_from_logits(
          jax.lax.stop_gradient(logits), mb.response_mask_BT, hp.temperature
        )
        if entropy
        else 0.0
      )
      return loss, ent

    if not backward:
      return jax.jit(lambda st, mb: loss_fn(st.params, mb))

    def step(st, mb):
      (loss, ent), grads = jax.value_and_grad(loss_fn, has_aux=True)(st.params, mb)
      if not optimizer:
        return grads, loss, ent
      new_p, new_o, _, gn = guarded_update(opt, st.params, st.opt_state, grads, loss)
      return new_p, new_o, loss, ent, gn

    return jax.jit(step)

  library = jax.jit(update_fn)
  d, n_layers, vocab = policy.cfg.d_model, policy.cfg.n_layers, policy.cfg.vocab_size
  b, t = args.minibatch, p + hp.response_len
  ceil_fn, ceil_params, ceil_x = linear_trunk_grad(
    n_layers, d, vocab, b * t, b * hp.response_len, models=2
  )
  variants = {
    "library update_phase (1 minibatch)": lambda: library(state, *ro),
    "recomposed step (same pieces)": functools_partial(make(), state, rollout),
    "- optimizer update": functools_partial(make(optimizer=False), state, rollout),
    "- entropy metric": functools_partial(make(entropy=False), state, rollout),
    "- entropy - log-softmax over V": functools_partial(
      make(entropy=False, logsoftmax=False), state, rollout
    ),
    "forward only (loss + entropy)": functools_partial(make(backward=False), state, rollout),
    "matmul-only ceiling (bench/ceiling.py)": lambda: ceil_fn(ceil_params, ceil_x),
  }
  return variants, library


def functools_partial(fn, *a):
  return lambda: fn(*a)


def reward_setup(args):
  s = _common.SIZES[args.size]
  cfg_kw = dict(remat=args.remat)
  if args.matmul_dtype:
    cfg_kw["matmul_dtype"] = args.matmul_dtype
  cfg = bench_ppo.model_cfg(args.size, "float32", False, "scalar", 0).replace(**cfg_kw)
  model = Transformer(cfg)
  hp = reward.RewardHparams(tie_model="bradley_terry", learn_tie_param=False)
  opt = optax.adamw(1e-5)
  state = reward.init_reward_state(init_params(model, jax.random.PRNGKey(0)), opt, hp)
  b, t = args.pairs, args.seq_len
  batch = _common.reward_batch(b, t, s["vocab"])
  step = reward.make_reward_step(model, opt, hp)
  library = jax.jit(step)

  def grad_only(st, bt):
    def loss(params):
      r_a, r_b = reward.make_pair_scorer(model)(params["model"], bt)
      return jnp.mean(losses.preference_loss(r_a, r_b, bt["label"], "bradley_terry", None))

    return jax.grad(loss)(st.params)

  grad_j = jax.jit(grad_only)
  fwd_j = jax.jit(lambda st, bt: reward.make_pair_scorer(model)(st.params["model"], bt))
  ceil_fn, ceil_params, ceil_x = linear_trunk_grad(
    cfg.n_layers, cfg.d_model, cfg.vocab_size, 2 * b * t, 0, models=1
  )
  variants = {
    "library reward step": lambda: library(state, batch),
    "- optimizer update (grad only)": lambda: grad_j(state, batch),
    "forward only": lambda: fwd_j(state, batch),
    "matmul-only ceiling (bench/ceiling.py)": lambda: ceil_fn(ceil_params, ceil_x),
  }
  return variants, library, (state, batch), cfg


AB_CONFIGS = {
  "f32": {},
  "f32 remat": {"remat": True},
  "bf16 matmuls": {"matmul_dtype": "bfloat16"},
  "bf16 matmuls remat": {"matmul_dtype": "bfloat16", "remat": True},
}


def ab(args):
  """The library's PPO minibatch step and reward step under each of ``--ab`` configs,
  timed alternately in one process (min over rounds)."""
  fns = {}
  for name in args.ab.split(","):
    kw = AB_CONFIGS[name]
    sub = argparse.Namespace(
      **dict(vars(args), remat=kw.get("remat", False), matmul_dtype=kw.get("matmul_dtype"))
    )
    if "ppo" in args.only:
      policy, value, opt, hp, state, ro, update_fn = ppo_setup(sub)
      fn = jax.jit(update_fn)
      fns[f"ppo minibatch, {name}"] = functools_partial(fn, state, *ro)
    if "reward" in args.only:
      variants, library, rargs, cfg = reward_setup(sub)
      fns[f"reward step, {name}"] = functools_partial(library, *rargs)
  wall, cpu = alternate({k: blocked(v) for k, v in fns.items()}, args.rounds, args.per_round)
  print_times(
    f"A/B ({args.size}), XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}", wall, cpu, next(iter(wall))
  )
  return {"wall_s": wall, "cpu_s": cpu}


def matmul_rates(n=2048, rounds=4):
  """GFLOP per CPU-second of an n^3 f32 matmul and of a bf16 x bf16 -> f32 one, alternating:
  whether this CPU multiplies bfloat16 faster than float32 (AVX512-BF16) or not."""
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  b16 = a.astype(jnp.bfloat16)
  fns = {
    "f32": functools_partial(jax.jit(lambda x, y: x @ y), a, a),
    "bf16 x bf16 -> f32": functools_partial(
      jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32)), b16, b16
    ),
  }
  wall, cpu = alternate({k: blocked(v) for k, v in fns.items()}, rounds, 1)
  out = {
    k: {
      "gflop_per_cpu_s": 2 * n**3 / cpu[k]["min"] / 1e9,
      "gflops_wall": 2 * n**3 / wall[k]["min"] / 1e9,
    }
    for k in fns
  }
  print(f"\n== {n}^3 matmul, load {os.getloadavg()[0]:.2f}")
  for k, v in out.items():
    print(
      f"  {k:<22s} {v['gflop_per_cpu_s']:7.1f} GFLOP per CPU-second, {v['gflops_wall']:7.1f} GFLOP/s wall"
    )
  return out


def blocked(fn):
  return lambda: jax.block_until_ready(fn())


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--size", default="small")
  ap.add_argument("--minibatch", type=int, default=16)
  ap.add_argument("--prompt-len", type=int, default=32)
  ap.add_argument("--response-len", type=int, default=32)
  ap.add_argument("--pairs", type=int, default=32)
  ap.add_argument("--seq-len", type=int, default=64)
  ap.add_argument("--remat", action="store_true")
  ap.add_argument("--matmul-dtype", default=None)
  ap.add_argument("--rounds", type=int, default=5)
  ap.add_argument("--per-round", type=int, default=3)
  ap.add_argument("--top", type=int, default=12)
  ap.add_argument("--no-trace", action="store_true")
  ap.add_argument("--only", default="ppo,reward")
  ap.add_argument("--ab", default=None, help=f"compare configs: some of {list(AB_CONFIGS)}")
  ap.add_argument("--out", default=None)
  args = ap.parse_args()
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  base = {
    "size": args.size,
    "remat": args.remat,
    "matmul_dtype": args.matmul_dtype,
    "info": _common.info(),
  }
  only = args.only.split(",")
  if "matmul" in only:
    _common.emit(dict(base, tag="profile_matmul_rates", rates=matmul_rates()), args.out)
  if args.ab:
    _common.emit(dict(base, tag="profile_ab", ab=args.ab, **ab(args)), args.out)
    return
  if "ppo" in only:
    policy, value, opt, hp, state, ro, update_fn = ppo_setup(args)
    variants, library = ppo_variants(policy, value, opt, hp, state, ro, update_fn, args)
    profile_step(
      f"PPO minibatch ({args.minibatch} x {args.prompt_len}+{args.response_len} tokens,"
      f" policy + value), {args.size}",
      dict(base, tag="profile_ppo_minibatch"),
      variants,
      library,
      (state, *ro),
      policy.cfg.vocab_size,
      args,
    )
  if "reward" in only:
    variants, library, rargs, cfg = reward_setup(args)
    profile_step(
      f"reward step ({args.pairs} pairs x {args.seq_len} tokens), {args.size}",
      dict(base, tag="profile_reward_step"),
      variants,
      library,
      rargs,
      cfg.vocab_size,
      args,
    )


def profile_step(title, rec, variants, library, step_args, vocab, args):
  """The ablations of one step timed alternately, then (unless ``--no-trace``) the per-thunk
  profile of the library's step; printed, and emitted as ``rec`` with both."""
  wall, cpu = alternate({k: blocked(v) for k, v in variants.items()}, args.rounds, args.per_round)
  print_times(title, wall, cpu, next(iter(wall)))
  rec = dict(rec, ablation_wall_s=wall, ablation_cpu_s=cpu)
  if not args.no_trace:
    compiled = library.lower(*step_args).compile()
    prof = thunk_profile(compiled, step_args, vocab, top=args.top)
    print_profile(f"{title.split(' (')[0]} per-thunk", prof)
    rec["thunks"] = prof
  _common.emit(rec, args.out)


if __name__ == "__main__":
  main()
