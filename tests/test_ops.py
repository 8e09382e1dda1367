"""Tests for rlhf_jax.ops: masked statistics, whitening, token log-probs and entropy."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import ops

VARIANTS = [pytest.param(lambda f: f, id="eager"), pytest.param(jax.jit, id="jit")]


def _pad(x, n, value):
  """Appends ``n`` columns filled with ``value`` along the last axis."""
  x = np.asarray(x)
  return np.concatenate([x, np.full(x.shape[:-1] + (n,), value, x.dtype)], axis=-1)


def _whiten_oracle(x, mask, shift_mean, unbiased, eps=1e-8):
  """float64 loop oracle: statistics over entries with mask 1, zeros elsewhere."""
  vals = [float(v) for v, m in zip(np.ravel(x), np.ravel(mask)) if m]
  n = len(vals)
  mean = sum(vals) / n
  ss = sum((v - mean) ** 2 for v in vals)
  var = ss / (n - 1) if unbiased else ss / n
  out = np.zeros(np.shape(x))
  flat = out.reshape(-1)
  for i, (v, m) in enumerate(zip(np.ravel(x), np.ravel(mask))):
    if m:
      flat[i] = (float(v) - mean) / np.sqrt(var + eps) + (0.0 if shift_mean else mean)
  return out


@pytest.fixture
def data():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(3, 6)).astype(np.float32) * 2 + 1
  lengths = np.array([6, 3, 1])
  mask = (np.arange(6)[None] < lengths[:, None]).astype(np.float32)
  x = np.where(mask > 0, x, np.nan).astype(np.float32)  # garbage under the mask
  return x, mask


@pytest.mark.parametrize("variant", VARIANTS)
def test_masked_sum_mean_var_hand(variant):
  # Entries under the mask: 1, 2, 4.  sum = 7, mean = 7/3,
  # squared deviations 16/9 + 1/9 + 25/9 = 42/9  -> biased var 14/9, unbiased 42/9/2 = 7/3.
  x = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, jnp.nan]])
  mask = jnp.array([[1, 1, 0], [1, 0, 0]])
  np.testing.assert_allclose(variant(ops.masked_sum)(x, mask), 7.0, rtol=1e-6)
  np.testing.assert_allclose(variant(ops.masked_mean)(x, mask), 7 / 3, rtol=1e-6)
  np.testing.assert_allclose(
    variant(functools.partial(ops.masked_mean, axis=-1))(x, mask), [1.5, 4.0], rtol=1e-6
  )
  np.testing.assert_allclose(variant(ops.masked_var)(x, mask), 14 / 9, rtol=1e-6)
  np.testing.assert_allclose(
    variant(functools.partial(ops.masked_var, unbiased=True))(x, mask), 7 / 3, rtol=1e-6
  )
  np.testing.assert_allclose(
    variant(functools.partial(ops.masked_var, axis=-1))(x, mask), [0.25, 0.0], rtol=1e-6
  )


def test_empty_mask_gives_zero():
  x = jnp.array([[1.0, jnp.nan]])
  mask = jnp.zeros((1, 2))
  assert float(ops.masked_mean(x, mask)) == 0.0
  assert float(ops.masked_var(x, mask, unbiased=True)) == 0.0
  np.testing.assert_array_equal(ops.whiten(x, mask), [[0.0, 0.0]])
  g = jax.grad(lambda x: ops.masked_var(x, mask) + ops.masked_mean(x, mask))(x)
  assert np.all(np.isfinite(g))


def test_bf16_accumulates_in_float32():
  x = jnp.ones((4097,), jnp.bfloat16)  # 4097 is not representable in bf16
  out = ops.masked_sum(x, jnp.ones_like(x))
  assert out.dtype == jnp.float32
  assert float(out) == 4097.0
  assert ops.masked_mean(x, jnp.ones_like(x)).dtype == jnp.float32


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("shift_mean,unbiased", [(True, False), (False, True), (False, False)])
def test_whiten_matches_loop_oracle(data, variant, shift_mean, unbiased):
  x, mask = data
  fn = variant(functools.partial(ops.whiten, shift_mean=shift_mean, unbiased=unbiased))
  out = fn(x, mask)
  np.testing.assert_allclose(
    out, _whiten_oracle(x, mask, shift_mean, unbiased), rtol=1e-5, atol=1e-5
  )
  assert np.all(np.asarray(out)[mask == 0] == 0)
  if shift_mean:
    np.testing.assert_allclose(ops.masked_mean(out, mask), 0.0, atol=1e-6)
    np.testing.assert_allclose(ops.masked_var(out, mask), 1.0, rtol=1e-5)


def test_whiten_padding_invariance(data):
  x, mask = data
  base = ops.whiten(x, mask, shift_mean=False)
  padded = ops.whiten(_pad(x, 3, 1e30), _pad(mask, 3, 0.0), shift_mean=False)
  np.testing.assert_array_equal(np.asarray(padded)[:, :6], base)
  np.testing.assert_array_equal(np.asarray(padded)[:, 6:], 0.0)
  g = jax.grad(lambda x: jnp.sum(ops.whiten(x, mask) ** 3))(x)
  assert np.all(np.isfinite(g)) and np.all(np.asarray(g)[mask == 0] == 0)


def test_whiten_vmap_equals_per_row(data):
  x, mask = data
  batched = jax.vmap(ops.whiten)(x, mask)
  for b in range(x.shape[0]):
    np.testing.assert_allclose(batched[b], ops.whiten(x[b], mask[b]), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(
    batched[0], _whiten_oracle(x[0], mask[0], True, False), rtol=1e-5, atol=1e-6
  )


def _logsoftmax_oracle(logits, tokens, temperature):
  z = np.asarray(logits, np.float64) / temperature
  out = np.zeros(tokens.shape)
  for idx in np.ndindex(tokens.shape):
    row = z[idx]
    m = row.max()
    out[idx] = row[tokens[idx]] - (m + np.log(np.sum(np.exp(row - m))))
  return out


@pytest.mark.parametrize("variant", VARIANTS)
def test_token_logprobs_matches_oracle(variant):
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(2, 5, 11)).astype(np.float32) * 4
  tokens = rng.integers(0, 11, size=(2, 5))
  for temperature in (1.0, 0.7):
    out = variant(ops.token_logprobs)(logits, tokens, jnp.float32(temperature))
    assert out.shape == (2, 5) and out.dtype == jnp.float32
    np.testing.assert_allclose(
      out, _logsoftmax_oracle(logits, tokens, temperature), rtol=1e-5, atol=1e-5
    )


def test_token_logprobs_bf16_logits_accumulate_in_f32():
  rng = np.random.default_rng(2)
  logits = jnp.asarray(rng.normal(size=(2, 3, 2048)) * 8, jnp.bfloat16)
  tokens = rng.integers(0, 2048, size=(2, 3))
  out = ops.token_logprobs(logits, tokens)
  assert out.dtype == jnp.float32
  expected = _logsoftmax_oracle(np.asarray(logits.astype(jnp.float32)), tokens, 1.0)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_token_logprobs_gradient_and_shape_check():
  logits = jnp.array([[0.0, 1.0, 2.0]])
  g = jax.grad(lambda z: ops.token_logprobs(z, jnp.array([2]))[0])(logits)
  p = np.exp([0.0, 1.0, 2.0]) / np.exp([0.0, 1.0, 2.0]).sum()
  np.testing.assert_allclose(g[0], np.array([0, 0, 1.0]) - p, rtol=1e-6)
  with pytest.raises(ValueError, match="tokens shape"):
    ops.token_logprobs(jnp.zeros((2, 3, 4)), jnp.zeros((2, 4), jnp.int32))


@pytest.mark.parametrize("variant", VARIANTS)
def test_token_entropy(variant):
  # Uniform over V = 8 -> log 8; a one-token distribution with -inf elsewhere -> 0.
  logits = jnp.array([[0.0] * 8, [3.0] + [-jnp.inf] * 7])
  out = variant(ops.token_entropy)(logits)
  np.testing.assert_allclose(out, [np.log(8), 0.0], atol=1e-6)
  g = jax.grad(lambda z: jnp.sum(ops.token_entropy(z)))(logits)
  assert np.all(np.isfinite(g))
  rng = np.random.default_rng(3)
  z = (rng.normal(size=(4, 6)) * 3).astype(np.float32)
  z64 = z.astype(np.float64) / 0.5
  p = np.exp(z64 - z64.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  expected = -np.sum(p * np.log(p), axis=-1)
  assert expected.min() < 1e-3  # a near-deterministic row is included
  np.testing.assert_allclose(
    variant(ops.token_entropy)(z, jnp.float32(0.5)), expected, rtol=1e-4, atol=1e-7
  )


@pytest.mark.parametrize("variant", VARIANTS)
def test_explained_variance(data, variant):
  x, mask = data
  ev = variant(ops.explained_variance)
  np.testing.assert_allclose(ev(x, x, mask), 1.0, atol=1e-6)
  const = np.full_like(x, float(ops.masked_mean(x, mask)))
  np.testing.assert_allclose(ev(const, x, mask), 0.0, atol=1e-6)
  rng = np.random.default_rng(4)
  pred = (x + rng.normal(size=x.shape)).astype(np.float32)
  t = np.asarray(x, np.float64)[mask > 0]
  p = np.asarray(pred, np.float64)[mask > 0]
  np.testing.assert_allclose(ev(pred, x, mask), 1 - np.var(t - p) / np.var(t), rtol=1e-5)
  padded = ev(_pad(pred, 2, np.nan), _pad(x, 2, np.nan), _pad(mask, 2, 0.0))
  np.testing.assert_allclose(padded, ev(pred, x, mask), rtol=1e-6)
  assert float(ev(pred, np.ones_like(x), mask)) == 0.0


def test_token_logprobs_does_not_materialise_log_softmax():
  # A [B, T, V] float32 log-softmax would need B·T·V·4 bytes of scratch; the fused
  # gather + logsumexp needs only [B, T]-sized buffers.
  logits = jax.ShapeDtypeStruct((4, 16, 8192), jnp.float32)
  tokens = jax.ShapeDtypeStruct((4, 16), jnp.int32)
  stats = jax.jit(ops.token_logprobs).lower(logits, tokens).compile().memory_analysis()
  if stats is None:
    pytest.skip("backend reports no memory analysis")
  assert stats.temp_size_in_bytes < 4 * 16 * 8192 * 4 // 16
