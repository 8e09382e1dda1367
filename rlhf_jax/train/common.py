"""Pieces shared by the training loops: model specs and presets, optimizers, mesh specs.

The loops receive frozen dataclasses (built from configs at the entry point); the helpers
here turn them into models, params placed on the mesh, and optax optimizers.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Optional, Tuple

import jax
import optax

from rlhf_jax import optim, sharding
from rlhf_jax.models import Transformer, TransformerConfig, boxed_init_fn, init_params

__all__ = [
    "PRESETS",
    "ModelSpec",
    "MeshSpec",
    "OptimSpec",
    "preset_config",
    "build_mesh",
    "load_model",
    "make_optimizer",
    "shard_params",
]

# Architecture presets for models initialised from scratch. "small"/"medium" are the
# GPT-2 shapes of the benchmark anchors; "tiny" is for tests.
PRESETS = {
    "tiny": dict(d_model=32, n_layers=2, n_heads=2, max_len=128),
    "gpt2-small": dict(d_model=256, n_layers=4, n_heads=4, max_len=128),
    "gpt2-medium": dict(d_model=512, n_layers=8, n_heads=8, max_len=128),
    "gpt2-base": dict(d_model=768, n_layers=12, n_heads=12, max_len=1024),
    "llama-small": dict(d_model=256, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=688,
                        norm="rmsnorm", mlp="swiglu", activation="silu", position="rope",
                        qkv_bias=False, out_bias=False, mlp_bias=False, tie_embeddings=False,
                        max_len=2048),
}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """Where a model comes from: a checkpoint directory, or a preset initialised at random."""

  path: Optional[str] = None  # Hugging Face-layout directory; None or "": use the preset
  preset: str = "gpt2-small"  # used without a path
  vocab_size: int = 8192  # used without a path
  dtype: str = "float32"  # compute dtype ("bfloat16" on accelerators)
  remat: bool = False  # recompute each block in the backward pass
  scan_unroll: int = 1  # layers per scan iteration (0: every layer unrolled, faster on CPU)


@dataclasses.dataclass(frozen=True)
class MeshSpec:
  data: int = 1
  fsdp: int = -1
  tensor: int = 1


@dataclasses.dataclass(frozen=True)
class OptimSpec:
  name: str = "adam"  # "adam" | "adamw" | "tf_adam" (TensorFlow epsilon placement)
  learning_rate: float = 1e-5
  anneal: bool = True  # linear decay to 0 over the run (OAI)
  warmup_steps: int = 0
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-5
  weight_decay: float = 0.0
  max_grad_norm: Optional[float] = None


def preset_config(name: str, vocab_size: int, **overrides) -> TransformerConfig:
  if name not in PRESETS:
    raise ValueError(f"model.preset={name!r}; known presets: {sorted(PRESETS)}")
  return TransformerConfig(vocab_size=vocab_size, **{**PRESETS[name], **overrides})


def build_mesh(spec: MeshSpec):
  return sharding.make_mesh(spec.data, spec.fsdp, spec.tensor)


def load_model(spec: ModelSpec, head: str, rng: jax.Array, mesh) -> Tuple[Transformer, Any]:
  """The module and its params, already sharded on ``mesh``.

  From ``spec.path``: weights of a Hugging Face-layout checkpoint; an LM checkpoint loaded
  with ``head="scalar"`` keeps its trunk and gets a fresh scalar head (reward/value models
  start from the base LM); ``head="both"`` adds a value head to an LM.
  """
  if not spec.path:
    cfg = preset_config(spec.preset, spec.vocab_size, head=head, dtype=spec.dtype,
                        remat=spec.remat, scan_unroll=spec.scan_unroll)
    model = Transformer(cfg)
    init = boxed_init_fn(model)
    params, _ = sharding.init_sharded(init, rng, mesh=mesh)
    return model, params
  from rlhf_jax.models import hf  # local import: only needed for checkpoints

  if not os.path.isdir(spec.path):
    raise FileNotFoundError(f"model.path={spec.path!r} is not a directory")
  model, params = hf.from_pretrained(spec.path, dtype=spec.dtype)
  cfg = model.cfg.replace(remat=spec.remat, scan_unroll=spec.scan_unroll)
  if cfg.head != head:
    cfg = cfg.replace(head=head)
    new_model = Transformer(cfg)
    fresh = init_params(new_model, rng)
    trunk = {k: v for k, v in params.items() if k not in ("lm_head", "score")}
    merged = dict(fresh)
    merged.update(trunk)
    if head in ("lm", "both") and "lm_head" in params:
      merged["lm_head"] = params["lm_head"]
    params = merged
    model = new_model
  else:
    model = Transformer(cfg)
  init = boxed_init_fn(model)
  shardings = sharding.params_shardings(init, rng, mesh=mesh)
  return model, sharding.shard_tree(params, shardings)


def shard_params(model: Transformer, params, mesh):
  """Place ``params`` on ``mesh`` by the model's logical axis rules."""
  init = boxed_init_fn(model)
  return sharding.shard_tree(params, sharding.params_shardings(init, jax.random.PRNGKey(0),
                                                               mesh=mesh))


def make_optimizer(spec: OptimSpec, total_steps: int) -> Tuple[optax.GradientTransformation,
                                                                Callable[[Any], Any]]:
  """``(optimizer, schedule)``; ``schedule(count)`` gives the learning rate for logging."""
  if spec.name not in ("adam", "adamw", "tf_adam"):
    raise ValueError(f"optimizer.name={spec.name!r}; expected 'adam', 'adamw' or 'tf_adam'")
  if spec.learning_rate <= 0:
    raise ValueError(f"optimizer.learning_rate must be > 0, got {spec.learning_rate}")
  total_steps = max(int(total_steps), 1)
  if spec.anneal:
    decay = optax.linear_schedule(spec.learning_rate, 0.0, max(total_steps - spec.warmup_steps,
                                                               1))
  else:
    decay = optax.constant_schedule(spec.learning_rate)
  if spec.warmup_steps:
    warm = optax.linear_schedule(0.0, spec.learning_rate, spec.warmup_steps)
    schedule = optax.join_schedules([warm, decay], [spec.warmup_steps])
  else:
    schedule = decay
  if spec.name == "tf_adam":
    tx = optim.tf_adam(schedule, b1=spec.b1, b2=spec.b2, eps=spec.eps)
  elif spec.name == "adamw":
    tx = optax.adamw(schedule, b1=spec.b1, b2=spec.b2, eps=spec.eps,
                     weight_decay=spec.weight_decay)
  else:
    tx = optax.adam(schedule, b1=spec.b1, b2=spec.b2, eps=spec.eps)
  if spec.max_grad_norm:
    tx = optax.chain(optax.clip_by_global_norm(spec.max_grad_norm), tx)
  return tx, schedule
