"""Memory and time plan for real model sizes, by ahead-of-time compilation on simulated meshes.

For Llama-family shapes (0.5B, 1B, 8B, 70B) on meshes of 8, 64 and 256 devices
(``data x fsdp x tensor``), this compiles, on abstract shapes only (``jax.ShapeDtypeStruct``
with shardings; no weights are allocated), the programs that dominate a run:

* the PPO iteration (:func:`rlhf_jax.ppo.make_ppo_iteration`): rollout with the KV-cache
  sampler, reference / value / reward forward passes, GAE, and ``epochs x minibatches``
  updates of policy and value, with policy + value trained (Adam) and reference + reward
  frozen;
* the reward-model step (:func:`rlhf_jax.reward.make_reward_step`) on preference pairs;
* the rollout sampler alone (:func:`rlhf_jax.ppo.sample_responses`), for a few cells;

and reads XLA's per-device memory analysis (``compiled.memory_analysis()``: argument, output,
temporary and aliased bytes). Params and optimizer bytes are exact (shard sizes of the
full-depth state). Temporaries are compiled at two small depths and extrapolated linearly in
the number of layers, on 8 (or 16) simulated devices; 64- and 256-device rows take them from
the compiled mesh with the same tensor degree (an upper bound, see :data:`DERIVED`). FLOPs are
analytic model FLOPs (XLA's cost analysis counts a loop body once; it is kept in the JSON).

Each device count runs in its own subprocess (the simulated CPU device count,
``jax_num_cpu_devices``, is fixed once a process's backend starts). The CPU compiler's memory
analysis is an estimate of what TPU/GPU compilers allocate: fusion, layouts and the scheduler
differ, so treat the numbers as a plan with a margin (the table's "fits" column keeps 10% of
the device memory free for the runtime and fragmentation), not a guarantee.

  nice -n 10 python bench/scale_plan.py            # the table (cells cached in the JSON)
  python bench/scale_plan.py --sizes 0.5B --programs reward --json /tmp/p.json --md /tmp/p.md
  python bench/scale_plan.py --fresh --no-constraints   # without activation constraints

Outputs: ``docs/scale_plan.md`` (Markdown) and ``bench/results/scale_plan.json`` (raw).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import threading
import time
from typing import Any, Optional

# Llama-family shapes. 0.5B: Qwen2.5-0.5B (tied embeddings, q/k/v biases); 1B: Llama-3.2-1B
# (tied embeddings); 8B: Llama-3-8B; 70B: Llama-3-70B.
SHAPES = {
  "0.5B": dict(
    n_layers=24,
    d_model=896,
    n_heads=14,
    n_kv_heads=2,
    d_ff=4864,
    vocab_size=151936,
    tie_embeddings=True,
    qkv_bias=True,
  ),
  "1B": dict(
    n_layers=16,
    d_model=2048,
    n_heads=32,
    n_kv_heads=8,
    d_ff=8192,
    vocab_size=128256,
    tie_embeddings=True,
    qkv_bias=False,
  ),
  "8B": dict(
    n_layers=32,
    d_model=4096,
    n_heads=32,
    n_kv_heads=8,
    d_ff=14336,
    vocab_size=128256,
    tie_embeddings=False,
    qkv_bias=False,
  ),
  "70B": dict(
    n_layers=80,
    d_model=8192,
    n_heads=64,
    n_kv_heads=8,
    d_ff=28672,
    vocab_size=128256,
    tie_embeddings=False,
    qkv_bias=False,
  ),
}

# Compiled cells: (devices, mesh (data, fsdp, tensor), sizes, programs), all on 8 simulated
# devices (XLA:CPU's SPMD compile of these programs takes tens of minutes per cell on 64+
# devices on a 2-core machine).
COMPILED = [
  (8, (1, 8, 1), ("0.5B", "1B", "8B", "70B"), ("ppo", "reward")),
  (8, (1, 2, 4), ("8B", "70B"), ("ppo",)),
  (8, (1, 8, 1), ("1B", "8B"), ("sampler",)),
  (8, (1, 2, 4), ("8B",), ("sampler",)),
  (16, (1, 2, 8), ("70B",), ("ppo",)),
]
# Larger meshes: (devices, mesh, sizes, programs, the compiled 8-device mesh whose activations
# they take). With the same per-device batch and the same tensor-parallel degree (fsdp > 1 in
# both), the temporaries are the same program per device -- activations, gathered weights
# (whole layers / tensor), logits -- except gradient and optimizer temporaries, which shrink
# with the fsdp degree; so the 8-device value is an upper bound. Params and optimizer state are
# measured exactly on the larger mesh.
DERIVED = [
  (64, (1, 64, 1), ("8B", "70B"), ("ppo", "reward"), (1, 8, 1)),
  (64, (1, 16, 4), ("8B", "70B"), ("ppo",), (1, 2, 4)),
  (256, (1, 256, 1), ("70B",), ("ppo", "reward"), (1, 8, 1)),
  (256, (1, 64, 4), ("70B",), ("ppo",), (1, 2, 4)),
  (64, (1, 8, 8), ("70B",), ("ppo",), (1, 2, 8)),
  (256, (1, 32, 8), ("70B",), ("ppo",), (1, 2, 8)),
]

ACCELERATOR_GIB = (16, 32, 80, 95)
HEADROOM = 0.9  # a mesh "fits" when its peak is below 90% of the device memory


@dataclasses.dataclass(frozen=True)
class Workload:
  """The per-iteration workload (static shapes)."""

  prompt_len: int = 256
  response_len: int = 256
  rollouts_per_device: int = 4  # PPO rollouts per batch-shard device (data x fsdp)
  num_minibatches: int = 2  # PPO: minibatch = rollouts / num_minibatches
  epochs: int = 1  # PPO epochs per iteration (the FLOPs scale with it; memory does not)
  pairs_per_device: int = 4  # reward step: preference pairs per batch-shard device
  dtype: str = "bfloat16"  # compute dtype
  param_dtype: str = "float32"  # params and Adam moments
  remat: bool = True  # recompute each block in the backward pass


def model_config(size: str, head: str, wl: Workload, n_layers: Optional[int] = None):
  from rlhf_jax.models import TransformerConfig

  s = dict(SHAPES[size])
  if n_layers is not None:
    s["n_layers"] = n_layers
  return TransformerConfig(
    **s,
    max_len=wl.prompt_len + wl.response_len,
    norm="rmsnorm",
    norm_eps=1e-5,
    mlp="swiglu",
    activation="silu",
    position="rope",
    rope_theta=500000.0,
    out_bias=False,
    mlp_bias=False,
    head=head,
    dtype=wl.dtype,
    param_dtype=wl.param_dtype,
    remat=wl.remat,
    scan_unroll=1,
  )


# ------------------------------------------------------------------------------- analytic FLOPs
def forward_flops(size: str, tokens: int, head_tokens: int, seq_len: int, vocab_head: bool):
  """Model FLOPs of one forward pass: ``2 x matmul params`` per token for the trunk, attention
  (QK^T and AV over the whole ``seq_len``, not halved for causality), and the LM head (or the
  scalar head, negligible) on ``head_tokens`` positions only."""
  s = SHAPES[size]
  d, ff, nl = s["d_model"], s["d_ff"], s["n_layers"]
  hd = d // s["n_heads"]
  attn_w = d * hd * (2 * s["n_heads"] + 2 * s["n_kv_heads"])  # q, o + k, v
  layer = attn_w + 3 * d * ff  # SwiGLU: gate, up, down
  trunk = 2 * nl * layer * tokens + 4 * nl * s["n_heads"] * hd * seq_len * tokens
  head = 2 * d * s["vocab_size"] * head_tokens if vocab_head else 0
  return trunk + head


def ppo_flops(size: str, wl: Workload, rollouts: int) -> dict:
  """Model FLOPs of one PPO iteration over ``rollouts`` sequences (no remat recompute: with
  ``remat`` the hardware does about one more forward pass per trained model and minibatch).

  rollout: the sampler (prefill + one token per step, LM head on the response positions),
  the recomputed log pi_old (bf16 compute recomputes it), reference, value and reward forward
  passes; update: ``epochs`` x (policy + value) forward + backward (3x forward)."""
  s_len = wl.prompt_len + wl.response_len
  tokens, head_tokens = rollouts * s_len, rollouts * wl.response_len
  lm = forward_flops(size, tokens, head_tokens, s_len, True)
  scalar = forward_flops(size, tokens, 0, s_len, False)
  rollout = 3 * lm + 2 * scalar  # sampler, log pi_old, reference; value, reward
  update = wl.epochs * 3 * (lm + scalar)
  return {"rollout": rollout, "update": update, "total": rollout + update}


def reward_flops(size: str, wl: Workload, pairs: int) -> float:
  """Model FLOPs of one reward step: forward + backward (3x) over both sequences of a pair."""
  s_len = wl.prompt_len + wl.response_len
  return 3 * forward_flops(size, 2 * pairs * s_len, 0, s_len, False)


# --------------------------------------------------------------------- abstract state and compile
def _gib(x: float) -> float:
  return x / 2**30


def _shard_bytes(tree: Any) -> int:
  """Per-device bytes of a pytree of ``ShapeDtypeStruct`` with shardings (the largest shard)."""
  import jax
  import numpy as np

  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
    total += int(np.prod(shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
  return total


def activation_constraints(mesh):
  """A flax method interceptor that constrains the leading (batch) dimension of every Dense,
  Embed and Norm output to the mesh's batch axes (``data`` x ``fsdp``), leaving the others to
  XLA. Without it XLA's sharding propagation resolves the FSDP conflict at the LM head
  (batch and model width both on ``fsdp``) by gathering the global batch on every device."""
  import flax.linen as nn
  import jax
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  from rlhf_jax import sharding
  from rlhf_jax.models.transformer import Norm

  n_batch = math.prod(mesh.shape[a] for a in sharding.BATCH_AXES)

  def constrain(x):
    if getattr(x, "ndim", 0) >= 2 and x.shape[0] % n_batch == 0:
      spec = P(sharding.BATCH_AXES, *([P.UNCONSTRAINED] * (x.ndim - 1)))
      return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
    return x

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name in ("__call__", "attend") and isinstance(
      context.module, (nn.Dense, nn.Embed, Norm)
    ):
      out = jax.tree.map(constrain, out)
    return out

  return nn.intercept_methods(interceptor)


def _abstract_params(model, mesh):
  import flax.linen as nn
  import jax

  from rlhf_jax import sharding
  from rlhf_jax.models import boxed_init_fn

  key = jax.random.PRNGKey(0)
  shardings = sharding.params_shardings(boxed_init_fn(model), key, mesh=mesh)
  shapes = nn.meta.unbox(jax.eval_shape(boxed_init_fn(model), key))
  abstract = jax.tree.map(
    lambda s, h: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=h), shapes, shardings
  )
  return abstract, shardings


def _opt_shardings(opt_state, params, params_sh, replicated):
  """Optimizer-state shardings: a leaf whose key path ends with a param's path (and has its
  shape) gets that param's sharding, as ``optimizer.init`` on sharded params gives it (Adam's
  moments); everything else (step counts) is replicated."""
  import jax

  def names(path):
    return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)

  by_path = {}
  for (path, leaf), sh in zip(
    jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(params_sh)
  ):
    by_path[names(path)] = (leaf.shape, sh)

  def one(path, leaf):
    key = names(path)
    for i in range(len(key)):
      hit = by_path.get(key[i:])
      if hit is not None and hit[0] == leaf.shape:
        return hit[1]
    return replicated

  return jax.tree_util.tree_map_with_path(one, opt_state)


def _with_shardings(tree, shardings):
  import jax

  return jax.tree.map(
    lambda s, h: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=h), tree, shardings
  )


def ppo_program(size: str, wl: Workload, mesh, n_layers: Optional[int]):
  """``(jitted iteration, abstract args, byte counts)`` of one PPO iteration on ``mesh``."""
  import jax
  import jax.numpy as jnp
  import optax

  from rlhf_jax import ppo, sharding
  from rlhf_jax.models import Transformer

  policy = Transformer(model_config(size, "lm", wl, n_layers))
  scalar = Transformer(model_config(size, "scalar", wl, n_layers))
  pol, pol_sh = _abstract_params(policy, mesh)
  val, val_sh = _abstract_params(scalar, mesh)
  rep = sharding.replicated(mesh)
  opt = optax.adam(1e-6)
  params, params_sh = {"policy": pol, "value": val}, {"policy": pol_sh, "value": val_sh}
  state = jax.eval_shape(lambda p: ppo.init_ppo_state(p, opt, 0.05, jax.random.PRNGKey(1)), params)
  opt_sh = _opt_shardings(state.opt_state, params, params_sh, rep)
  state_sh = state.replace(
    params=params_sh,
    opt_state=opt_sh,
    kl=jax.tree.map(lambda _: rep, state.kl),
    rng=rep,
    step=rep,
    skipped_updates=rep,
  )
  state = _with_shardings(state, state_sh)
  f32 = jax.ShapeDtypeStruct((), jnp.float32, sharding=rep)
  frozen = ppo.PPOFrozen(pol, val, f32, f32)  # reference: the policy's shapes; reward: value's
  rollouts = wl.rollouts_per_device * math.prod(mesh.shape[a] for a in sharding.BATCH_AXES)
  ids = jax.ShapeDtypeStruct(
    (rollouts, wl.prompt_len), jnp.int32, sharding=sharding.batch_sharding(mesh, 2)
  )
  hp = ppo.PPOHparams(
    response_len=wl.response_len,
    num_minibatches=wl.num_minibatches,
    epochs=wl.epochs,
    temperature=1.0,
    eos_id=2,
    pad_id=0,
  )
  fn = jax.jit(
    ppo.make_ppo_iteration(policy, scalar, scalar, opt, hp),
    donate_argnums=0,
    out_shardings=(state_sh, rep),
  )
  sizes = {
    "params": _shard_bytes(state.params) + _shard_bytes((frozen.ref_params, frozen.reward_params)),
    "trained_params": _shard_bytes(state.params),
    "optimizer": _shard_bytes(state.opt_state),
    "batch": 2 * _shard_bytes(ids),
  }
  return fn, (state, frozen, ids, ids), sizes, rollouts


def reward_program(size: str, wl: Workload, mesh, n_layers: Optional[int]):
  """``(jitted reward step, abstract args, byte counts)`` of one reward-model step."""
  import jax
  import jax.numpy as jnp
  import optax

  from rlhf_jax import reward, sharding
  from rlhf_jax.models import Transformer

  model = Transformer(model_config(size, "scalar", wl, n_layers))
  prm, prm_sh = _abstract_params(model, mesh)
  rep = sharding.replicated(mesh)
  hp = reward.RewardHparams()
  opt = reward.reward_optimizer(optax.adam(1e-6), hp)
  state = jax.eval_shape(lambda p: reward.init_reward_state(p, opt, hp), prm)
  params_sh = {"model": prm_sh, "tie": rep}
  opt_sh = _opt_shardings(state.opt_state, state.params, params_sh, rep)
  state_sh = state.replace(params=params_sh, opt_state=opt_sh, step=rep, skipped_updates=rep)
  state = _with_shardings(state, state_sh)
  pairs = wl.pairs_per_device * math.prod(mesh.shape[a] for a in sharding.BATCH_AXES)
  s_len = wl.prompt_len + wl.response_len
  seq = jax.ShapeDtypeStruct((pairs, s_len), jnp.int32, sharding=sharding.batch_sharding(mesh, 2))
  batch = {
    "ids_a": seq,
    "mask_a": seq,
    "ids_b": seq,
    "mask_b": seq,
    "label": jax.ShapeDtypeStruct((pairs,), jnp.int32, sharding=sharding.batch_sharding(mesh, 1)),
  }
  fn = jax.jit(
    reward.make_reward_step(model, opt, hp), donate_argnums=0, out_shardings=(state_sh, rep)
  )
  sizes = {
    "params": _shard_bytes(state.params),
    "trained_params": _shard_bytes(state.params),
    "optimizer": _shard_bytes(state.opt_state),
    "batch": _shard_bytes(batch),
  }
  return fn, (state, batch), sizes, pairs


def sampler_program(size: str, wl: Workload, mesh, n_layers: Optional[int]):
  """The rollout sampler alone (:func:`rlhf_jax.ppo.sample_responses`, as the PPO iteration
  runs it): which part of the iteration's memory is the sampler's."""
  import jax
  import jax.numpy as jnp

  from rlhf_jax import ppo, sharding
  from rlhf_jax.models import Transformer

  policy = Transformer(model_config(size, "lm", wl, n_layers))
  params, _ = _abstract_params(policy, mesh)
  rollouts = wl.rollouts_per_device * math.prod(mesh.shape[a] for a in sharding.BATCH_AXES)
  ids = jax.ShapeDtypeStruct(
    (rollouts, wl.prompt_len), jnp.int32, sharding=sharding.batch_sharding(mesh, 2)
  )
  key = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=sharding.replicated(mesh))
  hp = ppo.PPOHparams(response_len=wl.response_len, temperature=1.0, eos_id=2, pad_id=0)
  fn = jax.jit(lambda p, i, m, r: ppo.sample_responses(policy, hp, p, i, m, r))
  sizes = {
    "params": _shard_bytes(params),
    "trained_params": 0,
    "optimizer": 0,
    "batch": 2 * _shard_bytes(ids),
  }
  return fn, (params, ids, ids, key), sizes, rollouts


PROGRAMS = {"ppo": ppo_program, "reward": reward_program, "sampler": sampler_program}


def compile_cell(program: str, size: str, wl: Workload, mesh, n_layers: Optional[int], constrain):
  """Lowers and compiles one program; returns XLA's per-device memory and cost numbers."""
  import contextlib

  builder = PROGRAMS[program]
  fn, args, sizes, rows = builder(size, wl, mesh, n_layers)
  t0 = time.perf_counter()
  with activation_constraints(mesh) if constrain else contextlib.nullcontext():
    lowered = fn.lower(*args)
  compiled = lowered.compile()
  seconds = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return {
    "argument": int(mem.argument_size_in_bytes),
    "output": int(mem.output_size_in_bytes),
    "alias": int(mem.alias_size_in_bytes),
    "temp": int(mem.temp_size_in_bytes),
    "xla_flops_loop_bodies_once": float(cost.get("flops", 0.0)),
    "state_bytes": sizes,
    "rows": rows,
    "compile_s": round(seconds, 1),
  }


def state_only(program: str, size: str, wl: Workload, mesh) -> dict:
  """Exact per-device bytes of the full-depth state and batch (no compilation)."""
  _, _, sizes, rows = PROGRAMS[program](size, wl, mesh, None)
  return {"state_bytes": sizes, "rows": rows}


def extrapolate(at: dict, n_layers: int) -> dict:
  """Full-depth per-device bytes from compilations at two depths ``l1 < l2``.

  Arguments (params, optimizer state, frozen params, batch) are exact: the full-depth state
  is measured from its shardings without compiling. Temporaries (activations, gathered
  weights, KV cache, gradients in flight) are extrapolated linearly in the number of layers
  (both the layer scan with remat and the sampler's per-layer KV cache grow linearly)."""
  (l1, c1), (l2, c2) = sorted((int(k), v) for k, v in at.items())
  slope = (c2["temp"] - c1["temp"]) / (l2 - l1)
  temp = c2["temp"] + slope * (n_layers - l2)
  return {
    "temp": int(temp),
    "temp_per_layer": int(slope),
    "non_aliased_output": max(c2["output"] - c2["alias"], 0),
  }


def run_worker(args) -> None:
  """One process, one simulated device count: every requested cell's exact full-depth state
  bytes, and (unless ``--state-only``) its compilation at the ``--layers`` depths; prints one
  ``RESULT {json}`` line per cell."""
  import jax

  jax.config.update("jax_platforms", "cpu")
  jax.config.update("jax_num_cpu_devices", args.devices)
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from rlhf_jax import sharding

  wl = Workload(**json.loads(args.workload))
  layers = [int(x) for x in args.layers.split(",")]
  for cell in args.cells.split(";"):
    program, size, mesh_s = cell.split(":")[:3]
    mesh_t = tuple(int(x) for x in mesh_s.split("x"))
    mesh = sharding.make_mesh(*mesh_t)
    rec = {"program": program, "size": size, "devices": args.devices, "mesh": list(mesh_t)}
    rec.update(state_only(program, size, wl, mesh))
    if args.state_only:
      rec["activations_from"] = cell.split(":")[3]
    else:
      rec["compiled"] = {
        str(n): compile_cell(program, size, wl, mesh, n, not args.no_constraints) for n in layers
      }
    print("RESULT " + json.dumps(rec), flush=True)


# ------------------------------------------------------------------------------------ driver
def cells_for(sizes, programs) -> list:
  """``[(devices, state_only, [cell, ...])]``: the compiled cells (``program:size:DxFxT``)
  first, then the derived ones (``program:size:DxFxT:source DxFxT``)."""
  out = []
  for derived, table in ((False, COMPILED), (True, DERIVED)):
    by_n: dict = {}
    for row in table:
      n, mesh, plan_sizes, plan_programs = row[:4]
      for size in plan_sizes:
        for program in plan_programs:
          if size in sizes and program in programs:
            cell = f"{program}:{size}:{'x'.join(map(str, mesh))}"
            if derived:
              cell += ":" + "x".join(map(str, row[4]))
            by_n.setdefault(n, []).append(cell)
    out += [(n, derived, cells) for n, cells in by_n.items()]
  return out


def _key(rec: dict) -> str:
  return f"{rec['program']}:{rec['size']}:{'x'.join(map(str, rec['mesh']))}"


def summarize(rec: dict, wl: Workload, compiled: dict) -> dict:
  """Full-depth per-device bytes (GiB) and which accelerator memories the cell fits.

  ``compiled``: ``{"program:size:DxFxT": record}`` of the 8-device compilations, where a
  derived record finds its activations."""
  sb = rec["state_bytes"]
  source = rec
  if "activations_from" in rec:
    source = compiled.get(f"{rec['program']}:{rec['size']}:{rec['activations_from']}", {})
  out = {
    "params_gib": _gib(sb["params"]),
    "optimizer_gib": _gib(sb["optimizer"]),
    "batch_gib": _gib(sb["batch"]),
  }
  if "compiled" in source:
    ex = extrapolate(source["compiled"], SHAPES[rec["size"]]["n_layers"])
    out["activations_gib"] = _gib(ex["temp"])
    out["activations_per_layer_gib"] = _gib(ex["temp_per_layer"])
    peak = sb["params"] + sb["optimizer"] + sb["batch"] + ex["temp"] + ex["non_aliased_output"]
  else:
    out["activations_gib"] = None
    peak = sb["params"] + sb["optimizer"] + sb["batch"]
  out["peak_gib"] = _gib(peak)
  out["peak_is_lower_bound"] = "compiled" not in source
  out["fits"] = {str(g): peak <= HEADROOM * g * 2**30 for g in ACCELERATOR_GIB}
  n_dev = rec["devices"]
  if rec["program"] == "ppo":
    flops = ppo_flops(rec["size"], wl, rec["rows"])["total"]
  elif rec["program"] == "sampler":
    s_len = wl.prompt_len + wl.response_len
    rows = rec["rows"]
    flops = forward_flops(rec["size"], rows * s_len, rows * wl.response_len, s_len, True)
  else:
    flops = reward_flops(rec["size"], wl, rec["rows"])
  out["flops"] = flops
  out["seconds_at_100tflops_per_device"] = flops / (n_dev * 100e12)
  return out


def _fmt(gib: float) -> str:
  return f"{gib:.2f}" if gib < 1 else f"{gib:.1f}"


def markdown(records: list, wl: Workload, meta: dict) -> str:
  """The committed table (docs/scale_plan.md)."""
  mark = {True: "yes", False: "no"}
  lines = [
    "# Memory and time plan for real model sizes",
    "",
    "Generated by `nice -n 10 python bench/scale_plan.py` (raw numbers: "
    "`bench/results/scale_plan.json`); do not edit by hand.",
    "",
    "Per-device memory of the two programs that dominate a run, from XLA's memory analysis of "
    "the programs compiled ahead of time on abstract shapes (no weights allocated) for "
    "simulated CPU meshes `data x fsdp x tensor`:",
    "",
    "* **PPO iteration** (`rlhf_jax.ppo.make_ppo_iteration`): rollout (KV-cache sampler), "
    "log pi_old, reference, value and reward forward passes, GAE, "
    f"{wl.epochs} epoch(s) x {wl.num_minibatches} minibatches of updates; policy and a "
    "separate value model trained with Adam, reference and reward model frozen "
    "(4 models of the same shape).",
    "* **Reward step** (`rlhf_jax.reward.make_reward_step`): one Adam step of the reward "
    "model on preference pairs.",
    "* **Sampler** (`rlhf_jax.ppo.sample_responses`, the rollout inside the PPO iteration) "
    "alone, for a few cells: which share of the iteration's memory is the sampler's.",
    "",
    f"Workload: {wl.prompt_len} prompt + {wl.response_len} response tokens; "
    f"{wl.rollouts_per_device} rollouts per batch device (`data x fsdp`) per iteration "
    f"(global batch = {wl.rollouts_per_device} x data x fsdp), {wl.pairs_per_device} "
    f"preference pairs per batch device per reward step. Params and Adam moments in "
    f"{wl.param_dtype}, compute in {wl.dtype}, "
    f"{'per-block rematerialisation (remat=True)' if wl.remat else 'no remat'}, layers "
    "scanned (`scan_unroll=1`).",
    "",
    "How the numbers are made, and what they are not:",
    "",
    "* **params / optimizer** are exact: the per-device shard sizes of the full-depth state "
    "under the project's sharding rules (`rlhf_jax.sharding.DEFAULT_RULES`). For PPO "
    "*params* counts all four models (trained policy + value, frozen reference + reward).",
    "* **activations** is XLA's `temp_size_in_bytes` (activations, gathered FSDP weights, "
    "KV cache, logits, gradients in flight), compiled on 8 simulated devices (16 for "
    "`tensor=8`) at "
    f"{' and '.join(map(str, meta['layers']))} layers and extrapolated linearly to the "
    "model's depth (XLA:CPU's SPMD compile of these programs takes minutes per cell at 8 "
    "devices and far longer at 64+ on a 2-core machine; the sampler unrolls its layers, so "
    "compile time grows with depth). Rows for 64 and 256 devices (`<=`) take the activations "
    "of the compiled mesh with the same tensor degree (and fsdp >= 2 in both): the "
    "per-device batch is the same, "
    "gathered weights are whole layers / tensor on any fsdp degree, and only gradient and "
    "optimizer temporaries shrink with a larger fsdp axis, so it is an upper bound.",
    "* **peak** = params + optimizer + batch + activations (+ non-donated outputs); a cell "
    "*fits* a device memory when its peak is at most 90% of it (10% kept for the runtime "
    "and fragmentation).",
    "* XLA:CPU's memory analysis is an estimate of what the TPU/GPU compilers allocate: "
    "fusion, layouts, scheduling and collective buffers differ. Plan with margin, and check "
    "the first step on the real machine (`jax.local_devices()[0].memory_stats()`).",
    "* Activation sharding: the model has no activation sharding constraints; with the "
    "weights' `embed` dimension on `fsdp` and the batch on `data x fsdp`, XLA's sharding "
    "propagation computes the LM head on the *global* batch on every device (0.5B, 8 "
    "devices, 1 layer: 10.7 GB of temporaries instead of 2.8 GB). These numbers apply "
    "`bench/scale_plan.py:activation_constraints` (batch dimension of every Dense / Embed / "
    "Norm output on `data x fsdp`), which the model should adopt before a real large run."
    if meta["constraints"]
    else "* Activation sharding constraints were OFF for this table (`--no-constraints`).",
    "* **FLOPs** are model FLOPs per iteration for the whole mesh (2 x matmul params per "
    "token forward, 3x forward for forward + backward, attention over the full sequence, LM "
    "head on response positions only; remat's recompute not counted). XLA's cost analysis "
    "counts a loop body once (layer scan, sampler loop, minibatch scan), so it is kept in "
    "the JSON only. *s @100T* is the time per iteration if every device sustains 100 "
    "TFLOP/s (about 40-50% of a TPU v5p or a third of an H100 SXM dense bf16 peak); the "
    "sampler is memory-bandwidth bound, so the real rollout phase is slower.",
    "",
  ]
  compiled = {_key(r): r for r in records if "compiled" in r}
  by_size: dict = {}
  for rec in records:
    by_size.setdefault(rec["size"], []).append(rec)
  header = (
    "| program | devices | mesh d x f x t | params GiB | optimizer GiB | activations GiB | "
    "peak GiB | " + " | ".join(f"{g} GiB" for g in ACCELERATOR_GIB) + " | TFLOP/iter | s @100T |"
  )
  sep = "|" + "---|" * (9 + len(ACCELERATOR_GIB))
  for size in SHAPES:
    if size not in by_size:
      continue
    s = SHAPES[size]
    lines += [
      f"## {size}: {s['n_layers']} layers x {s['d_model']}, {s['n_heads']}/{s['n_kv_heads']} "
      f"heads, ffn {s['d_ff']}, vocab {s['vocab_size']}",
      "",
      header,
      sep,
    ]
    recs = sorted(by_size[size], key=lambda r: (r["program"], r["devices"], -r["mesh"][1]))
    for rec in recs:
      sm = summarize(rec, wl, compiled)
      act = "-" if sm["activations_gib"] is None else _fmt(sm["activations_gib"])
      if "activations_from" in rec and sm["activations_gib"] is not None:
        act = f"<= {act}"
      peak = f"{'>' if sm['peak_is_lower_bound'] else ''}{_fmt(sm['peak_gib'])}"
      fits = " | ".join(mark[sm["fits"][str(g)]] for g in ACCELERATOR_GIB)
      lines.append(
        f"| {rec['program']} | {rec['devices']} | {'x'.join(map(str, rec['mesh']))} | "
        f"{_fmt(sm['params_gib'])} | {_fmt(sm['optimizer_gib'])} | {act} | {peak} | {fits} | "
        f"{sm['flops'] / 1e12:,.0f} | {sm['seconds_at_100tflops_per_device']:.1f} |"
      )
    lines.append("")
  lines += findings(records, wl, compiled)
  missing = meta.get("missing") or []
  if missing:
    lines += [
      "Not compiled within the time box (rerun with a larger `--time-box`): "
      + ", ".join(f"`{m}`" for m in missing)
      + ".",
      "",
    ]
  lines += [
    f"Compiled with jax {meta['jax']} (XLA:CPU, {os.cpu_count()} cores): "
    f"{meta['compile_seconds']:.0f} s of compilation.",
    "",
  ]
  return "\n".join(lines)


def _layer_weight_bytes(size: str) -> int:
  """Float32 bytes of one whole (unsharded) transformer layer."""
  s = SHAPES[size]
  d, hd = s["d_model"], s["d_model"] // s["n_heads"]
  return 4 * (d * hd * (2 * s["n_heads"] + 2 * s["n_kv_heads"]) + 3 * d * s["d_ff"])


def findings(records: list, wl: Workload, compiled: dict) -> list:
  """What the table says about the code, computed from the records."""
  out = [
    "## Smallest mesh that fits",
    "",
    "Per model size and device memory, the mesh with the fewest devices (then the least "
    "tensor parallelism) among the rows above whose peak fits; `-`: none of them.",
    "",
    "| model | program | " + " | ".join(f"{g} GiB" for g in ACCELERATOR_GIB) + " |",
    "|" + "---|" * (2 + len(ACCELERATOR_GIB)),
  ]
  for size in SHAPES:
    for program in ("ppo", "reward"):
      recs = [r for r in records if r["size"] == size and r["program"] == program]
      if not recs:
        continue
      recs.sort(key=lambda r: (r["devices"], r["mesh"][2]))
      cells = []
      for g in ACCELERATOR_GIB:
        fit = [r for r in recs if summarize(r, wl, compiled)["fits"][str(g)]]
        cells.append(f"{fit[0]['devices']} ({'x'.join(map(str, fit[0]['mesh']))})" if fit else "-")
      out.append(f"| {size} | {program} | " + " | ".join(cells) + " |")
  out += ["", "## What the table says", ""]
  fsdp_copies: list = []
  for rec in records:
    if rec["program"] != "sampler" or "compiled" not in rec:
      continue
    key = _key(rec).replace("sampler:", "ppo:", 1)
    if key not in compiled:
      continue
    size = rec["size"]
    sam = extrapolate(rec["compiled"], SHAPES[size]["n_layers"])
    it = extrapolate(compiled[key]["compiled"], SHAPES[size]["n_layers"])
    copies = sam["temp_per_layer"] / _layer_weight_bytes(size)
    if rec["mesh"][2] == 1:
      fsdp_copies.append(copies)
    out.append(
      f"* {size} on {'x'.join(map(str, rec['mesh']))}: the sampler alone needs "
      f"{_fmt(_gib(sam['temp']))} GiB of the PPO iteration's {_fmt(_gib(it['temp']))} GiB of "
      f"temporaries; per layer {_fmt(_gib(sam['temp_per_layer']))} of "
      f"{_fmt(_gib(it['temp_per_layer']))} GiB, {copies:.1f}x one layer's whole float32 "
      "weights."
    )
  out += [
    "",
    "The rollout sampler decides whether PPO fits. It runs the layers unrolled inside the "
    "decoding loop, and with FSDP alone the compiled program keeps about "
    f"{sum(fsdp_copies) / max(len(fsdp_copies), 1):.0f} float32 copies "
    "of every layer's all-gathered weights live for the whole loop, instead of gathering one "
    "layer at a time; with tensor parallelism it keeps far less (compare the 1x8x1 and 1x2x4 "
    "rows above). Until the sampler scans its layers (the KV cache as a scan carry, one "
    "layer's weights gathered per step) or samples from a "
    "bfloat16 copy of the policy, PPO on the larger models needs tensor parallelism (see "
    "the summary above). The reward step has no such term.",
    "",
  ]
  return out


def run_driver(args) -> int:
  wl = Workload()
  sizes = args.sizes.split(",")
  for size in sizes:
    if size not in SHAPES:
      raise SystemExit(f"--sizes: unknown size {size!r}; expected some of {list(SHAPES)}")
  programs = args.programs.split(",")
  for program in programs:
    if program not in PROGRAMS:
      raise SystemExit(f"--programs: unknown {program!r}; expected some of {list(PROGRAMS)}")
  wl_json = json.dumps(dataclasses.asdict(wl), sort_keys=True)
  signature = {"workload": wl_json, "layers": args.layers, "constraints": not args.no_constraints}
  cache = {}
  if os.path.exists(args.json) and not args.fresh:
    with open(args.json, encoding="utf-8") as f:
      old = json.load(f)
    if old.get("signature") == signature:
      cache = {f"{r['devices']}/{_key(r)}": r for r in old["records"] if _complete(r)}
  start = time.perf_counter()
  records, missing = [], []
  for n, state_only_, cells in cells_for(sizes, programs):
    pending = [c for c in cells if f"{n}/{_cell_key(c)}" not in cache]
    records += [cache[f"{n}/{_cell_key(c)}"] for c in cells if f"{n}/{_cell_key(c)}" in cache]
    left = args.time_box - (time.perf_counter() - start)
    if not pending:
      continue
    if left <= 0:
      missing += [f"{n}:{_cell_key(c)}" for c in pending]
      continue
    cmd = [
      sys.executable,
      os.path.abspath(__file__),
      "--worker",
      "--devices",
      str(n),
      "--cells",
      ";".join(pending),
      "--layers",
      args.layers,
      "--workload",
      wl_json,
    ]
    cmd += ["--no-constraints"] if args.no_constraints else []
    cmd += ["--state-only"] if state_only_ else []
    what = "exact state sizes" if state_only_ else "compiling"
    print(f"[scale_plan] {n} devices, {what}: {len(pending)} cells (time left {left:.0f} s)")
    sys.stdout.flush()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    watchdog = threading.Timer(left, proc.kill)  # the time box ends a compilation in flight
    watchdog.start()
    got = set()
    try:
      for line in proc.stdout:
        if line.startswith("RESULT "):
          rec = json.loads(line[7:])
          records.append(rec)
          got.add(_key(rec))
          seconds = sum(c["compile_s"] for c in rec.get("compiled", {}).values())
          print(f"[scale_plan]   {n} {_key(rec)} ({seconds:.0f} s)", flush=True)
          _save(args.json, signature, records)
    finally:
      watchdog.cancel()
      if proc.poll() is None:
        proc.kill()
      proc.wait()
    missing += [f"{n}:{_cell_key(c)}" for c in pending if _cell_key(c) not in got]
  records.sort(key=lambda r: (r["program"], list(SHAPES).index(r["size"]), r["devices"]))
  _save(args.json, signature, records)
  import jax

  meta = {
    "layers": [int(x) for x in args.layers.split(",")],
    "constraints": not args.no_constraints,
    "missing": missing,
    "jax": jax.__version__,
    "compile_seconds": sum(c["compile_s"] for r in records for c in r.get("compiled", {}).values()),
  }
  text = markdown(records, wl, meta)
  print(text)
  if args.md:
    os.makedirs(os.path.dirname(os.path.abspath(args.md)), exist_ok=True)
    with open(args.md, "w", encoding="utf-8") as f:
      f.write(text)
  return 0


def _cell_key(cell: str) -> str:
  return ":".join(cell.split(":")[:3])


def _complete(rec: dict) -> bool:
  return "compiled" in rec or "activations_from" in rec


def _save(path: str, signature: dict, records: list) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump({"signature": signature, "records": records}, f, indent=1)
  os.replace(tmp, path)


def main() -> int:
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--sizes", default=",".join(SHAPES), help="comma list of " + ",".join(SHAPES))
  ap.add_argument("--programs", default=",".join(PROGRAMS))
  ap.add_argument("--layers", default="2,4", help="two depths to compile and extrapolate from")
  ap.add_argument("--time-box", type=float, default=1500.0, help="seconds for all compilations")
  ap.add_argument("--no-constraints", action="store_true", help="no activation constraints")
  ap.add_argument("--fresh", action="store_true", help="ignore cells cached in --json")
  ap.add_argument("--json", default=os.path.join(root, "bench", "results", "scale_plan.json"))
  ap.add_argument("--md", default=os.path.join(root, "docs", "scale_plan.md"))
  ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  ap.add_argument("--cells", default="", help=argparse.SUPPRESS)
  ap.add_argument("--workload", default="{}", help=argparse.SUPPRESS)
  ap.add_argument("--devices", type=int, default=8, help=argparse.SUPPRESS)
  ap.add_argument("--state-only", action="store_true", help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.worker:
    run_worker(args)
    return 0
  layers = [int(x) for x in args.layers.split(",")]
  if len(layers) != 2 or not 0 < layers[0] < layers[1]:
    raise SystemExit(f"--layers={args.layers}: expected two increasing depths, e.g. 2,4")
  return run_driver(args)


if __name__ == "__main__":
  sys.exit(main())
