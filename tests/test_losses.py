"""Tests for rlhf_jax.losses: preference losses (with ties), PPO losses and entropy."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import losses
from rlhf_jax.losses import LABEL_A, LABEL_B, LABEL_TIE

VARIANTS = [pytest.param(lambda f: f, id="eager"), pytest.param(jax.jit, id="jit")]
TIE_CASES = [("rao_kupper", 2.0), ("davidson", 0.7)]


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _rk_oracle(r_a, r_b, theta):
  """Rao-Kupper straight from the definition, float64."""
  d = np.asarray(r_a, np.float64) - np.asarray(r_b, np.float64)
  c = np.log(theta)
  p_a, p_b = _sigmoid(d - c), _sigmoid(-d - c)
  return p_a, p_b, 1.0 - p_a - p_b


def _davidson_oracle(r_a, r_b, nu):
  """Davidson straight from the definition, float64."""
  r_a, r_b = np.asarray(r_a, np.float64), np.asarray(r_b, np.float64)
  e_a, e_b, e_t = np.exp(r_a), np.exp(r_b), nu * np.exp((r_a + r_b) / 2)
  z = e_a + e_b + e_t
  return e_a / z, e_b / z, e_t / z


@pytest.mark.parametrize("variant", VARIANTS)
def test_bradley_terry_hand(variant):
  # -log σ(1) = log(1 + e^-1) = 0.31326169;  -log σ(0) = log 2;  -log σ(0.5) = 0.47407698.
  loss = variant(losses.bradley_terry_loss)(jnp.array([1.0, 0.0]), jnp.array([0.0, 0.0]), 0.0)
  np.testing.assert_allclose(loss, [0.31326169, np.log(2)], rtol=1e-6)
  loss = variant(losses.bradley_terry_loss)(jnp.array([1.0]), jnp.array([0.5]), 0.0)
  np.testing.assert_allclose(loss, [0.47407698], rtol=1e-6)
  loss = variant(losses.bradley_terry_loss)(jnp.array([1.0]), jnp.array([0.0]), jnp.float32(0.5))
  np.testing.assert_allclose(loss, [0.47407698], rtol=1e-6)


def test_bradley_terry_stable_and_bf16():
  loss = losses.bradley_terry_loss(jnp.array([-100.0, 100.0]), jnp.array([0.0, 0.0]))
  np.testing.assert_allclose(loss, [100.0, 0.0], atol=1e-6)
  g = jax.grad(lambda r: jnp.sum(losses.bradley_terry_loss(r, jnp.zeros(2))))(
    jnp.array([-100.0, 100.0])
  )
  np.testing.assert_allclose(g, [-1.0, 0.0], atol=1e-6)
  out = losses.bradley_terry_loss(jnp.array([1.0], jnp.bfloat16), jnp.array([0.0], jnp.bfloat16))
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, [0.31326169], rtol=1e-6)


def test_traced_margin_does_not_recompile():
  traces = []

  @jax.jit
  def f(margin):
    traces.append(1)
    return losses.bradley_terry_loss(jnp.array([1.0]), jnp.array([0.0]), margin)

  a, b = f(jnp.float32(0.0)), f(jnp.float32(0.5))
  assert len(traces) == 1
  np.testing.assert_allclose([a[0], b[0]], [0.31326169, 0.47407698], rtol=1e-6)


def test_reward_centering_hand():
  # 0.01 * (1 + 2)^2 = 0.09;  0.01 * (-1 + 1)^2 = 0.
  out = losses.reward_centering_loss(jnp.array([1.0, -1.0]), jnp.array([2.0, 1.0]), 0.01)
  np.testing.assert_allclose(out, [0.09, 0.0], rtol=1e-6)


def test_preference_probs_hand():
  # Rao-Kupper θ = 2, Δ = 0: P(a) = σ(-log 2) = 1/3 = P(b), P(tie) = 1/3.
  # Davidson ν = 1, Δ = 0: e^r / (3 e^r) = 1/3 each.
  for model, param in [("rao_kupper", 2.0), ("davidson", 1.0)]:
    probs = losses.preference_probs(jnp.array([0.3]), jnp.array([0.3]), model, param)
    np.testing.assert_allclose(np.concatenate(probs), [1 / 3] * 3, rtol=1e-6)
  # Rao-Kupper θ = 2, Δ = log 2: P(a) = σ(0) = 1/2, P(b) = σ(-2 log 2) = 1/5, P(tie) = 3/10.
  probs = losses.preference_probs(jnp.array([np.log(2.0)]), jnp.array([0.0]), "rao_kupper", 2.0)
  np.testing.assert_allclose(np.concatenate(probs), [0.5, 0.2, 0.3], rtol=1e-6)
  loss = losses.preference_loss(
    jnp.array([0.3], jnp.bfloat16),
    jnp.array([0.3], jnp.bfloat16),
    jnp.array([LABEL_TIE]),
    "davidson",
    1.0,
  )
  assert loss.dtype == jnp.float32
  np.testing.assert_allclose(loss, [np.log(3)], rtol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("model,param", TIE_CASES)
def test_preference_probs_match_float64_definition(variant, model, param):
  rng = np.random.default_rng(0)
  r_a, r_b = (
    (rng.normal(size=64) * 4).astype(np.float32),
    (rng.normal(size=64) * 4).astype(np.float32),
  )
  oracle = _rk_oracle if model == "rao_kupper" else _davidson_oracle
  fn = variant(functools.partial(losses.preference_probs, tie_model=model))
  out = fn(r_a, r_b, tie_param=jnp.float32(param))
  for got, want in zip(out, oracle(r_a, r_b, param)):
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("model,param", TIE_CASES + [("bradley_terry", None), ("none", None)])
def test_probabilities_sum_to_one(model, param):
  rng = np.random.default_rng(1)
  r_a = rng.normal(size=2000) * 30
  r_b = rng.normal(size=2000) * 30
  r_a[:4] = [100.0, -100.0, 0.0, 50.0]
  r_b[:4] = [0.0, 0.0, 0.0, -50.0]
  probs = losses.preference_probs(r_a.astype(np.float32), r_b.astype(np.float32), model, param)
  total = sum(np.asarray(p, np.float64) for p in probs)
  np.testing.assert_allclose(total, 1.0, atol=1e-6)
  assert all(np.all((np.asarray(p) >= 0) & (np.asarray(p) <= 1)) for p in probs)


def test_rao_kupper_tie_large_gap_float64_closed_form():
  # For |Δ| up to 100 the naive 1 - P(a) - P(b) is useless in float32; compare log P(tie) with
  # the float64 product form e^{-a}(θ - 1/θ) / ((1 + θ e^{-a})(1 + e^{-a}/θ)).
  theta = 3.0
  delta = np.array([-100.0, -60.0, -20.0, -1.0, 0.0, 1e-3, 5.0, 30.0, 100.0])
  a = np.abs(delta)
  want = np.log(
    np.exp(-a) * (theta - 1 / theta) / ((1 + theta * np.exp(-a)) * (1 + np.exp(-a) / theta))
  )
  _, _, got = losses.preference_log_probs(
    delta.astype(np.float32), np.zeros(9, np.float32), "rao_kupper", theta
  )
  np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("model,param", [("rao_kupper", 1.0), ("davidson", 0.0)])
def test_reduces_to_bradley_terry(model, param):
  rng = np.random.default_rng(2)
  r_a = (rng.normal(size=100) * 10).astype(np.float32)
  r_b = (rng.normal(size=100) * 10).astype(np.float32)
  labels = rng.integers(0, 2, size=100)
  got = losses.preference_loss(r_a, r_b, labels, model, param)
  r_w = np.where(labels == LABEL_A, r_a, r_b)
  r_l = np.where(labels == LABEL_A, r_b, r_a)
  np.testing.assert_allclose(got, losses.bradley_terry_loss(r_w, r_l), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(
    got, losses.preference_loss(r_a, r_b, labels, "bradley_terry"), rtol=1e-6, atol=1e-6
  )
  _, _, logp_tie = losses.preference_log_probs(r_a, r_b, model, param)
  assert np.all(np.asarray(logp_tie) == -np.inf)
  g = jax.grad(lambda p: jnp.sum(losses.preference_loss(r_a, r_b, labels, model, p)))(
    jnp.float32(param)
  )
  assert np.isfinite(g)


def test_tie_label_without_tie_model_and_invalid_label():
  # Δ = 0: -½(log σ(0) + log σ(0)) = log 2;
  # Δ = 2: ½(softplus(-2) + softplus(2)) = 1.12692801.
  out = losses.preference_loss(
    jnp.array([0.0, 2.0]), jnp.array([0.0, 0.0]), jnp.array([LABEL_TIE, LABEL_TIE]), "none"
  )
  np.testing.assert_allclose(out, [np.log(2), 1.12692801], rtol=1e-6)
  out = losses.preference_loss(
    jnp.array([0.0, 1.0]), jnp.array([0.0, 0.0]), jnp.array([3, 0]), "rao_kupper", 2.0
  )
  assert np.isnan(out[0]) and np.isfinite(out[1])
  with pytest.raises(ValueError, match="tie_param"):
    losses.preference_loss(jnp.zeros(1), jnp.zeros(1), jnp.zeros(1, jnp.int32), "davidson")
  with pytest.raises(ValueError, match="tie_model"):
    losses.preference_probs(jnp.zeros(1), jnp.zeros(1), "thurstone", 1.0)


@pytest.mark.parametrize("model,param", TIE_CASES)
def test_preference_loss_matches_definition_and_finite_differences(model, param):
  with jax.enable_x64(True):
    rng = np.random.default_rng(3)
    r_a = np.concatenate([[0.0, 0.4], rng.normal(size=10) * 3])
    r_b = np.concatenate([[0.0, 0.4], rng.normal(size=10) * 3])
    labels = np.array([LABEL_TIE, LABEL_A] + [LABEL_A, LABEL_B, LABEL_TIE] * 3 + [0])
    oracle = _rk_oracle if model == "rao_kupper" else _davidson_oracle
    probs = np.stack(oracle(r_a, r_b, param))
    want = -np.log(probs[labels, np.arange(12)])
    loss_fn = functools.partial(losses.preference_loss, label=jnp.asarray(labels), tie_model=model)
    got = loss_fn(jnp.asarray(r_a), jnp.asarray(r_b), tie_param=jnp.float64(param))
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(got, want, rtol=1e-10)

    def total(r_a, r_b, p):
      return jnp.sum(loss_fn(r_a, r_b, tie_param=p))

    grads = jax.grad(total, argnums=(0, 1, 2))(
      jnp.asarray(r_a), jnp.asarray(r_b), jnp.float64(param)
    )
    h = 1e-6
    args = [np.array(r_a), np.array(r_b), np.array(param)]
    for which, g in enumerate(grads):
      flat = args[which].reshape(-1)
      fd = np.zeros_like(flat)
      for i in range(flat.size):
        plus, minus = [a.copy() for a in args], [a.copy() for a in args]
        plus[which].reshape(-1)[i] += h
        minus[which].reshape(-1)[i] -= h
        fd[i] = (float(total(*map(jnp.asarray, plus))) - float(total(*map(jnp.asarray, minus)))) / (
          2 * h
        )
      np.testing.assert_allclose(np.reshape(g, -1), fd, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("model", ["rao_kupper", "davidson"])
def test_learnable_tie_parameter_and_extreme_gaps(model):
  to_param = losses.rao_kupper_theta if model == "rao_kupper" else losses.davidson_nu
  r_a = jnp.array([100.0, -100.0, 0.0, 100.0, -100.0, 50.0], jnp.float32)
  r_b = jnp.zeros(6, jnp.float32)
  labels = jnp.array([LABEL_A, LABEL_A, LABEL_TIE, LABEL_TIE, LABEL_B, LABEL_B])

  def total(raw, r_a):
    return jnp.sum(losses.preference_loss(r_a, r_b, labels, model, to_param(raw)))

  value, (g_raw, g_r) = jax.value_and_grad(total, argnums=(0, 1))(jnp.float32(0.3), r_a)
  assert np.isfinite(value) and np.isfinite(g_raw) and np.all(np.isfinite(g_r))
  per_pair = losses.preference_loss(r_a, r_b, labels, model, to_param(jnp.float32(0.3)))
  # a wins by 100 while labelled "a": ~0 loss; labelled "a" while losing by 100: ~100 (+c).
  assert float(per_pair[0]) < 1e-6 and 99.0 < float(per_pair[1]) < 102.0


def _ppo_policy_oracle(logp, logp_old, adv, mask, eps):
  num = den = clipped = 0.0
  for lp, lo, a, m in zip(*(np.ravel(x) for x in (logp, logp_old, adv, mask))):
    if not m:
      continue
    ratio = np.exp(float(lp) - float(lo))
    l1, l2 = -a * ratio, -a * min(max(ratio, 1 - eps), 1 + eps)
    num += max(l1, l2)
    clipped += l2 > l1
    den += 1
  return num / den, clipped / den


@pytest.mark.parametrize("variant", VARIANTS)
def test_ppo_policy_loss_hand(variant):
  # ρ = [1.5, 0.5, 1.1, 0.7], A = [1, 1, -1, -1], ε = 0.2:
  #   max(-1.5, -1.2) = -1.2 (clipped), max(-0.5, -0.8) = -0.5, max(1.1, 1.1) = 1.1,
  #   max(0.7, 0.8) = 0.8 (clipped)  ->  loss = 0.2 / 4 = 0.05, clip_frac = 2/4.
  # The fifth token is padding with garbage.
  ratio = np.array([1.5, 0.5, 1.1, 0.7])
  logp = jnp.array([*np.log(ratio), np.nan], jnp.float32)
  logp_old = jnp.array([0.0, 0.0, 0.0, 0.0, 50.0])
  adv = jnp.array([1.0, 1.0, -1.0, -1.0, np.inf])
  mask = jnp.array([1, 1, 1, 1, 0])
  loss, info = variant(losses.ppo_policy_loss)(logp, logp_old, adv, mask, jnp.float32(0.2))
  np.testing.assert_allclose(loss, 0.05, atol=1e-6)
  np.testing.assert_allclose(info.clip_frac, 0.5)
  np.testing.assert_allclose(info.approx_kl, 0.5 * np.mean(np.log(ratio) ** 2), rtol=1e-6)
  np.testing.assert_allclose(info.ratio_mean, ratio.mean(), rtol=1e-6)
  # d loss / d logp_t = -A_t ρ_t / 4 on unclipped tokens, 0 on clipped ones and padding.
  g = jax.grad(lambda lp: losses.ppo_policy_loss(lp, logp_old, adv, mask, 0.2)[0])(logp)
  np.testing.assert_allclose(g, [0.0, -0.125, 0.275, 0.0, 0.0], atol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_ppo_policy_loss_oracle_and_padding(variant):
  rng = np.random.default_rng(4)
  logp = (rng.normal(size=(3, 7)) * 0.3 - 2).astype(np.float32)
  logp_old = (logp + rng.normal(size=(3, 7)) * 0.3).astype(np.float32)
  adv = rng.normal(size=(3, 7)).astype(np.float32)
  mask = (np.arange(7)[None] < np.array([[7], [4], [2]])).astype(np.int32)
  fn = variant(losses.ppo_policy_loss)
  loss, info = fn(logp, logp_old, adv, mask, 0.2)
  want_loss, want_clip = _ppo_policy_oracle(logp, logp_old, adv, mask, 0.2)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  np.testing.assert_allclose(info.clip_frac, want_clip, rtol=1e-6)
  pad = lambda x, v: np.concatenate([x, np.full((3, 2), v, x.dtype)], axis=1)
  loss_p, info_p = fn(pad(logp, 1e4), pad(logp_old, -1e4), pad(adv, np.nan), pad(mask, 0), 0.2)
  np.testing.assert_allclose(loss_p, loss, rtol=1e-6)
  np.testing.assert_allclose(info_p.approx_kl, info.approx_kl, rtol=1e-6)
  # bf16 inputs: float32 result equal to the float32 computation on the rounded values.
  bf = [jnp.asarray(x, jnp.bfloat16) for x in (logp, logp_old, adv)]
  loss_bf, _ = fn(*bf, mask, 0.2)
  assert loss_bf.dtype == jnp.float32
  want_bf, _ = _ppo_policy_oracle(*(np.asarray(x.astype(jnp.float32)) for x in bf), mask, 0.2)
  np.testing.assert_allclose(loss_bf, want_bf, rtol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_ppo_value_loss_hand(variant):
  # V = [1, 0], V_old = [0, 0], R = [2, -1], ε = 0.2:
  #   token 1: (1-2)^2 = 1, V_clip = 0.2 -> (0.2-2)^2 = 3.24 (clipped larger);
  #   token 2: both errors 1.  loss = ½ (3.24 + 1) / 2 = 1.06, clip_frac = 1/2.
  values = jnp.array([1.0, 0.0, np.nan])
  values_old = jnp.array([0.0, 0.0, np.inf])
  returns = jnp.array([2.0, -1.0, 7.0])
  mask = jnp.array([1.0, 1.0, 0.0])
  loss, info = variant(losses.ppo_value_loss)(values, values_old, returns, mask, jnp.float32(0.2))
  np.testing.assert_allclose(loss, 1.06, rtol=1e-6)
  np.testing.assert_allclose(info.clip_frac, 0.5)
  np.testing.assert_allclose(info.mse, 1.0)
  np.testing.assert_allclose(info.value_mean, 0.5)
  # Unclipped: ½ (1 + 1) / 2 = 0.5; ε = inf is the same.
  unclipped = functools.partial(losses.ppo_value_loss, values, values_old, returns, mask)
  np.testing.assert_allclose(unclipped(None)[0], 0.5, rtol=1e-6)
  np.testing.assert_allclose(unclipped(jnp.inf)[0], 0.5, rtol=1e-6)
  assert float(unclipped(None)[1].clip_frac) == 0.0
  # d/dV: token 1 is clipped (gradient 0), token 2: (V - R) / 2 = 0.5; padding 0.
  g = jax.grad(lambda v: losses.ppo_value_loss(v, values_old, returns, mask, 0.2)[0])(values)
  np.testing.assert_allclose(g, [0.0, 0.5, 0.0], atol=1e-7)


def test_ppo_value_loss_oracle():
  rng = np.random.default_rng(5)
  values, values_old, returns = (rng.normal(size=(4, 5)).astype(np.float32) for _ in range(3))
  mask = (np.arange(5)[None] < np.array([[5], [3], [1], [4]])).astype(np.float32)
  eps = 0.3
  num = clipped = 0.0
  for v, vo, r, m in zip(
    *(np.ravel(x).astype(np.float64) for x in (values, values_old, returns, mask))
  ):
    if m:
      vc = vo + min(max(v - vo, -eps), eps)
      num += max((v - r) ** 2, (vc - r) ** 2)
      clipped += (vc - r) ** 2 > (v - r) ** 2
  loss, info = losses.ppo_value_loss(values, values_old, returns, mask, eps)
  np.testing.assert_allclose(loss, 0.5 * num / mask.sum(), rtol=1e-5)
  np.testing.assert_allclose(info.clip_frac, clipped / mask.sum(), rtol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_entropy_from_logits(variant):
  rng = np.random.default_rng(6)
  logits = (rng.normal(size=(2, 4, 5)) * 2).astype(np.float32)
  logits[0, 0] = 0.0  # uniform: entropy log 5
  logits[1, 3] = np.nan  # padding
  mask = np.array([[1, 1, 1, 1], [1, 1, 1, 0]])
  z = logits.astype(np.float64)
  ents = []
  for b, t in zip(*np.nonzero(mask)):
    p = np.exp(z[b, t] - z[b, t].max())
    p /= p.sum()
    ents.append(-np.sum(p * np.log(p)))
  assert abs(ents[0] - np.log(5)) < 1e-12
  out = variant(losses.entropy_from_logits)(logits, mask)
  np.testing.assert_allclose(out, np.mean(ents), rtol=1e-5)
  g = jax.grad(lambda z: losses.entropy_from_logits(z, mask))(jnp.asarray(logits))
  assert np.all(np.isfinite(g)) and np.all(np.asarray(g)[1, 3] == 0)
  out_bf = losses.entropy_from_logits(jnp.asarray(logits, jnp.bfloat16), mask)
  assert out_bf.dtype == jnp.float32
  np.testing.assert_allclose(out_bf, np.mean(ents), rtol=1e-2)


@pytest.mark.parametrize("tie_model, true_param", [("rao_kupper", 3.0), ("davidson", 0.8)])
def test_fit_tie_parameter_recovers_the_generating_value(tie_model, true_param):
  """Labels drawn from the tie model at known rewards with about 30% ties: the fit lands
  within 10% of the parameter that generated them."""
  rng = np.random.default_rng(0)
  n = 20000
  r_a, r_b = rng.normal(0, 1.5, n), rng.normal(0, 1.5, n)
  probs = np.stack(
    [np.asarray(x, np.float64) for x in losses.preference_probs(r_a, r_b, tie_model, true_param)], 1
  )
  probs /= probs.sum(1, keepdims=True)
  label = (rng.random(n)[:, None] > np.cumsum(probs, 1)).sum(1).astype(np.int32)
  assert 0.2 < np.mean(label == LABEL_TIE) < 0.4
  fitted = float(
    jax.jit(functools.partial(losses.fit_tie_parameter, tie_model=tie_model))(r_a, r_b, label)
  )
  assert abs(fitted - true_param) < 0.1 * true_param
  # No ties at all: Rao-Kupper's θ goes to its lower bound 1.
  no_ties = np.where(r_a > r_b, LABEL_A, LABEL_B)
  assert float(losses.fit_tie_parameter(r_a, r_b, no_ties, "rao_kupper")) < 1.01
  with pytest.raises(ValueError, match="rao_kupper"):
    losses.fit_tie_parameter(r_a, r_b, label, "bradley_terry")


def _ppo_reduction_oracle(logp, logp_old, adv, mask, eps, eps_high, reduction):
  """float64 loop: per-token clipped loss with [1 - ε, 1 + ε_high], then the reduction."""
  B, T = np.shape(logp)
  adv = np.asarray(adv, np.float64)
  if adv.ndim == 1:
    adv = np.repeat(adv[:, None], T, axis=1)
  total = tokens = clipped = 0.0
  seq_means = []
  for b in range(B):
    seq_total = seq_tokens = 0.0
    for t in range(T):
      if not mask[b][t]:
        continue
      ratio = np.exp(float(logp[b][t]) - float(logp_old[b][t]))
      a = float(adv[b][t])
      l1, l2 = -a * ratio, -a * min(max(ratio, 1 - eps), 1 + eps_high)
      seq_total += max(l1, l2)
      seq_tokens += 1
      clipped += l2 > l1
    total += seq_total
    tokens += seq_tokens
    if seq_tokens:
      seq_means.append(seq_total / seq_tokens)
  loss = {
    "token": total / tokens,
    "sequence": sum(seq_means) / len(seq_means),
    "constant": total / (B * T),
  }[reduction]
  return loss, clipped / tokens


@pytest.fixture
def ragged_policy_batch():
  rng = np.random.default_rng(7)
  B, T = 5, 6
  lengths = np.array([6, 3, 1, 0, 4])  # row 3 is an all-padding row
  mask = (np.arange(T)[None] < lengths[:, None]).astype(np.int32)
  logp = (rng.normal(size=(B, T)) * 0.3 - 2).astype(np.float32)
  logp_old = (logp + rng.normal(size=(B, T)) * 0.3).astype(np.float32)
  adv_BT = rng.normal(size=(B, T)).astype(np.float32)
  adv_B = rng.normal(size=B).astype(np.float32)
  for x in (logp, logp_old, adv_BT):
    x[mask == 0] = np.nan
  return {"logp": logp, "logp_old": logp_old, "adv_BT": adv_BT, "adv_B": adv_B, "mask": mask}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("reduction", ["token", "sequence", "constant"])
@pytest.mark.parametrize("adv_key", ["adv_BT", "adv_B"])
@pytest.mark.parametrize("eps_high", [None, 0.28])
def test_ppo_policy_loss_reductions_match_float64_loop(
  ragged_policy_batch, variant, reduction, adv_key, eps_high
):
  r = ragged_policy_batch
  fn = variant(functools.partial(losses.ppo_policy_loss, reduction=reduction))
  high = None if eps_high is None else jnp.float32(eps_high)
  loss, info = fn(r["logp"], r["logp_old"], r[adv_key], r["mask"], jnp.float32(0.2), high)
  want, want_clip = _ppo_reduction_oracle(
    r["logp"],
    r["logp_old"],
    r[adv_key],
    r["mask"],
    0.2,
    0.2 if eps_high is None else eps_high,
    reduction,
  )
  assert loss.dtype == jnp.float32
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  # The info is a token-mean for every reduction.
  np.testing.assert_allclose(info.clip_frac, want_clip, rtol=1e-6)
  _, token_info = losses.ppo_policy_loss(
    r["logp"], r["logp_old"], r[adv_key], r["mask"], 0.2, eps_high
  )
  for got, expected in zip(info, token_info):
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_ppo_policy_loss_backward_compatible_defaults(ragged_policy_batch):
  r = ragged_policy_batch
  args = (r["logp"], r["logp_old"], r["adv_BT"], r["mask"], 0.2)
  old = losses.ppo_policy_loss(*args)
  for new in (
    losses.ppo_policy_loss(*args, None, "token"),
    losses.ppo_policy_loss(*args, clip_eps_high=0.2, reduction="token"),
  ):
    for got, expected in zip(jax.tree.leaves(new), jax.tree.leaves(old)):
      np.testing.assert_array_equal(got, expected)
  # [B] advantages are the [B, T] ones repeated over tokens.
  adv_rep = np.repeat(r["adv_B"][:, None], 6, axis=1)
  for reduction in ("token", "sequence", "constant"):
    a = losses.ppo_policy_loss(
      r["logp"], r["logp_old"], r["adv_B"], r["mask"], 0.2, reduction=reduction
    )
    b = losses.ppo_policy_loss(
      r["logp"], r["logp_old"], adv_rep, r["mask"], 0.2, reduction=reduction
    )
    np.testing.assert_allclose(a[0], b[0], rtol=1e-6)


def test_ppo_policy_loss_padding_per_reduction(ragged_policy_batch):
  r = ragged_policy_batch
  pad_t = lambda x, v: np.concatenate([x, np.full((5, 3), v, x.dtype)], axis=1)
  pad_b = lambda x, v: np.concatenate([x, np.full((2,) + x.shape[1:], v, x.dtype)], axis=0)
  for reduction in ("token", "sequence", "constant"):
    fn = functools.partial(
      losses.ppo_policy_loss, clip_eps=0.2, clip_eps_high=0.3, reduction=reduction
    )
    base, _ = fn(r["logp"], r["logp_old"], r["adv_BT"], r["mask"])
    more_t, _ = fn(
      pad_t(r["logp"], 1e4),
      pad_t(r["logp_old"], -1e4),
      pad_t(r["adv_BT"], np.nan),
      pad_t(r["mask"], 0),
    )
    more_b, _ = fn(
      pad_b(r["logp"], 1e4),
      pad_b(r["logp_old"], -1e4),
      pad_b(r["adv_BT"], np.nan),
      pad_b(r["mask"], 0),
    )
    if reduction == "constant":  # Σ m ℓ / (B·T): padding changes the constant, by design
      np.testing.assert_allclose(more_t, base * 6 / 9, rtol=1e-6)
      np.testing.assert_allclose(more_b, base * 5 / 7, rtol=1e-6)
    else:  # padded tokens and all-padding rows change nothing
      np.testing.assert_allclose(more_t, base, rtol=1e-6)
      np.testing.assert_allclose(more_b, base, rtol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_ppo_policy_loss_clip_higher_hand(variant):
  # ρ = [1.25, 1.25, 0.75], A = [1, -1, -1], ε = 0.2, ε_high = 0.28.
  #   Symmetric [0.8, 1.2]: token 0 max(-1.25, -1.2) = -1.2 clipped; token 1 max(1.25, 1.2) =
  #   1.25; token 2 max(0.75, 0.8) = 0.8 clipped. Loss 0.85 / 3, clip_frac 2/3.
  #   DAPO [0.8, 1.28]: token 0 is no longer clipped: (-1.25 + 1.25 + 0.8) / 3; clip_frac 1/3.
  # Each row is one real token and one pad token.
  ratio = np.array([[1.25, 1.0], [1.25, 1.0], [0.75, 1.0]])
  logp = jnp.asarray(np.log(ratio), jnp.float32)
  zeros = jnp.zeros((3, 2))
  adv = jnp.array([1.0, -1.0, -1.0])
  mask = jnp.array([[1, 0], [1, 0], [1, 0]])
  fn = variant(losses.ppo_policy_loss)
  loss, info = fn(logp, zeros, adv, mask, 0.2)
  np.testing.assert_allclose([loss, info.clip_frac], [0.85 / 3, 2 / 3], rtol=1e-6)
  loss, info = fn(logp, zeros, adv, mask, 0.2, jnp.float32(0.28))
  np.testing.assert_allclose([loss, info.clip_frac], [0.8 / 3, 1 / 3], rtol=1e-6)
  loss, _ = variant(functools.partial(losses.ppo_policy_loss, reduction="constant"))(
    logp, zeros, adv, mask, 0.2, 0.28
  )
  np.testing.assert_allclose(loss, 0.8 / 6, rtol=1e-6)
  # d/dlogp_0 = -A ρ / 3 = -1.25 / 3 under clip-higher; 0 under the symmetric clip.
  g_sym = jax.grad(lambda lp: losses.ppo_policy_loss(lp, zeros, adv, mask, 0.2)[0])(logp)
  g_high = jax.grad(lambda lp: losses.ppo_policy_loss(lp, zeros, adv, mask, 0.2, 0.28)[0])(logp)
  np.testing.assert_allclose(g_sym[:, 0], [0.0, 1.25 / 3, 0.0], atol=1e-6)
  np.testing.assert_allclose(g_high[:, 0], [-1.25 / 3, 1.25 / 3, 0.0], atol=1e-6)
  assert np.all(np.asarray(g_high)[:, 1] == 0)


def test_ppo_policy_loss_vmap_traced_clip_and_errors(ragged_policy_batch):
  r = ragged_policy_batch
  stacked = [np.stack([r[k], r[k][::-1]]) for k in ("logp", "logp_old", "adv_B", "mask")]
  fn = functools.partial(losses.ppo_policy_loss, reduction="sequence")
  loss_v, _ = jax.vmap(fn, in_axes=(0, 0, 0, 0, None, None))(*stacked, 0.2, 0.3)
  for i in range(2):
    want, _ = _ppo_reduction_oracle(*(s[i] for s in stacked), 0.2, 0.3, "sequence")
    np.testing.assert_allclose(loss_v[i], want, rtol=1e-5)
  traces = []

  @jax.jit
  def f(eps_high):
    traces.append(1)
    return losses.ppo_policy_loss(
      r["logp"], r["logp_old"], r["adv_B"], r["mask"], 0.2, eps_high, "constant"
    )[0]

  for eps_high in (0.2, 0.28):
    want, _ = _ppo_reduction_oracle(
      r["logp"], r["logp_old"], r["adv_B"], r["mask"], 0.2, eps_high, "constant"
    )
    np.testing.assert_allclose(f(jnp.float32(eps_high)), want, rtol=1e-5)
  assert len(traces) == 1
  with pytest.raises(ValueError, match="reduction must be one of"):
    losses.ppo_policy_loss(r["logp"], r["logp_old"], r["adv_B"], r["mask"], 0.2, reduction="mean")
  with pytest.raises(ValueError, match=r"advantages must have the shape of logp \(5, 6\)"):
    losses.ppo_policy_loss(r["logp"], r["logp_old"], r["adv_B"][:4], r["mask"], 0.2)
