"""Model family: one Flax transformer for GPT-2 and Llama-style checkpoints."""

from rlhf_jax.models.transformer import (KVCache, RopeScaling, Transformer, TransformerConfig,
                                         init_cache, init_params, param_logical_axes,
                                         positions_from_mask)

__all__ = [
    "KVCache", "RopeScaling", "Transformer", "TransformerConfig", "init_cache", "init_params",
    "param_logical_axes", "positions_from_mask",
]
