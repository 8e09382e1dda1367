"""What LoRA costs in a training step: adapters merged into the kernel (``W + s·A@B``, then
``x @ W'``) against kept as factors (``x @ W + s·(x @ A) @ B``, rlhf_jax/lora.py's
``factored_params``, what the trainers use).

For a model shape and a rank: the time of the merge alone (every targeted kernel), of one
forward pass and of one training step (forward + backward + Adam) of an SFT batch — dense,
LoRA merged inside the step, and LoRA factored — all jitted and timed after compilation
(median of ``--reps``), with XLA's FLOP count of each compiled step. Shapes: ``tiny`` (the test preset, 2 × 32) and ``smollm2`` (SmolLM2-135M: 30
layers × 576, 9 heads, 3 KV heads, MLP 1536, vocabulary 49152, tied embeddings).

  python bench/lora_merge.py --shapes tiny,smollm2 --rank 8 --batch 4 --seq 128
  python bench/lora_merge.py --shapes smollm2 --batch 32 --seq 112  # the assistant RM step
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

_common.set_xla_threads()

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from rlhf_jax import lora, sft  # noqa: E402
from rlhf_jax.models import Transformer, TransformerConfig, init_params  # noqa: E402

SHAPES = {
  "tiny": dict(vocab_size=512, d_model=32, n_layers=2, n_heads=2, max_len=256),
  "smollm2": dict(
    vocab_size=49152,
    d_model=576,
    n_layers=30,
    n_heads=9,
    n_kv_heads=3,
    d_ff=1536,
    max_len=2048,
    norm="rmsnorm",
    mlp="swiglu",
    activation="silu",
    position="rope",
    qkv_bias=False,
    out_bias=False,
    mlp_bias=False,
    tie_embeddings=True,
  ),
}
ALL = ("q", "k", "v", "o", "gate", "up", "down")


def _time(fn, *args, reps: int) -> float:
  jax.block_until_ready(fn(*args))  # compile
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def _flops(fn, *args) -> float:
  cost = fn.lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan")))


def _merged_lm_step(model, optimizer):
  """The SFT step with the adapters merged into the kernels inside the step (the old path)."""
  grad_fn = jax.value_and_grad(
    lambda t, b, base: sft.lm_loss(model, lora.full_params(t, base), b), has_aux=True
  )

  def step(state, batch, base):
    (loss, _), grads = grad_fn(state.params, batch, base)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    return optax.apply_updates(state.params, updates), opt_state, loss

  return step


def measure(shape: str, rank: int, targets, batch: int, seq: int, reps: int) -> dict:
  cfg = TransformerConfig(**SHAPES[shape])
  model = Transformer(cfg)
  base = jax.jit(lambda k: init_params(model, k))(jax.random.PRNGKey(0))
  modules = {path[-2] for path in lora._kernel_paths(base)}
  targets = [t for t in targets if t in modules]  # GPT-2 has no gate
  spec = lora.LoraSpec(rank=rank, alpha=2.0 * rank, targets=tuple(targets))
  trainable = lora.init_lora_params(spec, base, jax.random.PRNGKey(1))
  ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, seq)).astype(np.int32)
  data = {"ids": ids, "mask": np.ones_like(ids), "loss_mask": np.ones_like(ids)}

  merge_s = _time(jax.jit(lora.full_params), trainable, base, reps=reps)
  forward = jax.jit(lambda p, b: sft.lm_loss(model, p, b)[0])
  forward_s = _time(forward, base, data, reps=reps)

  opt = optax.adam(1e-4)
  step = jax.jit(sft.make_lm_step(model, opt))  # not donated: the same state every rep
  merged_step = jax.jit(_merged_lm_step(model, opt))
  dense_s = _time(step, sft.init_lm_state(base, opt), data, None, reps=reps)
  lora_state = sft.init_lm_state(trainable, opt)
  factored_s = _time(step, lora_state, data, base, reps=reps)
  merged_s = _time(merged_step, lora_state, data, base, reps=reps)
  return {
    "shape": shape,
    "rank": rank,
    "targets": list(targets),
    "tokens": batch * seq,
    "base_params": lora.trainable_count(base),
    "adapter_params": lora.trainable_count(trainable),
    "merge_s": merge_s,
    "forward_s": forward_s,
    "dense_step_s": dense_s,
    "lora_merged_step_s": merged_s,
    "lora_factored_step_s": factored_s,
    "merge_over_forward": merge_s / forward_s,
    "factored_over_merged_step": factored_s / merged_s,
    "factored_over_dense_step": factored_s / dense_s,
    "lora_merged_step_flops": _flops(merged_step, lora_state, data, base),
    "lora_factored_step_flops": _flops(step, lora_state, data, base),
    "cpu": _common.cpu_model(),
  }


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--shapes", default="tiny,smollm2")
  ap.add_argument("--rank", type=int, default=8)
  ap.add_argument("--targets", default=",".join(ALL))
  ap.add_argument("--batch", type=int, default=4)
  ap.add_argument("--seq", type=int, default=128)
  ap.add_argument("--reps", type=int, default=3)
  ap.add_argument("--out", default="")
  args = ap.parse_args()
  for shape in args.shapes.split(","):
    row = measure(shape, args.rank, args.targets.split(","), args.batch, args.seq, args.reps)
    print(json.dumps(row))
    if args.out:
      with open(args.out, "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
  main()
