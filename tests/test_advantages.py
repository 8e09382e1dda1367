"""Tests for rlhf_jax.advantages: reward shaping, GAE and reward normalisation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import advantages as adv_lib

VARIANTS = [pytest.param(lambda f: f, id="eager"), pytest.param(jax.jit, id="jit")]


def _gae_oracle(rewards, values, mask, gamma, lam):
  """float64 loop oracle: GAE over each row's mask-1 positions, V = A = 0 after the last."""
  B, T = np.shape(rewards)
  advs, rets = np.zeros((B, T)), np.zeros((B, T))
  for b in range(B):
    steps = [t for t in range(T) if mask[b][t]]
    last_gae = 0.0
    for k in reversed(range(len(steps))):
      t = steps[k]
      next_value = float(values[b][steps[k + 1]]) if k + 1 < len(steps) else 0.0
      delta = float(rewards[b][t]) + gamma * next_value - float(values[b][t])
      last_gae = delta + gamma * lam * last_gae
      advs[b, t] = last_gae
      rets[b, t] = last_gae + float(values[b][t])
  return advs, rets


def _shape_oracle(scores, logp, logp_ref, mask, beta, estimator, has_stop, mode, value):
  B, T = np.shape(logp)
  rewards, kls, used = np.zeros((B, T)), np.zeros((B, T)), np.zeros(B)
  for b in range(B):
    score = float(scores[b])
    if mode == "replace" and not has_stop[b]:
      score = value
    elif mode == "penalty" and not has_stop[b]:
      score = score - value
    used[b] = score
    last = None
    for t in range(T):
      if not mask[b][t]:
        continue
      log_ratio = float(logp_ref[b][t]) - float(logp[b][t])
      if estimator == "k1":
        k = -log_ratio
      else:
        log_ratio = min(max(log_ratio, -20.0), 20.0)
        k = min(max(np.exp(log_ratio) - 1 - log_ratio, -10.0), 10.0)
      kls[b, t] = k
      rewards[b, t] = -beta * k
      last = t
    if last is not None:
      rewards[b, last] += score
  return rewards, kls, used


@pytest.fixture
def rollout():
  rng = np.random.default_rng(0)
  B, T = 4, 7
  lengths = np.array([7, 4, 1, 0])
  mask = (np.arange(T)[None] < lengths[:, None]).astype(np.int32)
  logp = (rng.normal(size=(B, T)) - 2).astype(np.float32)
  logp_ref = (logp + rng.normal(size=(B, T)) * 0.5).astype(np.float32)
  scores = rng.normal(size=B).astype(np.float32)
  values = rng.normal(size=(B, T)).astype(np.float32)
  rewards = rng.normal(size=(B, T)).astype(np.float32)
  for x in (logp, logp_ref, values, rewards):
    x[mask == 0] = np.nan  # garbage under the mask
  return dict(
    mask=mask,
    logp=logp,
    logp_ref=logp_ref,
    scores=scores,
    values=values,
    rewards=rewards,
    has_stop=np.array([True, False, True, False]),
  )


@pytest.mark.parametrize("variant", VARIANTS)
def test_shape_rewards_hand(variant):
  # k1 = logp - logp_ref = [0.5, -0.5]; β = 0.1; score 2 at the last real token (t = 1):
  # rewards = [-0.05, 0.05 + 2, 0].
  out = variant(adv_lib.shape_rewards)(
    jnp.array([2.0]),
    jnp.array([[-1.0, -1.0, 9.0]]),
    jnp.array([[-1.5, -0.5, np.nan]]),
    jnp.array([[1, 1, 0]]),
    jnp.float32(0.1),
  )
  np.testing.assert_allclose(out.rewards, [[-0.05, 2.05, 0.0]], rtol=1e-6)
  np.testing.assert_allclose(out.kl, [[0.5, -0.5, 0.0]], rtol=1e-6)
  np.testing.assert_allclose(out.scores, [2.0])


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(
  "estimator,mode,value", [("k1", "none", None), ("k1", "replace", -1.0), ("k3", "penalty", 0.5)]
)
def test_shape_rewards_matches_oracle(rollout, variant, estimator, mode, value):
  r = rollout
  fn = variant(functools.partial(adv_lib.shape_rewards, estimator=estimator, missing_stop=mode))
  out = fn(
    r["scores"],
    r["logp"],
    r["logp_ref"],
    r["mask"],
    jnp.float32(0.15),
    has_stop_B=r["has_stop"],
    missing_stop_value=value,
  )
  want = _shape_oracle(
    r["scores"], r["logp"], r["logp_ref"], r["mask"], 0.15, estimator, r["has_stop"], mode, value
  )
  for got, expected in zip(out, want):
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  assert np.all(np.asarray(out.rewards)[3] == 0)  # all-zero mask: no score, no reward


def test_shape_rewards_padding_invariance_and_errors(rollout):
  r = rollout
  pad = lambda x, v: np.concatenate([x, np.full((4, 3), v, x.dtype)], axis=1)
  base = adv_lib.shape_rewards(r["scores"], r["logp"], r["logp_ref"], r["mask"], 0.2)
  padded = adv_lib.shape_rewards(
    r["scores"], pad(r["logp"], 1e30), pad(r["logp_ref"], -1e30), pad(r["mask"], 0), 0.2
  )
  np.testing.assert_array_equal(np.asarray(padded.rewards)[:, :7], base.rewards)
  np.testing.assert_array_equal(np.asarray(padded.rewards)[:, 7:], 0.0)
  with pytest.raises(ValueError, match="has_stop_B"):
    adv_lib.shape_rewards(
      r["scores"], r["logp"], r["logp_ref"], r["mask"], 0.2, missing_stop="replace"
    )
  with pytest.raises(ValueError, match="missing_stop"):
    adv_lib.shape_rewards(
      r["scores"], r["logp"], r["logp_ref"], r["mask"], 0.2, missing_stop="drop"
    )


def test_last_token_index():
  index, nonempty = adv_lib.last_token_index(jnp.array([[1, 1, 0], [1, 1, 1], [0, 0, 0]]))
  np.testing.assert_array_equal(index[:2], [1, 2])
  np.testing.assert_array_equal(nonempty, [True, True, False])


@pytest.mark.parametrize("variant", VARIANTS)
def test_gae_hand(variant):
  # γ = 1, λ = 0.95, r = [0, 1], V = [0.5, 0.4]:
  # δ_1 = 1 + 0 - 0.4 = 0.6, A_1 = 0.6;
  # δ_0 = 0 + 0.4 - 0.5 = -0.1, A_0 = -0.1 + 0.95·0.6 = 0.47.
  # Returns A + V = [0.97, 1.0]. The padded third step must not leak.
  advs, rets = variant(adv_lib.gae)(
    jnp.array([[0.0, 1.0, 5.0]]),
    jnp.array([[0.5, 0.4, 3.0]]),
    jnp.array([[1, 1, 0]]),
    jnp.float32(1.0),
    jnp.float32(0.95),
  )
  np.testing.assert_allclose(advs, [[0.47, 0.6, 0.0]], rtol=1e-6)
  np.testing.assert_allclose(rets, [[0.97, 1.0, 0.0]], rtol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8)])
def test_gae_matches_loop_oracle(rollout, variant, gamma, lam):
  r = rollout
  advs, rets = variant(adv_lib.gae)(r["rewards"], r["values"], r["mask"], gamma, lam)
  want_a, want_r = _gae_oracle(r["rewards"], r["values"], r["mask"], gamma, lam)
  np.testing.assert_allclose(advs, want_a, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(rets, want_r, rtol=1e-5, atol=1e-6)


def test_gae_padding_invariance_and_holes(rollout):
  r = rollout
  advs, rets = adv_lib.gae(r["rewards"], r["values"], r["mask"], 1.0, 0.95)
  # Each padded row equals the same row run alone without padding.
  for b, length in enumerate(r["mask"].sum(1)):
    if length == 0:
      continue
    a1, r1 = adv_lib.gae(
      r["rewards"][b : b + 1, :length],
      r["values"][b : b + 1, :length],
      np.ones((1, length)),
      1.0,
      0.95,
    )
    np.testing.assert_allclose(np.asarray(advs)[b, :length], a1[0], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(rets)[b, :length], r1[0], rtol=1e-6)
  # Masked holes are skipped: same as GAE on the compacted row.
  mask = np.array([[1, 0, 1, 1, 0, 1, 0]])
  rewards = np.array([[0.1, 9.0, -0.2, 0.3, 9.0, 1.0, 9.0]], np.float32)
  values = np.array([[0.2, 9.0, 0.1, -0.3, 9.0, 0.4, 9.0]], np.float32)
  advs, rets = adv_lib.gae(rewards, values, mask, 0.99, 0.9)
  want_a, want_r = _gae_oracle(rewards, values, mask, 0.99, 0.9)
  np.testing.assert_allclose(advs, want_a, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(rets, want_r, rtol=1e-5, atol=1e-7)


def test_gae_traced_hyperparameters_vmap_and_bf16(rollout):
  r = rollout
  traces = []

  @jax.jit
  def f(gamma, lam):
    traces.append(1)
    return adv_lib.gae(r["rewards"], r["values"], r["mask"], gamma, lam)

  for gamma, lam in [(1.0, 0.95), (0.9, 0.8)]:
    advs, _ = f(jnp.float32(gamma), jnp.float32(lam))
    want, _ = _gae_oracle(r["rewards"], r["values"], r["mask"], gamma, lam)
    np.testing.assert_allclose(advs, want, rtol=1e-5, atol=1e-6)
  assert len(traces) == 1
  stacked = [np.stack([r[k], r[k][::-1]]) for k in ("rewards", "values", "mask")]
  advs_v, _ = jax.vmap(adv_lib.gae, in_axes=(0, 0, 0, None, None))(*stacked, 1.0, 0.95)
  want, _ = _gae_oracle(stacked[0][1], stacked[1][1], stacked[2][1], 1.0, 0.95)
  np.testing.assert_allclose(advs_v[1], want, rtol=1e-5, atol=1e-6)
  advs_bf, rets_bf = adv_lib.gae(
    jnp.asarray(r["rewards"], jnp.bfloat16),
    jnp.asarray(r["values"], jnp.bfloat16),
    r["mask"],
    1.0,
    0.95,
  )
  assert advs_bf.dtype == jnp.float32 and rets_bf.dtype == jnp.float32


def test_reward_normalization():
  # scores [1, 3]: μ = 2, σ = 1 -> g = 1, b = -2; to (mean 1, std 2): g = 2, b = 1 - 4 = -3.
  gain, bias = adv_lib.fit_reward_normalization(jnp.array([1.0, 3.0]))
  np.testing.assert_allclose([gain, bias], [1.0, -2.0], rtol=1e-6)
  gain, bias = adv_lib.fit_reward_normalization(jnp.array([1.0, 3.0]), 1.0, 2.0)
  np.testing.assert_allclose([gain, bias], [2.0, -3.0], rtol=1e-6)
  np.testing.assert_allclose(
    adv_lib.apply_reward_normalization(jnp.array([1.0, 3.0]), gain, bias), [-1.0, 3.0], rtol=1e-6
  )
  rng = np.random.default_rng(1)
  scores = (rng.normal(size=512) * 3 + 5).astype(np.float32)
  gain, bias = jax.jit(adv_lib.fit_reward_normalization)(scores, jnp.float32(0.0), jnp.float32(1.0))
  normed = np.asarray(adv_lib.apply_reward_normalization(scores, gain, bias), np.float64)
  np.testing.assert_allclose([normed.mean(), normed.std()], [0.0, 1.0], atol=1e-5)
  s64 = scores.astype(np.float64)
  np.testing.assert_allclose(gain, 1 / s64.std(), rtol=1e-5)
  np.testing.assert_allclose(bias, -s64.mean() / s64.std(), rtol=1e-5)
