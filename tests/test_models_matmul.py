"""The bf16-operand matmul with a hand-written gradient, and the transformer's matmul_dtype."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from rlhf_jax import sharding
from rlhf_jax.models import Transformer, TransformerConfig, init_params
from rlhf_jax.models.matmul import mixed_matmul
from rlhf_jax.train import common


def _bf16_f64(x):
  """``x`` rounded to bfloat16, as float64 (the exact operands the matmul sees)."""
  return np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).astype(np.float64)


def test_mixed_matmul_value_and_grads_are_bf16_operand_products():
  kx, kw, kg = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(kx, (3, 5, 48), jnp.float32)
  w = jax.random.normal(kw, (48, 40), jnp.float32) * 0.1
  g = jax.random.normal(kg, (3, 5, 40), jnp.float32)
  y, vjp = jax.vjp(lambda a, b: mixed_matmul(a, b, "bfloat16"), x, w)
  dx, dw = vjp(g)
  assert y.dtype == dx.dtype == dw.dtype == jnp.float32
  # Oracle: float64 products of the bf16-rounded operands (f32 accumulation of 48 terms).
  xb, wb, gb = _bf16_f64(x), _bf16_f64(w), _bf16_f64(g)
  np.testing.assert_allclose(y, xb @ wb, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dx, gb @ wb.T, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dw, xb.reshape(-1, 48).T @ gb.reshape(-1, 40), rtol=1e-5, atol=1e-4)


def test_mixed_matmul_grad_close_to_float32_grad():
  """Against jax.grad of the float32 matmul: within bfloat16 rounding (8 mantissa bits)."""
  kx, kw = jax.random.split(jax.random.PRNGKey(1))
  x = jax.random.normal(kx, (64, 96), jnp.float32)
  w = jax.random.normal(kw, (96, 32), jnp.float32) * 0.1

  def loss(mm, a, b):
    return jnp.sum(jnp.tanh(mm(a, b)) ** 2)

  g32 = jax.grad(lambda a, b: loss(jnp.matmul, a, b), argnums=(0, 1))(x, w)
  g16 = jax.grad(
    lambda a, b: loss(lambda p, q: mixed_matmul(p, q, "bfloat16"), a, b), argnums=(0, 1)
  )(x, w)
  for a, b in zip(g16, g32):
    rel = float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))
    assert 1e-4 < rel < 2e-2, rel  # visibly rounded, yet close


def test_mixed_matmul_rejects_other_shapes():
  with pytest.raises(ValueError, match="x\\[..., D\\] and w\\[D, F\\]"):
    mixed_matmul(jnp.ones((2, 3)), jnp.ones((4, 5)), "bfloat16")


def test_matmul_dtype_is_validated_and_reaches_the_model():
  with pytest.raises(ValueError, match="TransformerConfig.matmul_dtype='int8'"):
    TransformerConfig(vocab_size=8, d_model=8, n_layers=1, n_heads=1, matmul_dtype="int8")
  with pytest.raises(ValueError, match="model.matmul_dtype='bf16'"):
    common.ModelSpec(matmul_dtype="bf16")
  spec = common.ModelSpec(preset="llama-tiny", vocab_size=16, matmul_dtype="bfloat16")
  model, _ = common.load_model(spec, "lm", jax.random.PRNGKey(0), sharding.make_mesh(1, -1, 1))
  assert model.cfg.matmul_dtype == "bfloat16" and model.cfg.mixed_matmuls
  model, _ = common.load_model(
    common.ModelSpec(preset="llama-tiny", vocab_size=16),
    "lm",
    jax.random.PRNGKey(0),
    sharding.make_mesh(1, -1, 1),
  )
  assert model.cfg.matmul_dtype is None and not model.cfg.mixed_matmuls


@pytest.mark.slow  # the default suite has the PPO update's bound (tests/test_ppo_precision.py)
@pytest.mark.parametrize("tie", [True, False])
def test_bf16_matmul_model_close_to_float32(tie):
  """Same params (float32): logits and gradients within bf16 rounding of the f32 model; the
  params stay float32 and no gradient is lost."""
  cfg = TransformerConfig(
    vocab_size=64, d_model=32, n_layers=2, n_heads=4, max_len=16, tie_embeddings=tie
  )
  m32, m16 = Transformer(cfg), Transformer(cfg.replace(matmul_dtype="bfloat16"))
  assert m16.cfg.lowest_dtype == "bfloat16" and m32.cfg.lowest_dtype == "float32"
  params = init_params(m32, jax.random.PRNGKey(0))
  ids = jax.random.randint(jax.random.PRNGKey(1), (2, 8), 0, 64)

  def loss(model, p):
    logits = model.apply({"params": p}, ids)
    return -jnp.mean(jax.nn.log_softmax(logits)[..., 3]), logits

  (l32, z32), g32 = jax.jit(jax.value_and_grad(lambda p: loss(m32, p), has_aux=True))(params)
  (l16, z16), g16 = jax.jit(jax.value_and_grad(lambda p: loss(m16, p), has_aux=True))(params)
  assert z16.dtype == jnp.float32
  assert 0 < float(jnp.max(jnp.abs(z16 - z32))) < 0.02 * float(jnp.max(jnp.abs(z32)))
  np.testing.assert_allclose(l16, l32, rtol=5e-3)
  flat32, flat16 = jax.tree.leaves(g32), jax.tree.leaves(g16)
  assert all(a.dtype == jnp.float32 for a in flat16)
  for a, b in zip(flat16, flat32):
    assert float(jnp.linalg.norm(a - b)) <= 0.05 * float(jnp.linalg.norm(b)) + 1e-7
