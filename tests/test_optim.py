"""Tests for rlhf_jax.optim: TensorFlow-style Adam."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlhf_jax import optim

GRADS = [
  {"w": np.array([0.5, -1e-4, 2.0]), "b": np.array(3e-6)},
  {"w": np.array([-0.3, 2e-4, 1.0]), "b": np.array(-1e-6)},
  {"w": np.array([0.1, -5e-5, -4.0]), "b": np.array(2e-6)},
]


def _tf_adam_oracle(grads_seq, lrs, b1, b2, eps):
  """float64 numpy port of tf.train.AdamOptimizer's dense update (returns the deltas)."""
  m = {k: np.zeros_like(v, np.float64) for k, v in grads_seq[0].items()}
  v = {k: np.zeros_like(x, np.float64) for k, x in grads_seq[0].items()}
  b1_power, b2_power = 1.0, 1.0
  deltas = []
  for grads, lr in zip(grads_seq, lrs):
    b1_power *= b1
    b2_power *= b2
    lr_t = lr * np.sqrt(1 - b2_power) / (1 - b1_power)
    step = {}
    for k, g in grads.items():
      m[k] = b1 * m[k] + (1 - b1) * g
      v[k] = b2 * v[k] + (1 - b2) * g * g
      step[k] = -lr_t * m[k] / (np.sqrt(v[k]) + eps)
    deltas.append(step)
  return deltas


def _run(tx, grads_seq, jit=True):
  params = {k: jnp.zeros(np.shape(v), jnp.float32) for k, v in grads_seq[0].items()}
  state = tx.init(params)
  update = jax.jit(tx.update) if jit else tx.update
  out = []
  for grads in grads_seq:
    grads = jax.tree.map(lambda g: jnp.asarray(g, jnp.float32), grads)
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
    out.append(updates)
  return out


def test_first_step_hand():
  # Step 1: m = 0.1 g, v = 0.001 g², lr_1 = lr √0.001 / 0.1, so the update is
  # -lr g / (|g| + ε/√(1-b2)).  g = 0.5, lr = 0.1, ε = 1e-5:
  # TF: -0.1 · 0.5 / (0.5 + 3.16227766e-4) = -0.09993679;
  # optax: -0.1 · 0.5 / 0.50001 = -0.09999800.
  g = {"w": jnp.array([0.5])}
  tf_update = _run(optim.tf_adam(0.1, eps=1e-5), [g])[0]["w"]
  optax_update = _run(optax.adam(0.1, eps=1e-5), [g])[0]["w"]
  np.testing.assert_allclose(tf_update, [-0.09993679], rtol=1e-6)
  # optax forms 1 - 0.999^t in float32 (≈7e-6 relative error at t = 1).
  np.testing.assert_allclose(optax_update, [-0.09999800], rtol=2e-5)


@pytest.mark.parametrize("jit", [True, False], ids=["jit", "eager"])
def test_matches_tf_oracle_three_steps(jit):
  lrs = [0.01] * 3
  got = _run(optim.tf_adam(0.01, b1=0.9, b2=0.999, eps=1e-5), GRADS, jit=jit)
  want = _tf_adam_oracle(GRADS, lrs, 0.9, 0.999, 1e-5)
  for g, w in zip(got, want):
    for k in w:
      np.testing.assert_allclose(g[k], w[k], rtol=1e-5, atol=1e-12)


def test_schedule_learning_rate():
  schedule = optax.linear_schedule(0.03, 0.0, 3)  # lr at counts 0, 1, 2: 0.03, 0.02, 0.01
  got = _run(optim.tf_adam(schedule, b1=0.8, b2=0.99, eps=1e-6), GRADS)
  want = _tf_adam_oracle(GRADS, [0.03, 0.02, 0.01], 0.8, 0.99, 1e-6)
  for g, w in zip(got, want):
    for k in w:
      np.testing.assert_allclose(g[k], w[k], rtol=1e-5, atol=1e-12)


def test_equals_optax_adam_without_eps():
  got = _run(optim.tf_adam(0.01, eps=0.0), GRADS)
  ref = _run(optax.adam(0.01, eps=0.0), GRADS)
  for g, r in zip(got, ref):
    for k in g:
      np.testing.assert_allclose(g[k], r[k], rtol=3e-5)  # optax's float32 1 - b^t


def test_differs_from_optax_adam_as_the_formula_says():
  # optax: lr m̂ / (√v̂ + ε); TF: lr m̂ / (√v̂ + ε / √(1 - b2^t)).
  # Ratio TF/optax per entry:
  # (√v̂ + ε) / (√v̂ + ε / √(1 - b2^t)).
  eps, b1, b2 = 1e-5, 0.9, 0.999
  got = _run(optim.tf_adam(0.01, eps=eps), GRADS)
  ref = _run(optax.adam(0.01, eps=eps), GRADS)
  m = v = 0.0
  for t, (grads, g, r) in enumerate(zip(GRADS, got, ref), start=1):
    m = b1 * m + (1 - b1) * grads["w"]
    v = b2 * v + (1 - b2) * grads["w"] ** 2
    sqrt_v_hat = np.sqrt(v / (1 - b2**t))
    ratio = (sqrt_v_hat + eps) / (sqrt_v_hat + eps / np.sqrt(1 - b2**t))
    np.testing.assert_allclose(np.asarray(g["w"]) / np.asarray(r["w"]), ratio, rtol=3e-5)
    # The tiny-gradient entry is shrunk a lot, the large ones barely.
    assert ratio[1] < 0.5 and ratio[2] > 0.999


def test_bf16_params_keep_float32_moments():
  params = {"w": jnp.zeros((3,), jnp.bfloat16)}
  tx = optim.tf_adam(0.1)
  state = tx.init(params)
  assert state[0].mu["w"].dtype == jnp.float32
  updates, state = tx.update({"w": jnp.array([0.5, -0.5, 1.0], jnp.bfloat16)}, state, params)
  assert updates["w"].dtype == jnp.bfloat16
  assert int(state[0].count) == 1
  np.testing.assert_allclose(updates["w"].astype(jnp.float32), [-0.1, 0.1, -0.1], rtol=1e-2)
