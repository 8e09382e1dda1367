"""PPO, reward-model and decode throughput on a GPU or TPU host: MFU and HBM bandwidth use.

On an accelerator host this runs, at a model size that fills the devices (bfloat16 compute,
float32 params and Adam moments, every local device on an ``fsdp`` mesh):

* the PPO iteration (:func:`rlhf_jax.ppo.make_ppo_iteration`: rollout with the KV-cache
  sampler, reference / value / reward passes, GAE, epochs x minibatches of policy and value
  updates), whole and as its two phases; MFU of the update phase and of the iteration
  (analytic model FLOPs, bench/scale_plan.py, over the devices' dense bf16 peak);
* the reward-model step (:func:`rlhf_jax.reward.make_reward_step`): pairs/s and MFU;
* decode (:func:`rlhf_jax.generation.sample`, bf16 weights): seconds per decoded token from
  two response lengths (the difference removes the prefill), and the HBM bandwidth that
  implies: every step reads all weights and the whole static KV cache (the cache is
  allocated at prompt + response length and attention reads all of it, masked), over the
  devices' peak bandwidth.

Peaks come from a table of device kinds (``--peak-tflops`` / ``--peak-gbps`` override, and
are required for a kind not in the table). The size is the largest of 8B, 1B, 0.5B, 360M,
135M whose trained state (policy + value: params, gradients, Adam moments; frozen reference
and reward model) fits in half the devices' memory; ``--size`` picks one.

  python bench/accelerator.py --out bench/results/accelerator.jsonl   # GPU / TPU host
  python bench/accelerator.py --size 1B --rollouts-per-device 32
  python bench/accelerator.py --size tiny --allow-cpu --iters 1       # the script, on a CPU

On a CPU (``--allow-cpu``) the peak is XLA's bf16 matmul rate measured in the same run and
the bandwidth fraction is left out unless ``--peak-gbps`` is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402
import scale_plan  # noqa: E402

# SmolLM2 shapes (Llama family, tied embeddings) next to scale_plan's 0.5B / 1B / 8B / 70B,
# and a toy shape that exercises the script on a CPU.
EXTRA_SHAPES = {
  "135M": dict(
    n_layers=30,
    d_model=576,
    n_heads=9,
    n_kv_heads=3,
    d_ff=1536,
    vocab_size=49152,
    tie_embeddings=True,
    qkv_bias=False,
  ),
  "360M": dict(
    n_layers=32,
    d_model=960,
    n_heads=15,
    n_kv_heads=5,
    d_ff=2560,
    vocab_size=49152,
    tie_embeddings=True,
    qkv_bias=False,
  ),
  "tiny": dict(
    n_layers=2,
    d_model=64,
    n_heads=4,
    n_kv_heads=2,
    d_ff=128,
    vocab_size=512,
    tie_embeddings=True,
    qkv_bias=False,
  ),
}
for _name, _shape in EXTRA_SHAPES.items():
  scale_plan.SHAPES.setdefault(_name, _shape)

AUTO_SIZES = ("8B", "1B", "0.5B", "360M", "135M")  # largest first

# Dense bf16 peak FLOP/s and HBM bytes/s per device, from the vendors' data sheets. The first
# substring of jax's device_kind that matches wins (so the more specific names come first).
PEAKS = (
  ("H200", 989e12, 4.8e12),
  ("H100 PCIe", 756e12, 2.0e12),
  ("H100", 989e12, 3.35e12),
  ("A100-SXM4-80GB", 312e12, 2.039e12),
  ("A100", 312e12, 1.555e12),
  ("L40S", 362e12, 0.864e12),
  ("L4", 121e12, 0.3e12),
  ("A10", 125e12, 0.6e12),
  ("TPU v6", 918e12, 1.64e12),
  ("TPU v5 lite", 197e12, 0.819e12),
  ("TPU v5e", 197e12, 0.819e12),
  ("TPU v5", 459e12, 2.765e12),
  ("TPU v4", 275e12, 1.2e12),
)


def device_peaks(kind: str):
  """``(bf16 FLOP/s, HBM bytes/s)`` of one device of ``kind`` from :data:`PEAKS`, or None."""
  for name, flops, bandwidth in PEAKS:
    if name.lower() in kind.lower():
      return flops, bandwidth
  return None


def param_count(size: str, head: str) -> int:
  """Parameters of a Llama-family model of ``size`` with an ``"lm"`` or ``"scalar"`` head."""
  s = scale_plan.SHAPES[size]
  d, ff = s["d_model"], s["d_ff"]
  hd = d // s["n_heads"]
  attn = d * hd * (2 * s["n_heads"] + 2 * s["n_kv_heads"])
  if s["qkv_bias"]:
    attn += hd * (s["n_heads"] + 2 * s["n_kv_heads"])
  layer = attn + 3 * d * ff + 2 * d  # + two RMSNorm scales
  n = s["vocab_size"] * d + s["n_layers"] * layer + d  # embeddings, blocks, final norm
  if head == "lm" and not s["tie_embeddings"]:
    n += s["vocab_size"] * d
  if head == "scalar":
    n += d
  return n


def ppo_state_bytes(size: str) -> int:
  """Bytes of a PPO run's state: policy and value trained in float32 (params, gradients and
  two Adam moments: 16 bytes a parameter), reference and reward model frozen (4 bytes)."""
  lm, scalar = param_count(size, "lm"), param_count(size, "scalar")
  return 16 * (lm + scalar) + 4 * (lm + scalar)


def pick_size(memory_bytes: float) -> str:
  """The largest of :data:`AUTO_SIZES` whose PPO state fits in half of ``memory_bytes`` (the
  other half for activations, the KV cache and the runtime)."""
  for size in AUTO_SIZES:
    if ppo_state_bytes(size) <= 0.5 * memory_bytes:
      return size
  return AUTO_SIZES[-1]


def decode_bytes_per_step(size: str, batch: int, cache_len: int, weight_bytes: int) -> int:
  """HBM bytes one decode step reads: every weight (at ``weight_bytes`` each; an untied input
  embedding only by its ``batch`` looked-up rows, the LM head in full) and the whole static K
  and V caches (bf16) of ``batch`` rows and ``cache_len`` positions."""
  s = scale_plan.SHAPES[size]
  hd = s["d_model"] // s["n_heads"]
  kv = 2 * s["n_layers"] * batch * cache_len * s["n_kv_heads"] * hd * 2
  weights = param_count(size, "lm")
  if not s["tie_embeddings"]:
    weights -= (s["vocab_size"] - batch) * s["d_model"]
  return weight_bytes * weights + kv


def _local_memory(devices) -> float:
  total = 0.0
  for d in devices:
    stats = d.memory_stats() if hasattr(d, "memory_stats") else None
    if not stats or "bytes_limit" not in stats:
      return 0.0
    total += stats["bytes_limit"]
  return total


@dataclasses.dataclass
class Setup:
  """What the three measurements share."""

  size: str
  wl: scale_plan.Workload
  mesh: object
  vocab: int
  rng: object  # numpy Generator
  args: argparse.Namespace
  total_peak: float  # FLOP/s of all devices
  peak_bw: object  # bytes/s of one device, or None
  n_dev: int


def _init(model, seed: int, mesh):
  """Params of ``model`` created already sharded on ``mesh``."""
  import jax

  from rlhf_jax import sharding
  from rlhf_jax.models import boxed_init_fn

  params, _ = sharding.init_sharded(boxed_init_fn(model), jax.random.PRNGKey(seed), mesh=mesh)
  return params


def bench(args) -> dict:
  """Every measurement on the local devices; the record to emit."""
  import jax
  import numpy as np

  from rlhf_jax import sharding

  devices = jax.local_devices()
  platform = devices[0].platform
  if platform == "cpu" and not args.allow_cpu:
    raise SystemExit("bench/accelerator.py: no GPU or TPU here (pass --allow-cpu to try it)")
  n_dev = len(devices)
  if args.decode_batch % n_dev:
    raise SystemExit(
      f"bench/accelerator.py: --decode-batch {args.decode_batch} must divide by the "
      f"{n_dev} local devices (the batch is split over them)"
    )
  kind = devices[0].device_kind
  peaks = device_peaks(kind)
  peak_flops = args.peak_tflops * 1e12 if args.peak_tflops else (peaks[0] if peaks else None)
  peak_bw = args.peak_gbps * 1e9 if args.peak_gbps else (peaks[1] if peaks else None)
  measured_peak = None
  if platform == "cpu" and peak_flops is None:
    measured_peak = _common.matmul_peak(n=1024, repeats=3, dtype="bfloat16")
    peak_flops = measured_peak["gflops_best"] * 1e9
  if peak_flops is None:
    raise SystemExit(f"bench/accelerator.py: no peak known for {kind!r}; pass --peak-tflops")
  memory = _local_memory(devices)
  size = args.size or (pick_size(memory) if memory else "135M")
  wl = scale_plan.Workload(
    prompt_len=args.prompt_len,
    response_len=args.response_len,
    rollouts_per_device=args.rollouts_per_device,
    num_minibatches=args.minibatches,
    epochs=args.epochs,
    pairs_per_device=args.pairs_per_device,
    dtype=args.dtype,
    remat=not args.no_remat,
  )
  mesh = sharding.make_mesh(1, n_dev, 1, devices=devices)
  vocab = scale_plan.SHAPES[size]["vocab_size"]
  rng = np.random.default_rng(0)

  record = {
    "bench": "accelerator",
    "size": size,
    "platform": platform,
    "device_kind": kind,
    "devices": n_dev,
    "device_memory_gib": memory / 2**30 if memory else None,
    "peak_tflops_per_device": peak_flops / 1e12,
    "peak_gbps_per_device": peak_bw / 1e9 if peak_bw else None,
    "measured_cpu_bf16_matmul": measured_peak,
    "workload": dataclasses.asdict(wl),
    "params_lm": param_count(size, "lm"),
  }
  total_peak = peak_flops * n_dev

  setup = Setup(size, wl, mesh, vocab, rng, args, total_peak, peak_bw, n_dev)
  policy, pol = _bench_ppo(record, setup)
  _bench_reward(record, setup)
  _bench_decode(record, setup, policy, pol)
  record["info"] = _common.info()
  return record


def _bench_ppo(record: dict, st: Setup):
  """The PPO iteration, whole and by phase, into ``record``; returns the policy and its live
  params (the iteration donates its state, so the params it was given are deleted)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax

  from rlhf_jax import ppo, sharding
  from rlhf_jax.models import Transformer

  size, wl, mesh, vocab, rng, args = st.size, st.wl, st.mesh, st.vocab, st.rng, st.args
  rollouts, total_peak = wl.rollouts_per_device * st.n_dev, st.total_peak
  policy = Transformer(scale_plan.model_config(size, "lm", wl))
  scalar = Transformer(scale_plan.model_config(size, "scalar", wl))
  pol, val = _init(policy, 0, mesh), _init(scalar, 1, mesh)
  ref = jax.tree.map(jnp.copy, pol)
  rew = jax.tree.map(jnp.copy, val)
  frozen = ppo.PPOFrozen(ref, rew, jnp.float32(1.0), jnp.float32(0.0))
  opt = optax.adam(1e-6)
  hp = ppo.PPOHparams(
    response_len=wl.response_len,
    num_minibatches=wl.num_minibatches,
    epochs=wl.epochs,
    temperature=1.0,
    eos_id=vocab,  # never sampled: every response has the full length
    pad_id=0,
    adaptive_kl=False,
  )
  state = sharding.commit(
    ppo.init_ppo_state({"policy": pol, "value": val}, opt, 0.05, jax.random.PRNGKey(2)), mesh
  )
  ids = rng.integers(1, vocab, (rollouts, wl.prompt_len)).astype(np.int32)
  ids, mask = sharding.shard_batch((ids, np.ones_like(ids)), mesh)
  iteration = sharding.jit_step(
    ppo.make_ppo_iteration(policy, scalar, scalar, opt, hp), state, mesh
  )
  holder = {"state": state}

  def one_iteration():
    holder["state"], metrics = iteration(holder["state"], frozen, ids, mask)
    jax.block_until_ready(metrics)

  t0 = time.perf_counter()
  one_iteration()
  record["ppo_first_iteration_s"] = time.perf_counter() - t0
  t_iter = _common.timeit(one_iteration, args.iters, warmup=0)
  # The phases: the rollout reads the state; the update donates it and is fed its own output
  # (the same rollout each time: the same work), so the state is never held twice.
  rollout_fn, update_fn = ppo.make_ppo_iteration(policy, scalar, scalar, opt, hp, phases=True)
  rollout_j = jax.jit(rollout_fn)
  update_j = sharding.jit_step(update_fn, holder["state"], mesh)
  ro = rollout_j(holder["state"], frozen, ids, mask)
  jax.block_until_ready(ro)
  t_roll = _common.timeit(
    lambda: jax.block_until_ready(rollout_j(holder["state"], frozen, ids, mask)), args.iters
  )

  def one_update():
    holder["state"], metrics = update_j(holder["state"], *ro)
    jax.block_until_ready(metrics)

  t_upd = _common.timeit(one_update, args.iters)
  flops = scale_plan.ppo_flops(size, wl, rollouts)
  record.update(
    ppo_s_per_iteration=t_iter,
    ppo_samples_per_s=rollouts / t_iter["median"],
    ppo_rollout_phase_s=t_roll,
    ppo_update_phase_s=t_upd,
    ppo_flops=flops,
    ppo_update_mfu=flops["update"] / t_upd["median"] / total_peak,
    ppo_rollout_mfu=flops["rollout"] / t_roll["median"] / total_peak,
    ppo_iteration_mfu=flops["total"] / t_iter["median"] / total_peak,
  )
  return policy, holder["state"].params["policy"]


def _bench_reward(record: dict, st: Setup):
  """The reward-model step into ``record``."""
  import jax
  import numpy as np
  import optax

  from rlhf_jax import reward, sharding
  from rlhf_jax.models import Transformer

  size, wl, mesh, vocab, rng, args = st.size, st.wl, st.mesh, st.vocab, st.rng, st.args
  pairs, total_peak = wl.pairs_per_device * st.n_dev, st.total_peak
  s_len = wl.prompt_len + wl.response_len
  scalar = Transformer(scale_plan.model_config(size, "scalar", wl))
  hp_r = reward.RewardHparams()
  opt_r = reward.reward_optimizer(optax.adam(1e-6), hp_r)
  rstate = sharding.commit(reward.init_reward_state(_init(scalar, 3, mesh), opt_r, hp_r), mesh)
  seq = rng.integers(1, vocab, (pairs, s_len)).astype(np.int32)
  batch = sharding.shard_batch(
    {
      "ids_a": seq,
      "mask_a": np.ones_like(seq),
      "ids_b": seq[::-1].copy(),
      "mask_b": np.ones_like(seq),
      "label": (np.arange(pairs) % 3).astype(np.int32),
    },
    mesh,
  )
  step = sharding.jit_step(reward.make_reward_step(scalar, opt_r, hp_r), rstate, mesh)
  rholder = {"state": rstate}

  def one_step():
    rholder["state"], metrics = step(rholder["state"], batch)
    jax.block_until_ready(metrics)

  one_step()
  t_step = _common.timeit(one_step, args.iters)
  rflops = scale_plan.reward_flops(size, wl, pairs)
  record.update(
    reward_s_per_step=t_step,
    reward_pairs_per_s=pairs / t_step["median"],
    reward_mfu=rflops / t_step["median"] / total_peak,
  )


def _bench_decode(record: dict, st: Setup, policy, pol):
  """Decode with bf16 weights into ``record``."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from rlhf_jax import generation, sharding

  size, wl, mesh, rng, args = st.size, st.wl, st.mesh, st.rng, st.args
  vocab, peak_bw, n_dev = st.vocab, st.peak_bw, st.n_dev
  pol_bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), pol)
  prompts = rng.integers(1, vocab, (args.decode_batch, wl.prompt_len)).astype(np.int32)
  prompts, pmask = sharding.shard_batch((prompts, np.ones_like(prompts)), mesh)
  short, long_ = args.decode_short, wl.response_len
  keys = iter(range(1, 10_000))

  def decode(new_tokens):
    out = generation.sample(
      policy,
      pol_bf16,
      prompts,
      pmask,
      jax.random.PRNGKey(next(keys)),
      max_new_tokens=new_tokens,
      eos_id=-1,
      pad_id=0,
      temperature=1.0,
    )
    jax.block_until_ready(out.tokens_BT)

  decode(short)
  decode(long_)
  t_short = _common.timeit(lambda: decode(short), args.iters)
  t_long = _common.timeit(lambda: decode(long_), args.iters)
  per_token = (t_long["median"] - t_short["median"]) / (long_ - short)
  # The cache has prompt + new-token slots, and a step over c slots costs a + b c; so
  # (T(l) - T(s)) / (l - s) = a + b (P + l + s): the cost of a step over P + l + s slots.
  step_bytes = decode_bytes_per_step(size, args.decode_batch, wl.prompt_len + long_ + short, 2)
  record.update(
    decode_batch=args.decode_batch,
    decode_s_short=t_short,
    decode_s_long=t_long,
    decode_s_per_token=per_token,
    decode_tokens_per_s=args.decode_batch / per_token if per_token > 0 else None,
    decode_bytes_per_step=step_bytes,
    decode_gbps=step_bytes / per_token / 1e9 if per_token > 0 else None,
    decode_bandwidth_fraction=(
      step_bytes / per_token / (peak_bw * n_dev) if peak_bw and per_token > 0 else None
    ),
  )


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--size", default=None, help=",".join(scale_plan.SHAPES) + " (default: auto)")
  ap.add_argument("--dtype", default="bfloat16")
  ap.add_argument("--prompt-len", type=int, default=128)
  ap.add_argument("--response-len", type=int, default=128)
  ap.add_argument("--rollouts-per-device", type=int, default=16)
  ap.add_argument("--pairs-per-device", type=int, default=8)
  ap.add_argument("--minibatches", type=int, default=4)
  ap.add_argument("--epochs", type=int, default=1)
  ap.add_argument("--decode-batch", type=int, default=64)
  ap.add_argument("--decode-short", type=int, default=16, help="tokens of the shorter decode")
  ap.add_argument("--iters", type=int, default=3)
  ap.add_argument("--no-remat", action="store_true")
  ap.add_argument("--peak-tflops", type=float, default=None, help="per device, bf16 dense")
  ap.add_argument("--peak-gbps", type=float, default=None, help="per device, HBM GB/s")
  ap.add_argument("--allow-cpu", action="store_true")
  ap.add_argument("--out", default=None, help="JSONL file to append the record to")
  args = ap.parse_args(argv)
  if args.size is not None and args.size not in scale_plan.SHAPES:
    ap.error(f"--size {args.size!r}: use one of {', '.join(scale_plan.SHAPES)}")
  if args.decode_short >= args.response_len:
    ap.error("--decode-short must be below --response-len (their difference times decode)")
  for flag in ("iters", "prompt_len", "rollouts_per_device", "pairs_per_device", "decode_batch"):
    if getattr(args, flag) < 1:
      ap.error(f"--{flag.replace('_', '-')} must be at least 1")
  if args.rollouts_per_device % args.minibatches:
    ap.error("--minibatches must divide --rollouts-per-device (equal minibatches per device)")
  record = bench(args)
  _common.emit(record, args.out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
