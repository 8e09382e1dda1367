"""Model family: one Flax transformer for GPT-2 and Llama-style checkpoints, loaded from Hugging
Face directories or GGUF files together with the checkpoint's own tokenizer."""

from rlhf_jax.models.chat import ChatTokenizer, load_chat_tokenizer
from rlhf_jax.models.gguf import MissingExtraError, resolve_checkpoint
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
  "ChatTokenizer",
  "KVCache",
  "MissingExtraError",
  "RopeScaling",
  "Transformer",
  "TransformerConfig",
  "boxed_init_fn",
  "from_pretrained",
  "init_cache",
  "init_params",
  "load_chat_tokenizer",
  "param_logical_axes",
  "positions_from_mask",
  "resolve_checkpoint",
  "save_pretrained",
]
