"""One decoder-only transformer for the GPT-2 and Llama families.

The same module definition plays every role in RLHF: policy and reference (LM head),
value and reward model (scalar head), or a policy with a value head on a shared trunk
(both heads). The family is chosen by configuration, not by separate code:

* GPT-2: learned positions, LayerNorm, GELU MLP, biases everywhere, tied embeddings.
* Llama / Mistral / Qwen2: RMSNorm, RoPE (``rope_theta``, Llama-3 or linear scaling),
  SwiGLU MLP, grouped-query attention, optional q/k/v bias (Qwen2), tied or untied head.

Shapes in names: B batch, T query length, S key length (cache size), D model width,
H query heads, K key/value heads, G = H // K, E head dim, V vocabulary, L layers.

Params are float32 (``param_dtype``); matmuls run in ``dtype`` (bfloat16 on accelerators)
while norms, softmax and the returned logits/scores are float32. Every param carries
logical axis names (see ``rlhf_jax.sharding``); layers are stacked on a leading
``layers`` axis by ``nn.scan`` so compile time does not grow with depth.

Incremental decoding (a :class:`KVCache` is passed) runs the layers as an unrolled Python
loop instead: each layer's keys/values live in their own buffer, laid out ``[B, K, S, E]``,
so a decode loop updates them in place and attention reads them without a copy or a
transpose (with a scanned stack, XLA:CPU copies every layer's cache slice and weights on
every step). ``unstack_layers(params)`` splits the stacked layer params once, outside such a
loop, so the per-layer weights are not sliced again on every step either.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple, Optional

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from rlhf_jax.models.matmul import mixed_dot_general, mixed_matmul

__all__ = [
  "RopeScaling",
  "TransformerConfig",
  "Transformer",
  "KVCache",
  "init_cache",
  "positions_from_mask",
  "init_params",
  "boxed_init_fn",
  "param_logical_axes",
  "unstack_layers",
  "LowRankKernel",
  "Dense",
]

_NORMS = ("layernorm", "rmsnorm")
_HEADS = ("lm", "scalar", "both")
_MLPS = ("gelu", "swiglu")
_POSITIONS = ("learned", "rope")
_ACTIVATIONS = ("gelu_tanh", "gelu", "silu", "relu")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """RoPE frequency scaling, as in Hugging Face ``rope_scaling``.

  ``kind="linear"`` divides positions by ``factor``; ``kind="llama3"`` rescales the
  inverse frequencies band-wise (low frequencies by ``1/factor``, high ones untouched,
  a smooth blend in between) using ``original_max_position_embeddings``.
  """

  kind: str = "llama3"
  factor: float = 8.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Architecture of the decoder. All fields are plain Python values (hashable)."""

  vocab_size: int
  d_model: int
  n_layers: int
  n_heads: int
  n_kv_heads: Optional[int] = None  # None: = n_heads (multi-head attention)
  head_dim: Optional[int] = None  # None: d_model // n_heads
  d_ff: Optional[int] = None  # None: 4 * d_model
  max_len: int = 1024  # learned-position table size; RoPE has no table
  norm: str = "layernorm"
  norm_eps: float = 1e-5
  mlp: str = "gelu"
  activation: str = "gelu_tanh"
  position: str = "learned"
  rope_theta: float = 10000.0
  rope_scaling: Optional[RopeScaling] = None
  qkv_bias: bool = True
  out_bias: bool = True  # attention output projection bias
  mlp_bias: bool = True
  tie_embeddings: bool = True
  head: str = "lm"  # "lm" | "scalar" | "both"
  scalar_bias: bool = False  # HF *ForSequenceClassification heads have none
  # None: 1/sqrt(d_model + 1); 0.0: a zero head (every score 0 at the start, so a reward
  # model's first preferences are the labels', not a random projection's)
  scalar_init_std: Optional[float] = None
  init_std: float = 0.02
  dtype: str = "float32"  # compute dtype
  param_dtype: str = "float32"
  remat: bool = False  # recompute each block in the backward pass
  # Operand dtype of the dense matmuls (q/k/v/o, MLP, LM and scalar heads); None: ``dtype``.
  # "bfloat16" with dtype "float32" multiplies bf16 operands with float32 accumulation,
  # forward and backward (``rlhf_jax.models.matmul``), while params, residual stream, norms,
  # attention softmax and logits stay float32. Pays where bf16 matmuls are fast (TPU, GPU,
  # CPUs with AVX512-BF16); on other CPUs it is slower than float32 (docs/performance.md).
  matmul_dtype: Optional[str] = None
  # Layers per iteration of the layer scan: 1 keeps one compiled block (compile time flat in
  # depth); 0 (or >= n_layers) unrolls every layer, which XLA:CPU runs ~10-15% faster for
  # shallow models.
  scan_unroll: int = 1

  def __post_init__(self):
    def check(name, value, allowed):
      if value not in allowed:
        raise ValueError(f"TransformerConfig.{name}={value!r}; expected one of {allowed}")

    check("head", self.head, _HEADS)
    check("norm", self.norm, _NORMS)
    check("mlp", self.mlp, _MLPS)
    check("position", self.position, _POSITIONS)
    check("activation", self.activation, _ACTIVATIONS)
    check("matmul_dtype", self.matmul_dtype, (None, "float32", "bfloat16", "float16"))
    for name in ("vocab_size", "d_model", "n_layers", "n_heads", "max_len"):
      if int(getattr(self, name)) <= 0:
        raise ValueError(f"TransformerConfig.{name} must be positive, got {getattr(self, name)}")
    if int(self.scan_unroll) < 0:
      raise ValueError(
        f"TransformerConfig.scan_unroll must be >= 0 (0: every layer unrolled), "
        f"got {self.scan_unroll}"
      )
    if self.head_dim is None and self.d_model % self.n_heads:
      raise ValueError(
        f"TransformerConfig: d_model={self.d_model} is not divisible by n_heads={self.n_heads};"
        " set head_dim explicitly"
      )
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
        f"TransformerConfig: n_heads={self.n_heads} must be a multiple of n_kv_heads="
        f"{self.n_kv_heads}"
      )
    if self.position == "rope" and self.dim_per_head % 2:
      raise ValueError(f"TransformerConfig: RoPE needs an even head_dim, got {self.dim_per_head}")
    if self.rope_scaling is not None and self.rope_scaling.kind not in ("linear", "llama3"):
      raise ValueError(
        f"TransformerConfig.rope_scaling.kind={self.rope_scaling.kind!r}; expected 'linear' or"
        " 'llama3'"
      )

  @property
  def num_heads(self) -> int:
    return self.n_heads

  @property
  def num_kv_heads(self) -> int:
    return self.n_kv_heads or self.n_heads

  @property
  def dim_per_head(self) -> int:
    return self.head_dim or self.d_model // self.n_heads

  @property
  def ff_dim(self) -> int:
    return self.d_ff or 4 * self.d_model

  @property
  def mixed_matmuls(self) -> bool:
    """Whether the dense matmuls run in ``matmul_dtype`` rather than ``dtype``."""
    return self.matmul_dtype is not None and jnp.dtype(self.matmul_dtype) != jnp.dtype(self.dtype)

  @property
  def lowest_dtype(self) -> str:
    """The narrowest dtype any computation runs in (``dtype`` or ``matmul_dtype``)."""
    if self.mixed_matmuls and jnp.dtype(self.dtype) == jnp.float32:
      return self.matmul_dtype
    return self.dtype

  def replace(self, **kw) -> "TransformerConfig":
    return dataclasses.replace(self, **kw)


class KVCache(NamedTuple):
  """Fixed-size key/value cache for all layers.

  k, v: tuples of L arrays ``[B, K, S, E]`` (one buffer per layer, kv-heads before slots),
    the keys and values of every cached slot.
  mask_BS: 1 where a slot holds a real (non-padding) token that has been written.
  index: int32 scalar, the next slot to write.
  """

  k: jax.Array
  v: jax.Array
  mask: jax.Array
  index: jax.Array


def init_cache(cfg: TransformerConfig, batch: int, size: int, dtype=None) -> KVCache:
  """An empty cache of ``size`` slots (prompt length + max new tokens)."""
  dtype = jnp.dtype(dtype or cfg.dtype)
  shape = (batch, cfg.num_kv_heads, size, cfg.dim_per_head)
  return KVCache(
    k=tuple(jnp.zeros(shape, dtype) for _ in range(cfg.n_layers)),
    v=tuple(jnp.zeros(shape, dtype) for _ in range(cfg.n_layers)),
    mask=jnp.zeros((batch, size), jnp.int32),
    index=jnp.zeros((), jnp.int32),
  )


def positions_from_mask(mask_BT: jax.Array) -> jax.Array:
  """Position ids that skip padding: ``cumsum(mask) - 1``, clipped at 0 (pads get 0)."""
  return jnp.maximum(jnp.cumsum(mask_BT.astype(jnp.int32), axis=-1) - 1, 0)


def _partitioned(init, names):
  return nn.with_logical_partitioning(init, names)


def _rope_inv_freq(cfg: TransformerConfig) -> jax.Array:
  e = cfg.dim_per_head
  inv_freq = 1.0 / (cfg.rope_theta ** (jnp.arange(0, e, 2, dtype=jnp.float32) / e))
  sc = cfg.rope_scaling
  if sc is not None and sc.kind == "llama3":
    old = float(sc.original_max_position_embeddings)
    low_wavelen = old / sc.low_freq_factor
    high_wavelen = old / sc.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = jnp.where(wavelen > low_wavelen, inv_freq / sc.factor, inv_freq)
    smooth = (old / wavelen - sc.low_freq_factor) / (sc.high_freq_factor - sc.low_freq_factor)
    blended = (1 - smooth) * scaled / sc.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    inv_freq = jnp.where(medium, blended, scaled)
  return inv_freq


def _rope_tables(cfg: TransformerConfig, positions_BT: jax.Array):
  """cos/sin of shape [B, T, E] in the rotate-half layout used by HF Llama."""
  pos = positions_BT.astype(jnp.float32)
  if cfg.rope_scaling is not None and cfg.rope_scaling.kind == "linear":
    pos = pos / cfg.rope_scaling.factor
  freqs = pos[..., None] * _rope_inv_freq(cfg)  # [B, T, E/2]
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb), jnp.sin(emb)


def _apply_rope(x_BTHE, cos_BTE, sin_BTE):
  half = x_BTHE.shape[-1] // 2
  rotated = jnp.concatenate([-x_BTHE[..., half:], x_BTHE[..., :half]], axis=-1)
  cos = cos_BTE[:, :, None, :]
  sin = sin_BTE[:, :, None, :]
  out = x_BTHE.astype(jnp.float32) * cos + rotated.astype(jnp.float32) * sin
  return out.astype(x_BTHE.dtype)


class Norm(nn.Module):
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    x32 = x.astype(jnp.float32)
    scale = self.param(
      "scale",
      _partitioned(nn.initializers.ones, ("embed",)),
      (cfg.d_model,),
      jnp.dtype(cfg.param_dtype),
    )
    if cfg.norm == "rmsnorm":
      y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + cfg.norm_eps)
      return (y * scale).astype(cfg.dtype)
    bias = self.param(
      "bias",
      _partitioned(nn.initializers.zeros, ("embed",)),
      (cfg.d_model,),
      jnp.dtype(cfg.param_dtype),
    )
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + cfg.norm_eps)
    return (y * scale + bias).astype(cfg.dtype)


@flax.struct.dataclass
class LowRankKernel:
  """A frozen kernel with a low-rank update kept in factors: the layer computes
  ``x @ kernel + scale · (x @ a) @ b`` instead of ``x @ (kernel + scale · a @ b)``.

  Put in a params tree in place of a Dense ``kernel`` (``rlhf_jax.lora.factored_params``;
  leaves may carry leading axes, e.g. the stacked ``layers`` axis, which ``nn.scan`` slices
  like any param). Differentiating through it with respect to ``a`` and ``b`` forms no
  ``[in, out]`` weight gradient: ``dA = scale · xᵀ (dy bᵀ)``, ``dB = scale · (x a)ᵀ dy`` — the
  dense ``xᵀ dy`` that a merged kernel's gradient needs is never computed.
  """

  kernel: jax.Array  # [..., in, out]
  a: jax.Array  # [..., in, r]
  b: jax.Array  # [..., r, out]
  scale: float = flax.struct.field(pytree_node=False, default=1.0)


class Dense(nn.Module):
  """``flax.linen.Dense`` (same params ``kernel`` [in, out] and ``bias``, same arithmetic)
  that also accepts a :class:`LowRankKernel` in place of its kernel."""

  features: int
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()
  bias_init: Any = nn.initializers.zeros
  dot_general: Any = None

  @nn.compact
  def __call__(self, x):
    stored = self.get_variable("params", "kernel")  # None while initialising
    low_rank = stored if isinstance(stored, LowRankKernel) else None
    if low_rank is not None:
      kernel = low_rank.kernel
    else:
      kernel = self.param(
        "kernel", self.kernel_init, (x.shape[-1], self.features), self.param_dtype
      )
    bias = (
      self.param("bias", self.bias_init, (self.features,), self.param_dtype)
      if self.use_bias
      else None
    )
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    dims = (((x.ndim - 1,), (0,)), ((), ()))
    y = (self.dot_general or jax.lax.dot_general)(x, kernel, dims)
    if low_rank is not None:
      a = low_rank.a.astype(x.dtype)
      b = low_rank.b.astype(x.dtype)
      y = y + (low_rank.scale * jnp.matmul(jnp.matmul(x, a), b)).astype(y.dtype)
    if bias is not None:
      y = y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))
    return y


def _dense(
  cfg: TransformerConfig,
  features: int,
  names,
  use_bias: bool,
  name: str,
  std: Optional[float] = None,
):
  return Dense(
    features,
    use_bias=use_bias,
    dtype=jnp.dtype(cfg.dtype),
    param_dtype=jnp.dtype(cfg.param_dtype),
    kernel_init=_partitioned(nn.initializers.normal(cfg.init_std if std is None else std), names),
    bias_init=_partitioned(nn.initializers.zeros, (names[-1],)),
    dot_general=mixed_dot_general(cfg.matmul_dtype) if cfg.mixed_matmuls else None,
    name=name,
  )


def scalar_init_std(cfg: TransformerConfig) -> float:
  """The std of a fresh scalar head's kernel: ``cfg.scalar_init_std``, or 1/sqrt(d_model + 1)."""
  if cfg.scalar_init_std is None:
    return 1.0 / math.sqrt(cfg.d_model + 1)
  return cfg.scalar_init_std


def _activation(name: str):
  return {
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "silu": jax.nn.silu,
    "relu": jax.nn.relu,
  }[name]


class Attention(nn.Module):
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x_BTD, bias_BTS, cos_sin, layer_cache):
    cfg = self.cfg
    h, k_heads, e = cfg.num_heads, cfg.num_kv_heads, cfg.dim_per_head
    b, t, _ = x_BTD.shape
    q = _dense(cfg, h * e, ("embed", "heads"), cfg.qkv_bias, "q")(x_BTD).reshape(b, t, h, e)
    k = _dense(cfg, k_heads * e, ("embed", "kv_heads"), cfg.qkv_bias, "k")(x_BTD)
    v = _dense(cfg, k_heads * e, ("embed", "kv_heads"), cfg.qkv_bias, "v")(x_BTD)
    k = k.reshape(b, t, k_heads, e)
    v = v.reshape(b, t, k_heads, e)
    if cos_sin is not None:
      q = _apply_rope(q, *cos_sin)
      k = _apply_rope(k, *cos_sin)
    if layer_cache is not None:
      # Cache buffers are [B, K, S, E]: write the T new slots at `index`, attend over all S.
      cache_k, cache_v, index = layer_cache
      k = jax.lax.dynamic_update_slice_in_dim(
        cache_k, k.transpose(0, 2, 1, 3).astype(cache_k.dtype), index, axis=2
      )
      v = jax.lax.dynamic_update_slice_in_dim(
        cache_v, v.transpose(0, 2, 1, 3).astype(cache_v.dtype), index, axis=2
      )
      new_cache = (k, v)
      keys = "bkse"
    else:
      new_cache = None
      keys = "bske"
    g = h // k_heads
    q = q.reshape(b, t, k_heads, g, e)
    scores = jnp.einsum(
      f"btkge,{keys}->bkgts", q, k.astype(q.dtype), preferred_element_type=jnp.float32
    )
    scores = scores * (1.0 / math.sqrt(e)) + bias_BTS[:, None, None, :, :]
    probs = jax.nn.softmax(scores, axis=-1).astype(cfg.dtype)
    out = jnp.einsum(f"bkgts,{keys}->btkge", probs, v.astype(probs.dtype))
    out = out.reshape(b, t, h * e)
    out = _dense(cfg, cfg.d_model, ("heads", "embed"), cfg.out_bias, "o")(out)
    return out, new_cache


class Mlp(nn.Module):
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x_BTD):
    cfg = self.cfg
    act = _activation(cfg.activation)
    if cfg.mlp == "swiglu":
      gate = _dense(cfg, cfg.ff_dim, ("embed", "mlp"), cfg.mlp_bias, "gate")(x_BTD)
      up = _dense(cfg, cfg.ff_dim, ("embed", "mlp"), cfg.mlp_bias, "up")(x_BTD)
      hidden = act(gate) * up
    else:
      hidden = act(_dense(cfg, cfg.ff_dim, ("embed", "mlp"), cfg.mlp_bias, "up")(x_BTD))
    return _dense(cfg, cfg.d_model, ("mlp", "embed"), cfg.mlp_bias, "down")(hidden)


class Block(nn.Module):
  """Pre-norm residual block; scanned over layers (carry = residual stream)."""

  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x_BTD, layer_cache, bias_BTS, cos_sin, index):
    cfg = self.cfg
    cache_in = None if layer_cache is None else (layer_cache[0], layer_cache[1], index)
    attn, new_cache = Attention(cfg, name="attn")(
      Norm(cfg, name="norm_attn")(x_BTD), bias_BTS, cos_sin, cache_in
    )
    x_BTD = x_BTD + attn.astype(x_BTD.dtype)
    x_BTD = x_BTD + Mlp(cfg, name="mlp")(Norm(cfg, name="norm_mlp")(x_BTD)).astype(x_BTD.dtype)
    # The residual stream is materialised once per block. Without the barrier, XLA:CPU
    # re-derives a block's input (the sum of every earlier block's output) inside each
    # consumer fusion of unrolled layers, including the transposing copies that feed the
    # weight gradients: the PPO update phase on GPT-2 "small" runs 15% slower. Under a layer
    # scan the carry is materialised anyway, so the barrier costs nothing there.
    x_BTD = jax.lax.optimization_barrier(x_BTD)
    return x_BTD, new_cache


class Transformer(nn.Module):
  """Decoder-only transformer with an LM head, a scalar head, or both.

  ``__call__(input_ids_BT, attention_mask_BT=None, positions_BT=None, cache=None,
  head_slice=None)``:

  * without ``cache``: returns logits ``[B, T', V]`` (``head="lm"``), per-token scores
    ``[B, T']`` (``head="scalar"``) or the pair (``head="both"``), float32.
  * with ``cache`` (a :class:`KVCache`): the T new tokens are written at
    ``cache.index``, attend to every valid cached slot, and the call returns
    ``(output, new_cache)``. The layers then run unrolled, one cache buffer each; the
    ``layers`` params may be stacked (as created) or split by :func:`unstack_layers`.

  ``attention_mask_BT`` (1 = real token, 0 = padding) masks padded keys; position ids
  default to ``cumsum(mask) - 1`` over everything seen so far, so a left-padded prompt
  gives the same outputs on its real tokens as the unpadded prompt. ``head_slice=(start,
  stop)`` (static ints) applies the heads only to positions ``start:stop`` — RL needs
  logits only on response positions, T' = stop - start.
  """

  cfg: TransformerConfig

  @nn.compact
  def __call__(
    self, input_ids_BT, attention_mask_BT=None, positions_BT=None, cache=None, head_slice=None
  ):
    cfg = self.cfg
    b, t = input_ids_BT.shape
    if attention_mask_BT is None:
      attention_mask_BT = jnp.ones((b, t), jnp.int32)
    attention_mask_BT = attention_mask_BT.astype(jnp.int32)

    if cache is None:
      key_mask_BS = attention_mask_BT
      index = jnp.zeros((), jnp.int32)
      if positions_BT is None:
        positions_BT = positions_from_mask(attention_mask_BT)
      q_slot_T = jnp.arange(t)
    else:
      index = cache.index
      key_mask_BS = jax.lax.dynamic_update_slice_in_dim(
        cache.mask, attention_mask_BT, index, axis=1
      )
      if positions_BT is None:
        positions_BT = jax.lax.dynamic_slice_in_dim(
          positions_from_mask(key_mask_BS), index, t, axis=1
        )
      q_slot_T = index + jnp.arange(t)
    s = key_mask_BS.shape[1]
    causal_TS = jnp.arange(s)[None, :] <= q_slot_T[:, None]
    allowed_BTS = causal_TS[None] & (key_mask_BS[:, None, :] > 0)
    bias_BTS = jnp.where(allowed_BTS, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)

    embed = nn.Embed(
      cfg.vocab_size,
      cfg.d_model,
      dtype=jnp.dtype(cfg.dtype),
      param_dtype=jnp.dtype(cfg.param_dtype),
      embedding_init=_partitioned(nn.initializers.normal(cfg.init_std), ("vocab", "embed")),
      name="embed",
    )
    x_BTD = embed(input_ids_BT)
    cos_sin = None
    if cfg.position == "learned":
      pos_embed = nn.Embed(
        cfg.max_len,
        cfg.d_model,
        dtype=jnp.dtype(cfg.dtype),
        param_dtype=jnp.dtype(cfg.param_dtype),
        embedding_init=_partitioned(nn.initializers.normal(cfg.init_std / 2), (None, "embed")),
        name="pos_embed",
      )
      x_BTD = x_BTD + pos_embed(positions_BT)
    else:
      cos_sin = _rope_tables(cfg, positions_BT)
    x_BTD = x_BTD.astype(cfg.dtype)

    block = Block
    if cfg.remat:
      block = nn.remat(block, prevent_cse=False)
    layers = nn.scan(
      block,
      variable_axes={"params": 0},
      split_rngs={"params": True},
      in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast),
      length=cfg.n_layers,
      unroll=min(cfg.scan_unroll or cfg.n_layers, cfg.n_layers),
      metadata_params={nn.PARTITION_NAME: "layers"},
    )(cfg, name="layers")
    stored = None
    if self.has_variable("params", "layers"):
      stored = nn.meta.unbox(self.get_variable("params", "layers"))
    unstacked = isinstance(stored, (tuple, list))
    if cache is None and not unstacked:
      x_BTD, _ = layers(x_BTD, None, bias_BTS, cos_sin, index)
    else:
      if stored is None:  # initialising with a cache: create the stacked params first
        own_bias_BTT = jax.lax.dynamic_slice_in_dim(bias_BTS, index, t, axis=2)
        layers(x_BTD, None, own_bias_BTT, cos_sin, index)
        stored = nn.meta.unbox(self.get_variable("params", "layers"))
      x_BTD, new_kv = _run_unrolled(cfg, stored, x_BTD, cache, bias_BTS, cos_sin, index)
    x_BTD = Norm(cfg, name="norm_final")(x_BTD)

    if head_slice is not None:
      start, stop = head_slice
      x_BTD = x_BTD[:, start:stop]

    outputs = []
    if cfg.head in ("lm", "both"):
      if cfg.tie_embeddings and cfg.mixed_matmuls:
        table_VD = embed.embedding.astype(cfg.dtype)
        logits = mixed_matmul(x_BTD, table_VD.T, cfg.matmul_dtype)
      elif cfg.tie_embeddings:
        logits = embed.attend(x_BTD)
      else:
        logits = _dense(cfg, cfg.vocab_size, ("embed", "vocab"), False, "lm_head")(x_BTD)
      outputs.append(logits.astype(jnp.float32))
    if cfg.head in ("scalar", "both"):
      std = scalar_init_std(cfg)
      score = _dense(cfg, 1, ("embed", None), cfg.scalar_bias, "score", std=std)(x_BTD)
      outputs.append(score[..., 0].astype(jnp.float32))
    out = outputs[0] if len(outputs) == 1 else tuple(outputs)

    if cache is None:
      return out
    new_cache = KVCache(k=new_kv[0], v=new_kv[1], mask=key_mask_BS, index=index + t)
    return out, new_cache


def _run_unrolled(cfg: TransformerConfig, layer_params, x_BTD, cache, bias_BTS, cos_sin, index):
  """Runs the blocks one by one (Python loop); returns ``(x_BTD, (ks, vs) or None)``."""
  unstacked = isinstance(layer_params, (tuple, list))
  if unstacked and len(layer_params) != cfg.n_layers:
    raise ValueError(
      f"params['layers'] holds {len(layer_params)} layers; TransformerConfig."
      f"n_layers={cfg.n_layers}"
    )

  def run_block(lp, x, layer_cache):
    return Block(cfg, parent=None).apply({"params": lp}, x, layer_cache, bias_BTS, cos_sin, index)

  if cfg.remat:
    run_block = jax.checkpoint(run_block, prevent_cse=False)
  ks, vs = [], []
  for i in range(cfg.n_layers):
    lp = layer_params[i] if unstacked else jax.tree_util.tree_map(lambda a: a[i], layer_params)
    layer_cache = None if cache is None else (cache.k[i], cache.v[i])
    x_BTD, kv = run_block(lp, x_BTD, layer_cache)
    if kv is not None:
      ks.append(kv[0])
      vs.append(kv[1])
  return x_BTD, (None if cache is None else (tuple(ks), tuple(vs)))


def unstack_layers(params: Any) -> Any:
  """Splits the stacked ``layers`` params into a tuple of per-layer subtrees.

  The result is accepted by :class:`Transformer` wherever stacked params are (the layers then
  run unrolled; outputs equal the scanned ones up to float rounding). Do it once before a
  decode loop: every layer's weights then stay separate loop-invariant buffers instead of
  being sliced out of the stack on each step. Not for training: optimizers and shardings
  expect the stacked layout.
  """
  layers = params["layers"]
  if isinstance(layers, (tuple, list)):
    return params
  n = jax.tree_util.tree_leaves(layers)[0].shape[0]
  out = dict(params)
  out["layers"] = tuple(jax.tree_util.tree_map(lambda a, i=i: a[i], layers) for i in range(n))
  return out


def boxed_init_fn(model: Transformer, seq_len: int = 8):
  """``init(rng) -> params`` with logical-axis boxes kept: what
  :func:`rlhf_jax.sharding.params_shardings` and ``init_sharded`` take."""
  return lambda rng: model.init(rng, jnp.zeros((1, seq_len), jnp.int32))["params"]


def init_params(model: Transformer, rng: jax.Array, seq_len: int = 8) -> Any:
  """Initialise a params pytree (plain arrays, logical-axis boxes removed)."""
  return nn.meta.unbox(boxed_init_fn(model, seq_len)(rng))


def param_logical_axes(model: Transformer) -> Any:
  """A pytree of ``jax.sharding.PartitionSpec`` of logical axis names, one per param."""
  ids = jnp.zeros((1, 8), jnp.int32)
  boxed = jax.eval_shape(model.init, jax.random.PRNGKey(0), ids)["params"]
  return nn.get_partition_spec(boxed)
