"""Tests for rlhf_jax.kl: KL estimators, per-sequence KL and the KL controllers."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import kl

VARIANTS = [pytest.param(lambda f: f, id="eager"), pytest.param(jax.jit, id="jit")]


def _kl_oracle(logp, logp_ref, estimator):
  out = np.zeros(np.shape(logp))
  flat = out.reshape(-1)
  for i, (lp, lr) in enumerate(zip(np.ravel(logp), np.ravel(logp_ref))):
    log_ratio = float(lr) - float(lp)
    if estimator == "k1":
      flat[i] = -log_ratio
    elif estimator == "k2":
      flat[i] = 0.5 * log_ratio**2
    else:
      log_ratio = min(max(log_ratio, -20.0), 20.0)
      flat[i] = min(max(np.exp(log_ratio) - 1 - log_ratio, -10.0), 10.0)
  return out


@pytest.mark.parametrize("variant", VARIANTS)
def test_estimators_hand(variant):
  # logp = -1, logp_ref = -2: log ρ = -1 -> k1 = 1, k2 = 0.5, k3 = e^-1 - 1 + 1 = 0.36787944.
  # logp = -2, logp_ref = -1: log ρ = +1 -> k1 = -1, k2 = 0.5, k3 = e - 2 = 0.71828183.
  logp, logp_ref = jnp.array([-1.0, -2.0]), jnp.array([-2.0, -1.0])
  expected = {"k1": [1.0, -1.0], "k2": [0.5, 0.5], "k3": [0.36787944, 0.71828183]}
  for estimator, want in expected.items():
    got = variant(functools.partial(kl.kl_penalty, estimator=estimator))(logp, logp_ref)
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("estimator", kl.ESTIMATORS)
def test_estimators_match_oracle(estimator):
  rng = np.random.default_rng(0)
  logp = (rng.normal(size=(4, 9)) * 3).astype(np.float32)
  logp_ref = (logp + rng.normal(size=(4, 9)) * 2).astype(np.float32)
  logp_ref[0, :3] = [logp[0, 0] + 25.0, logp[0, 1] - 25.0, logp[0, 2] + 2.5]
  got = kl.kl_penalty(logp, logp_ref, estimator)
  np.testing.assert_allclose(got, _kl_oracle(logp, logp_ref, estimator), rtol=1e-5, atol=1e-5)
  bf = kl.kl_penalty(
    jnp.asarray(logp, jnp.bfloat16), jnp.asarray(logp_ref, jnp.bfloat16), estimator
  )
  assert bf.dtype == jnp.float32


def test_k3_finite_under_extreme_drift():
  # logp - logp_ref = ±1000: log ρ clamps to ∓20; exp(20) - 21 and e^-20 + 19 both
  # clamp to 10.
  logp = jnp.array([1000.0, -1000.0, 0.0, 0.0])
  logp_ref = jnp.array([0.0, 0.0, 2.0, 3.0])
  k3 = kl.kl_penalty(logp, logp_ref, "k3")
  # log ρ = 2: e^2 - 3 = 4.3890561 (inside the clamp); log ρ = 3: e^3 - 4 = 16.09 -> 10.
  np.testing.assert_allclose(k3, [10.0, 10.0, 4.3890561, 10.0], rtol=1e-6)
  g_p, g_r = jax.grad(lambda a, b: jnp.sum(kl.kl_penalty(a, b, "k3")), argnums=(0, 1))(
    logp, logp_ref
  )
  assert np.all(np.isfinite(g_p)) and np.all(np.isfinite(g_r))
  # Inside the clamp d k3 / d logp = 1 - ρ = 1 - e^2; at the clamps the gradient is 0.
  np.testing.assert_allclose(g_p, [0.0, 0.0, 1 - np.exp(2.0), 0.0], rtol=1e-6)
  for estimator in ("k1", "k2"):
    assert np.all(np.isfinite(kl.kl_penalty(logp, logp_ref, estimator)))


def test_mask_and_sequence_kl():
  rng = np.random.default_rng(1)
  logp = rng.normal(size=(3, 6)).astype(np.float32)
  logp_ref = rng.normal(size=(3, 6)).astype(np.float32)
  mask = (np.arange(6)[None] < np.array([[6], [2], [0]])).astype(np.float32)
  logp[mask == 0] = np.nan
  out = kl.kl_penalty(logp, logp_ref, "k3", mask=mask)
  assert np.all(np.asarray(out)[mask == 0] == 0) and np.all(np.isfinite(out))
  for estimator in kl.ESTIMATORS:
    got = kl.sequence_kl(logp, logp_ref, mask, estimator)
    per_token = _kl_oracle(np.nan_to_num(logp), logp_ref, estimator)
    want = [sum(per_token[b, t] for t in range(6) if mask[b, t]) for b in range(3)]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  g = jax.grad(lambda a: jnp.sum(kl.sequence_kl(a, logp_ref, mask, "k3")))(jnp.asarray(logp))
  assert np.all(np.isfinite(g)) and np.all(np.asarray(g)[mask == 0] == 0)
  with pytest.raises(ValueError, match="estimator"):
    kl.kl_penalty(logp, logp_ref, "k4")


class _OAIAdaptiveKLController:
  """float64 oracle: lm-human-preferences' AdaptiveKLController."""

  def __init__(self, init_kl_coef, target, horizon):
    self.value, self.target, self.horizon = init_kl_coef, target, horizon

  def update(self, current, n_steps):
    proportional_error = min(max(current / self.target - 1, -0.2), 0.2)
    self.value *= 1 + proportional_error * n_steps / self.horizon


def test_adaptive_controller_hand():
  # β = 0.15, KL = 12, target 6: e = clip(1, ±0.2) = 0.2; β = 0.15 (1 + 0.2 · 512/10000)
  # = 0.15 · 1.01024 = 0.151536.
  state = kl.adaptive_kl_init(0.15)
  state = kl.adaptive_kl_update(state, 12.0, 512, 6.0, 10_000.0)
  np.testing.assert_allclose(state.beta, 0.151536, rtol=1e-6)
  # KL = 5.4: e = -0.1; β = 0.151536 (1 - 0.1 · 0.0512).
  state = kl.adaptive_kl_update(state, 5.4, 512, 6.0, 10_000.0)
  np.testing.assert_allclose(state.beta, 0.151536 * (1 - 0.00512), rtol=1e-6)


def test_adaptive_controller_matches_oai_for_many_steps_under_jit():
  traces = []

  @jax.jit
  def update(state, observed, n_steps, target, horizon):
    traces.append(1)
    return kl.adaptive_kl_update(state, observed, n_steps, target, horizon)

  rng = np.random.default_rng(2)
  observed = rng.uniform(0.0, 15.0, size=12)
  oracle = _OAIAdaptiveKLController(0.15, 6.0, 10_000)
  state = kl.adaptive_kl_init(jnp.float32(0.15))
  for i, current in enumerate(observed):
    target, horizon = (6.0, 10_000.0) if i < 8 else (4.0, 2_000.0)
    oracle.target, oracle.horizon = target, horizon
    oracle.update(current, 512)
    state = update(
      state, jnp.float32(current), jnp.int32(512), jnp.float32(target), jnp.float32(horizon)
    )
    np.testing.assert_allclose(state.beta, oracle.value, rtol=1e-5)
  assert len(traces) == 1
  assert state.beta.dtype == jnp.float32


def test_adaptive_controller_uses_sequence_sum_kl():
  # Two sequences of 3 and 1 tokens with k1 = 1 per token: per-sequence sums [3, 1], mean 2.
  logp = jnp.array([[0.0, 0.0, 0.0], [0.0, 5.0, 5.0]])
  logp_ref = logp - 1.0
  mask = jnp.array([[1, 1, 1], [1, 0, 0]])
  observed = jnp.mean(kl.sequence_kl(logp, logp_ref, mask))
  np.testing.assert_allclose(observed, 2.0)
  state = kl.adaptive_kl_update(kl.adaptive_kl_init(1.0), observed, 100, 1.0, 1000.0)
  np.testing.assert_allclose(state.beta, 1.0 * (1 + 0.2 * 0.1), rtol=1e-6)


def test_fixed_controller_same_signature():
  state = kl.fixed_kl_init(0.05)
  for update in (kl.fixed_kl_update, kl.adaptive_kl_update):
    new = jax.jit(update)(state, jnp.float32(3.0), 64, jnp.float32(6.0), jnp.float32(1e4))
    assert isinstance(new, kl.KLControllerState)
  new = kl.fixed_kl_update(state, 100.0, 64, 6.0, 1e4)
  assert new.beta is state.beta
  batched = jax.vmap(kl.adaptive_kl_update, in_axes=(0, 0, None, None, None))(
    kl.KLControllerState(beta=jnp.array([0.1, 0.2])), jnp.array([12.0, 0.0]), 100, 6.0, 100.0
  )
  np.testing.assert_allclose(batched.beta, [0.1 * 1.2, 0.2 * 0.8], rtol=1e-6)
