"""Model family: one Flax transformer for GPT-2 and Llama-style checkpoints."""

from rlhf_jax.models.hf import from_pretrained, save_pretrained
from rlhf_jax.models.transformer import (
  KVCache,
  RopeScaling,
  Transformer,
  TransformerConfig,
  boxed_init_fn,
  init_cache,
  init_params,
  param_logical_axes,
  positions_from_mask,
)

__all__ = [
  "KVCache",
  "RopeScaling",
  "Transformer",
  "TransformerConfig",
  "boxed_init_fn",
  "from_pretrained",
  "init_cache",
  "init_params",
  "param_logical_axes",
  "positions_from_mask",
  "save_pretrained",
]
