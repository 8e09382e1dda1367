"""Model-level tests of the transformer (no Hugging Face): padding, KV cache, head slicing,
bfloat16, remat, GQA and config validation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.models import RopeScaling, Transformer, TransformerConfig, init_cache, init_params

V = 64
PAD = 0

CONFIGS = {
  "gpt2": TransformerConfig(
    vocab_size=V, d_model=32, n_layers=2, n_heads=4, max_len=32, head="both", init_std=0.2
  ),
  "llama": TransformerConfig(
    vocab_size=V,
    d_model=32,
    n_layers=2,
    n_heads=4,
    n_kv_heads=2,
    d_ff=64,
    norm="rmsnorm",
    mlp="swiglu",
    activation="silu",
    position="rope",
    rope_theta=100.0,
    qkv_bias=True,
    out_bias=False,
    mlp_bias=False,
    tie_embeddings=False,
    head="both",
    init_std=0.2,
    rope_scaling=RopeScaling(kind="llama3", factor=4.0, original_max_position_embeddings=16),
  ),
}


@functools.partial(jax.jit, static_argnames=("model", "head_slice"))
def _apply(model, params, ids, mask, head_slice=None):
  return model.apply({"params": params}, ids, mask, head_slice=head_slice)


@functools.partial(jax.jit, static_argnames=("model",))
def _apply_cached(model, params, ids, mask, cache):
  return model.apply({"params": params}, ids, mask, cache=cache)


@functools.lru_cache(maxsize=None)
def _params(cfg, seed=0):
  """Random params with the structure of ``init_params`` (from ``jax.eval_shape``, which is
  much faster than running the init): norm scales 1 + 0.2 N(0, 1), everything else
  0.2 N(0, 1), so unit norms and zero biases cannot hide a mix-up."""
  abstract = jax.eval_shape(lambda: init_params(Transformer(cfg), jax.random.PRNGKey(0)))
  rng = np.random.default_rng(seed)

  def leaf(path, x):
    base = 1.0 if path[-1].key == "scale" else 0.0
    return jnp.asarray(base + 0.2 * rng.standard_normal(x.shape), x.dtype)

  return jax.tree_util.tree_map_with_path(leaf, abstract)


def _left_padded(lengths, t, seed=0):
  """ids_BT, mask_BT with row b holding lengths[b] real tokens at the right end."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(1, V, size=(len(lengths), t))
  mask = (np.arange(t)[None, :] >= t - np.asarray(lengths)[:, None]).astype(np.int32)
  return jnp.asarray(np.where(mask == 1, ids, PAD)), jnp.asarray(mask)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_left_padding_invariance(name):
  """Left-padded rows give the unpadded outputs on their real tokens.

  The reference is the same tokens right-aligned to the start (causal attention makes trailing
  pads invisible to real tokens, so that equals the unpadded run) plus one truly unpadded row.
  """
  cfg = CONFIGS[name]
  model, params = Transformer(cfg), _params(cfg)
  lengths = [8, 5, 2]
  ids, mask = _left_padded(lengths, 8)
  logits, scores = _apply(model, params, ids, mask)
  shift = [8 - n for n in lengths]
  right_ids = np.stack([np.roll(np.asarray(ids[b]), -s) for b, s in enumerate(shift)])
  right_mask = np.stack([np.roll(np.asarray(mask[b]), -s) for b, s in enumerate(shift)])
  ref_logits, ref_scores = _apply(model, params, jnp.asarray(right_ids), jnp.asarray(right_mask))
  for b, n in enumerate(lengths):
    np.testing.assert_allclose(logits[b, 8 - n :], ref_logits[b, :n], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(scores[b, 8 - n :], ref_scores[b, :n], atol=1e-5, rtol=1e-5)
  row_logits, row_scores = _apply(model, params, ids[1:2, 3:], jnp.ones((1, 5), jnp.int32))
  np.testing.assert_allclose(logits[1, 3:], row_logits[0], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(scores[1, 3:], row_scores[0], atol=1e-5, rtol=1e-5)
  assert np.isfinite(np.asarray(logits)).all()  # fully padded query rows too


@pytest.mark.parametrize("name", list(CONFIGS))
def test_kv_cache_prefill_and_decode_match_full_forward(name):
  cfg = CONFIGS[name]
  model, params = Transformer(cfg), _params(cfg)
  prompt, prompt_mask = _left_padded([6, 3], 6, seed=1)
  new = jnp.asarray(np.random.default_rng(2).integers(1, V, size=(2, 3)))
  full_ids = jnp.concatenate([prompt, new], axis=1)
  full_mask = jnp.concatenate([prompt_mask, jnp.ones_like(new)], axis=1)
  full_logits, full_scores = _apply(model, params, full_ids, full_mask)

  cache = init_cache(cfg, batch=2, size=9)
  (logits, scores), cache = _apply_cached(model, params, prompt, prompt_mask, cache)
  real = np.asarray(prompt_mask, bool)
  np.testing.assert_allclose(
    np.asarray(logits)[real], np.asarray(full_logits[:, :6])[real], atol=1e-5, rtol=1e-5
  )
  for i in range(3):
    step = new[:, i : i + 1]
    (logits, scores), cache = _apply_cached(model, params, step, jnp.ones_like(step), cache)
    np.testing.assert_allclose(logits[:, 0], full_logits[:, 6 + i], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(scores[:, 0], full_scores[:, 6 + i], atol=1e-5, rtol=1e-5)
  assert int(cache.index) == 9


def test_head_slice_equals_slicing_full_outputs():
  cfg = CONFIGS["llama"]
  model, params = Transformer(cfg), _params(cfg)
  ids, mask = _left_padded([8, 4], 8)
  logits, scores = _apply(model, params, ids, mask)
  sliced_logits, sliced_scores = _apply(model, params, ids, mask, head_slice=(3, 7))
  assert sliced_logits.shape == (2, 4, V) and sliced_scores.shape == (2, 4)
  np.testing.assert_allclose(sliced_logits, logits[:, 3:7], atol=1e-6, rtol=1e-6)
  np.testing.assert_allclose(sliced_scores, scores[:, 3:7], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_bfloat16_compute_close_to_float32(name):
  cfg = CONFIGS[name]
  params = _params(cfg)
  ids, mask = _left_padded([8, 5], 8)
  logits32, scores32 = _apply(Transformer(cfg), params, ids, mask)
  logits16, scores16 = _apply(Transformer(cfg.replace(dtype="bfloat16")), params, ids, mask)
  assert logits16.dtype == jnp.float32 and scores16.dtype == jnp.float32
  real = np.asarray(mask, bool)
  err = np.abs(np.asarray(logits16) - np.asarray(logits32))[real].max()
  scale = np.abs(np.asarray(logits32))[real].max()
  assert np.isfinite(np.asarray(logits16)).all()
  assert err < 0.05 * scale, (err, scale)
  s_err = np.abs(np.asarray(scores16) - np.asarray(scores32))[real].max()
  assert s_err < 0.05 * np.abs(np.asarray(scores32))[real].max() + 0.05


@pytest.mark.parametrize(
  "variant",
  [
    dict(remat=True),
    dict(scan_unroll=2),
    pytest.param(dict(scan_unroll=64), marks=pytest.mark.slow),
    pytest.param(dict(scan_unroll=0), marks=pytest.mark.slow),
    pytest.param(dict(remat=True, scan_unroll=2), marks=pytest.mark.slow),
  ],
)
def test_remat_and_unroll_same_outputs_and_grads(variant):
  """Recomputation and unrolling the layer scan change the schedule, not the numbers."""
  cfg = CONFIGS["llama"]
  params = _params(cfg)
  ids, mask = _left_padded([8, 6], 8)

  def loss(model, p):
    logits, scores = model.apply({"params": p}, ids, mask)
    logp = jax.nn.log_softmax(logits[:, :-1])
    tok = jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
    return -(tok * mask[:, 1:]).sum() + (scores * mask).sum()

  plain = jax.jit(jax.value_and_grad(functools.partial(loss, Transformer(cfg))))
  remat = jax.jit(jax.value_and_grad(functools.partial(loss, Transformer(cfg.replace(**variant)))))
  v0, g0 = plain(params)
  v1, g1 = remat(params)
  np.testing.assert_allclose(v1, v0, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5), g1, g0)
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(g0)) > 0


def test_gqa_single_kv_head_equals_mha_with_tiled_kv():
  """n_kv_heads=1 (multi-query) equals multi-head attention whose K/V heads are copies."""
  mqa_cfg = CONFIGS["llama"].replace(n_kv_heads=1, head="lm")
  mha_cfg = mqa_cfg.replace(n_kv_heads=None)
  params = _params(mqa_cfg)
  e = mqa_cfg.dim_per_head
  assert params["layers"]["attn"]["k"]["kernel"].shape == (2, 32, e)
  mha = jax.tree.map(lambda x: x, params)
  for proj in ("k", "v"):
    mha["layers"]["attn"][proj] = {
      name: jnp.tile(w, (1,) * (w.ndim - 1) + (mqa_cfg.n_heads,))
      for name, w in params["layers"]["attn"][proj].items()
    }
  ids, mask = _left_padded([8, 3], 8)
  out_mqa = _apply(Transformer(mqa_cfg), params, ids, mask)
  out_mha = _apply(Transformer(mha_cfg), mha, ids, mask)
  np.testing.assert_allclose(out_mqa, out_mha, atol=1e-5, rtol=1e-5)


_BASE = dict(vocab_size=V, d_model=32, n_layers=1, n_heads=4)


@pytest.mark.parametrize(
  "overrides, field",
  [
    ({"head": "value"}, "TransformerConfig.head='value'"),
    ({"norm": "batchnorm"}, "TransformerConfig.norm='batchnorm'"),
    ({"mlp": "moe"}, "TransformerConfig.mlp='moe'"),
    ({"position": "alibi"}, "TransformerConfig.position='alibi'"),
    ({"activation": "tanh"}, "TransformerConfig.activation='tanh'"),
    ({"d_model": 0}, "TransformerConfig.d_model must be positive"),
    ({"n_layers": -1}, "TransformerConfig.n_layers must be positive"),
    ({"scan_unroll": -1}, "TransformerConfig.scan_unroll must be >= 0"),
    ({"n_heads": 5}, "n_heads=5"),
    ({"n_kv_heads": 3}, "n_kv_heads=3"),
    ({"position": "rope", "head_dim": 7}, "head_dim, got 7"),
    ({"rope_scaling": RopeScaling(kind="yarn")}, "TransformerConfig.rope_scaling.kind='yarn'"),
  ],
)
def test_invalid_config_names_the_field(overrides, field):
  with pytest.raises(ValueError, match=field.replace("(", r"\(").replace(".", r"\.")):
    TransformerConfig(**{**_BASE, **overrides})
