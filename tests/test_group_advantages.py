"""Tests for the critic-free group advantages: rlhf_jax.advantages.grpo_advantages (GRPO and
Dr.GRPO) and rlhf_jax.advantages.rloo_advantages, against float64 loops."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import advantages as adv_lib

VARIANTS = [pytest.param(lambda f: f, id="eager"), pytest.param(jax.jit, id="jit")]


def _grpo_oracle(scores, G, scale_by_std=True, eps=1e-4):
  """float64 loop: (r_i - mean) / (unbiased std + eps) per group; 0 for an all-equal group."""
  scores = [float(s) for s in scores]
  out = np.zeros(len(scores))
  for start in range(0, len(scores), G):
    group = scores[start : start + G]
    mean = sum(group) / G
    std = (sum((r - mean) ** 2 for r in group) / (G - 1)) ** 0.5
    for i, r in enumerate(group):
      if all(x == group[0] for x in group):
        out[start + i] = 0.0
      else:
        out[start + i] = (r - mean) / (std + eps) if scale_by_std else r - mean
  return out


def _rloo_oracle(scores, G):
  """float64 loop: r_i minus the mean of the other G - 1 scores of its group."""
  scores = [float(s) for s in scores]
  out = np.zeros(len(scores))
  for start in range(0, len(scores), G):
    group = scores[start : start + G]
    for i, r in enumerate(group):
      others = [x for j, x in enumerate(group) if j != i]
      out[start + i] = r - sum(others) / (G - 1)
  return out


def _scores(G, num_groups=5, seed=0):
  """Random scores with an all-equal group of inexact floats (0.1) and an all-zero group."""
  rng = np.random.default_rng(seed)
  scores = rng.normal(size=(num_groups, G)).astype(np.float32)
  scores[1] = 0.1
  scores[3] = 0.0
  scores[4, 0] = scores[4, -1] + 3.0  # not all equal, but with one repeated value for G > 2
  return scores.reshape(-1)


def test_group_advantages_hand():
  # G = 2, scores [1, 3]: mean 2, unbiased std sqrt((1 + 1) / 1) = sqrt 2;
  #   GRPO: ±1 / (sqrt 2 + 1e-4); Dr.GRPO: ±1; RLOO: 1 - 3 = -2, 3 - 1 = 2.
  # Group [5, 5]: all 0.
  scores = jnp.array([1.0, 3.0, 5.0, 5.0])
  want = 1 / (np.sqrt(2) + 1e-4)
  np.testing.assert_allclose(adv_lib.grpo_advantages(scores, 2), [-want, want, 0, 0], rtol=1e-6)
  np.testing.assert_allclose(adv_lib.grpo_advantages(scores, 2, scale_by_std=False), [-1, 1, 0, 0])
  np.testing.assert_allclose(adv_lib.rloo_advantages(scores, 2), [-2, 2, 0, 0])
  # G = 4, [0, 0, 0, 4]: mean 1, RLOO: 0 - 4/3 = -4/3 (x3), 4 - 0 = 4.
  np.testing.assert_allclose(
    adv_lib.rloo_advantages(jnp.array([0.0, 0.0, 0.0, 4.0]), 4),
    [-4 / 3, -4 / 3, -4 / 3, 4],
    rtol=1e-6,
  )


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("G", [2, 3, 4])
@pytest.mark.parametrize("scale_by_std", [True, False])
def test_grpo_advantages_match_float64_loop(variant, G, scale_by_std):
  scores = _scores(G, seed=G)
  fn = variant(functools.partial(adv_lib.grpo_advantages, group_size=G, scale_by_std=scale_by_std))
  got = fn(scores, eps=jnp.float32(1e-4))
  want = _grpo_oracle(scores, G, scale_by_std, 1e-4)
  assert got.shape == scores.shape and got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)
  # All-equal groups (including 0.1, whose float32 mean is not exactly 0.1): exactly 0.
  assert np.all(np.asarray(got)[G : 2 * G] == 0) and np.all(np.asarray(got)[3 * G : 4 * G] == 0)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("G", [2, 3, 4])
def test_rloo_advantages_match_float64_loop(variant, G):
  scores = _scores(G, seed=10 + G)
  got = variant(functools.partial(adv_lib.rloo_advantages, group_size=G))(scores)
  assert got.shape == scores.shape and got.dtype == jnp.float32
  np.testing.assert_allclose(got, _rloo_oracle(scores, G), rtol=2e-5, atol=1e-6)
  assert np.all(np.asarray(got)[G : 2 * G] == 0) and np.all(np.asarray(got)[3 * G : 4 * G] == 0)
  # RLOO is Dr.GRPO scaled by G / (G - 1).
  dr = adv_lib.grpo_advantages(scores, G, scale_by_std=False)
  np.testing.assert_allclose(got, G / (G - 1) * np.asarray(dr), rtol=1e-6, atol=1e-7)


def test_group_advantages_float64_bf16_and_large_offsets():
  with jax.enable_x64(True):
    scores = _scores(4, seed=20).astype(np.float64) * 1e3 + 1e6
    got = adv_lib.grpo_advantages(jnp.asarray(scores), 4)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(got, _grpo_oracle(scores, 4), rtol=1e-10, atol=1e-12)
    got = adv_lib.rloo_advantages(jnp.asarray(scores), 4)
    np.testing.assert_allclose(got, _rloo_oracle(scores, 4), rtol=1e-10, atol=1e-9)
  scores_bf = jnp.asarray(_scores(2, seed=21), jnp.bfloat16)
  got = adv_lib.grpo_advantages(scores_bf, 2)
  assert got.dtype == jnp.float32
  want = _grpo_oracle(np.asarray(scores_bf.astype(jnp.float32)), 2)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert adv_lib.rloo_advantages(scores_bf, 2).dtype == jnp.float32


def test_group_advantages_vmap_and_traced_eps():
  scores = np.stack([_scores(3, seed=s) for s in (30, 31)])  # [2, B]
  got = jax.vmap(functools.partial(adv_lib.grpo_advantages, group_size=3))(scores)
  for row, s in zip(np.asarray(got), scores):
    np.testing.assert_allclose(row, _grpo_oracle(s, 3), rtol=2e-5, atol=1e-6)
  got = jax.vmap(functools.partial(adv_lib.rloo_advantages, group_size=3))(scores)
  for row, s in zip(np.asarray(got), scores):
    np.testing.assert_allclose(row, _rloo_oracle(s, 3), rtol=2e-5, atol=1e-6)
  traces = []

  @jax.jit
  def f(scores, eps):
    traces.append(1)
    return adv_lib.grpo_advantages(scores, 3, eps=eps)

  for eps in (1e-4, 0.5):
    np.testing.assert_allclose(
      f(scores[0], jnp.float32(eps)), _grpo_oracle(scores[0], 3, eps=eps), rtol=2e-5, atol=1e-6
    )
  assert len(traces) == 1


@pytest.mark.parametrize(
  "fn",
  [
    adv_lib.grpo_advantages,
    functools.partial(adv_lib.grpo_advantages, scale_by_std=False),
    adv_lib.rloo_advantages,
  ],
)
def test_group_advantages_errors(fn):
  with pytest.raises(ValueError, match="not a whole number of groups of group_size=4"):
    fn(jnp.zeros(6), 4)
  with pytest.raises(ValueError, match="group_size must be >= 2, got 1"):
    fn(jnp.zeros(6), 1)
  with pytest.raises(ValueError, match="group_size must be >= 2, got 0"):
    fn(jnp.zeros(6), 0)
  with pytest.raises(ValueError, match="group_size must be a Python int"):
    fn(jnp.zeros(6), 2.0)
  with pytest.raises(AssertionError):
    fn(jnp.zeros((2, 4)), 2)  # scores are one per response: [B]
  np.testing.assert_array_equal(fn(jnp.zeros(6), np.int64(3)), np.zeros(6))
