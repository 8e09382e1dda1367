"""Tests for rlhf_jax.losses.dpo_loss: DPO with ties (Rao-Kupper / Davidson), conservative DPO
(label smoothing) and IPO, against float64 loops, plus a toy policy trained by gradient descent."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import losses
from rlhf_jax.losses import LABEL_A, LABEL_B, LABEL_TIE

VARIANTS = [pytest.param(lambda f: f, id="eager"), pytest.param(jax.jit, id="jit")]
SIGMOID_CASES = [("bradley_terry", None), ("rao_kupper", 2.0), ("davidson", 0.7)]


def _log_sigmoid(x):
  return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def _dpo_oracle(
  logp_a,
  logp_b,
  ref_a,
  ref_b,
  label,
  beta,
  loss_type="sigmoid",
  tie_model="bradley_terry",
  tie_param=None,
  eps=0.0,
):
  """float64 loop straight from the definitions in the issue and the papers."""
  out = []
  for la, lb, ra, rb, lab in zip(logp_a, logp_b, ref_a, ref_b, label):
    la, lb, ra, rb, lab = float(la), float(lb), float(ra), float(rb), int(lab)
    h = (la - ra) - (lb - rb)
    if loss_type == "ipo":
      out.append(
        {LABEL_A: (h - 1 / (2 * beta)) ** 2, LABEL_B: (h + 1 / (2 * beta)) ** 2, LABEL_TIE: h**2}[
          lab
        ]
      )
      continue
    r_a, r_b = beta * (la - ra), beta * (lb - rb)
    d = r_a - r_b
    if tie_model == "bradley_terry":
      nll = {
        LABEL_A: -_log_sigmoid(d),
        LABEL_B: -_log_sigmoid(-d),
        LABEL_TIE: -0.5 * (_log_sigmoid(d) + _log_sigmoid(-d)),
      }
    elif tie_model == "rao_kupper":
      c = math.log(tie_param)
      p_a, p_b = math.exp(_log_sigmoid(d - c)), math.exp(_log_sigmoid(-d - c))
      nll = {LABEL_A: -math.log(p_a), LABEL_B: -math.log(p_b), LABEL_TIE: -math.log(1 - p_a - p_b)}
    else:
      e_a, e_b = math.exp(r_a), math.exp(r_b)
      e_t = tie_param * math.exp((r_a + r_b) / 2)
      z = e_a + e_b + e_t
      nll = {
        LABEL_A: -math.log(e_a / z),
        LABEL_B: -math.log(e_b / z),
        LABEL_TIE: -math.log(e_t / z),
      }
    if lab == LABEL_TIE:
      out.append(nll[LABEL_TIE])
    else:
      swapped = LABEL_B if lab == LABEL_A else LABEL_A
      out.append((1 - eps) * nll[lab] + eps * nll[swapped])
  return np.array(out)


def _pairs(n=24, seed=0, dtype=np.float32):
  rng = np.random.default_rng(seed)
  logp_a, logp_b = (
    (rng.normal(size=n) * 3 - 20).astype(dtype),
    (rng.normal(size=n) * 3 - 20).astype(dtype),
  )
  ref_a, ref_b = (
    (logp_a + rng.normal(size=n)).astype(dtype),
    (logp_b + rng.normal(size=n)).astype(dtype),
  )
  label = np.array([LABEL_A, LABEL_B, LABEL_TIE] * (n // 3), np.int32)
  return logp_a, logp_b, ref_a, ref_b, label


def test_dpo_loss_hand():
  # logp_a - ref_a = 1, logp_b - ref_b = 0, so h = 1; β = 0.5.
  # DPO: -log σ(0.5) = 0.47407698 (A), -log σ(-0.5) = 0.97407698 (B),
  #      tie under BT: ½(0.47407698 + 0.97407698) = 0.72407698.
  # IPO: 1/(2β) = 1: (1 - 1)² = 0 (A), (1 + 1)² = 4 (B), 1² = 1 (tie).
  args = (
    jnp.full(3, -1.0),
    jnp.full(3, -3.0),
    jnp.full(3, -2.0),
    jnp.full(3, -3.0),
    jnp.array([LABEL_A, LABEL_B, LABEL_TIE]),
    0.5,
  )
  np.testing.assert_allclose(
    losses.dpo_loss(*args), [0.47407698, 0.97407698, 0.72407698], rtol=1e-6
  )
  np.testing.assert_allclose(losses.dpo_loss(*args, "ipo"), [0.0, 4.0, 1.0], atol=1e-6)
  # Conservative DPO, ε = 0.1, label A: 0.9 · 0.47407698 + 0.1 · 0.97407698 = 0.52407698.
  np.testing.assert_allclose(
    losses.dpo_loss(*args, label_smoothing=0.1), [0.52407698, 0.92407698, 0.72407698], rtol=1e-6
  )


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("tie_model,tie_param", SIGMOID_CASES)
@pytest.mark.parametrize("eps", [0.0, 0.15])
def test_dpo_sigmoid_matches_float64_loop(variant, tie_model, tie_param, eps):
  logp_a, logp_b, ref_a, ref_b, label = _pairs(seed=1)
  fn = variant(functools.partial(losses.dpo_loss, tie_model=tie_model))
  param = None if tie_param is None else jnp.float32(tie_param)
  got = fn(
    logp_a,
    logp_b,
    ref_a,
    ref_b,
    label,
    jnp.float32(0.3),
    tie_param=param,
    label_smoothing=jnp.float32(eps),
  )
  want = _dpo_oracle(logp_a, logp_b, ref_a, ref_b, label, 0.3, "sigmoid", tie_model, tie_param, eps)
  assert got.shape == label.shape and got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)
  # Ties are unaffected by label smoothing.
  plain = losses.dpo_loss(
    logp_a, logp_b, ref_a, ref_b, label, 0.3, tie_model=tie_model, tie_param=tie_param
  )
  tie = label == LABEL_TIE
  np.testing.assert_allclose(np.asarray(got)[tie], np.asarray(plain)[tie], rtol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_ipo_matches_float64_loop(variant):
  logp_a, logp_b, ref_a, ref_b, label = _pairs(seed=2)
  fn = variant(functools.partial(losses.dpo_loss, loss_type="ipo"))
  got = fn(logp_a, logp_b, ref_a, ref_b, label, jnp.float32(0.1))
  want = _dpo_oracle(logp_a, logp_b, ref_a, ref_b, label, 0.1, "ipo")
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-5)


@pytest.mark.parametrize(
  "loss_type,tie_model,tie_param",
  [("sigmoid", m, p) for m, p in SIGMOID_CASES] + [("ipo", "none", None)],
)
def test_dpo_loss_float64_exact_and_gradients(loss_type, tie_model, tie_param):
  with jax.enable_x64(True):
    logp_a, logp_b, ref_a, ref_b, label = _pairs(seed=3, dtype=np.float64)
    eps = 0.2 if loss_type == "sigmoid" else 0.0
    fn = functools.partial(
      losses.dpo_loss,
      loss_type=loss_type,
      tie_model=tie_model,
      tie_param=tie_param,
      label_smoothing=eps,
    )
    got = fn(*map(jnp.asarray, (logp_a, logp_b, ref_a, ref_b, label)), 0.3)
    assert got.dtype == jnp.float64
    want = _dpo_oracle(
      logp_a,
      logp_b,
      ref_a,
      ref_b,
      label,
      0.3,
      loss_type,
      "bradley_terry" if tie_model == "none" else tie_model,
      tie_param,
      eps,
    )
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)

    def total(la, lb, ra, rb):
      return jnp.sum(fn(la, lb, ra, rb, label, 0.3))

    g_a, g_b, g_ra, g_rb = jax.grad(total, argnums=(0, 1, 2, 3))(
      *map(jnp.asarray, (logp_a, logp_b, ref_a, ref_b))
    )
    # The loss depends on h only, so ∂/∂logp_b = -∂/∂logp_a (Davidson: on r_a - r_b too);
    # the reference log-probs are data (no gradient).
    np.testing.assert_allclose(g_b, -g_a, rtol=1e-10, atol=1e-14)
    assert np.all(np.asarray(g_ra) == 0) and np.all(np.asarray(g_rb) == 0)
    # Central finite differences on logp_a.
    h = 1e-6
    fd = [
      (
        float(total(logp_a + h * e, logp_b, ref_a, ref_b))
        - float(total(logp_a - h * e, logp_b, ref_a, ref_b))
      )
      / (2 * h)
      for e in np.eye(len(logp_a))
    ]
    np.testing.assert_allclose(g_a, fd, rtol=1e-6, atol=1e-8)


def test_dpo_loss_bf16_vmap_traced_hyperparameters_and_invalid_labels():
  logp_a, logp_b, ref_a, ref_b, label = _pairs(seed=4)
  bf = [jnp.asarray(x, jnp.bfloat16) for x in (logp_a, logp_b, ref_a, ref_b)]
  got = losses.dpo_loss(*bf, label, 0.3, tie_model="rao_kupper", tie_param=2.0)
  assert got.dtype == jnp.float32
  want = _dpo_oracle(
    *(np.asarray(x.astype(jnp.float32)) for x in bf),
    label,
    0.3,
    tie_model="rao_kupper",
    tie_param=2.0,
  )
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)
  # vmap over a leading axis of pair batches.
  stacked = [np.stack([x, x[::-1]]) for x in (logp_a, logp_b, ref_a, ref_b, label)]
  fn = functools.partial(losses.dpo_loss, tie_model="davidson", tie_param=0.7)
  got = jax.vmap(fn, in_axes=(0, 0, 0, 0, 0, None))(*stacked, 0.3)
  for i in range(2):
    want = _dpo_oracle(*(s[i] for s in stacked), 0.3, tie_model="davidson", tie_param=0.7)
    np.testing.assert_allclose(got[i], want, rtol=2e-5, atol=1e-6)
  # β, θ and ε traced: one compilation for every value.
  traces = []

  @jax.jit
  def f(beta, theta, eps):
    traces.append(1)
    return losses.dpo_loss(
      logp_a,
      logp_b,
      ref_a,
      ref_b,
      label,
      beta,
      tie_model="rao_kupper",
      tie_param=theta,
      label_smoothing=eps,
    )

  for beta, theta, eps in [(0.1, 2.0, 0.0), (0.5, 3.0, 0.1)]:
    want = _dpo_oracle(
      logp_a, logp_b, ref_a, ref_b, label, beta, "sigmoid", "rao_kupper", theta, eps
    )
    np.testing.assert_allclose(
      f(jnp.float32(beta), jnp.float32(theta), jnp.float32(eps)), want, rtol=2e-5, atol=1e-6
    )
  assert len(traces) == 1
  bad = np.array([LABEL_A, 3, -1, LABEL_TIE], np.int32)
  for kwargs in ({}, {"label_smoothing": 0.1}, {"loss_type": "ipo"}):
    out = np.asarray(
      losses.dpo_loss(logp_a[:4], logp_b[:4], ref_a[:4], ref_b[:4], bad, 0.3, **kwargs)
    )
    assert np.isfinite(out[[0, 3]]).all() and np.isnan(out[[1, 2]]).all()


def test_dpo_loss_errors():
  args = (jnp.zeros(2), jnp.zeros(2), jnp.zeros(2), jnp.zeros(2), jnp.zeros(2, jnp.int32), 0.1)
  with pytest.raises(ValueError, match="loss_type must be one of"):
    losses.dpo_loss(*args, loss_type="hinge")
  with pytest.raises(ValueError, match="tie_param"):
    losses.dpo_loss(*args, tie_model="rao_kupper")
  with pytest.raises(ValueError, match="tie_model"):
    losses.dpo_loss(*args, tie_model="thurstone", tie_param=1.0)
  with pytest.raises(ValueError, match="'ipo' models ties itself"):
    losses.dpo_loss(*args, loss_type="ipo", tie_model="rao_kupper", tie_param=2.0)
  with pytest.raises(ValueError, match="'ipo' models ties itself"):
    losses.dpo_loss(*args, loss_type="ipo", tie_model="davidson")
  with pytest.raises(ValueError, match="label_smoothing applies to loss_type='sigmoid'"):
    losses.dpo_loss(*args, loss_type="ipo", label_smoothing=0.1)
  with pytest.raises(AssertionError):
    losses.dpo_loss(jnp.zeros(3), *args[1:])


# --- toy policy: free logits over K = 4 responses of one prompt --------------------------------
# log π(y) = log_softmax(w)_y stands in for a policy's summed response log-probs; the reference is
# the initial policy. Gradient descent on the mean dpo_loss over pairs of these responses.

_TOY_REF_W = np.array([0.3, -0.2, 0.5, 0.1], np.float32)


def _toy_train(pairs, labels, loss_kwargs, w0, steps=300, lr=0.5, beta=0.5):
  a_idx, b_idx = jnp.array(pairs)[:, 0], jnp.array(pairs)[:, 1]
  ref = jax.nn.log_softmax(jnp.asarray(_TOY_REF_W))
  labels = jnp.asarray(labels, jnp.int32)

  def mean_loss(w):
    logp = jax.nn.log_softmax(w)
    return jnp.mean(
      losses.dpo_loss(logp[a_idx], logp[b_idx], ref[a_idx], ref[b_idx], labels, beta, **loss_kwargs)
    )

  @jax.jit
  def train(w):
    return jax.lax.fori_loop(0, steps, lambda _, w: w - lr * jax.grad(mean_loss)(w), w)

  def gaps(w):  # implicit reward gaps β h of every pair
    logr = jax.nn.log_softmax(w) - ref
    return np.asarray(beta * (logr[a_idx] - logr[b_idx]))

  w = train(jnp.asarray(w0, jnp.float32))
  return gaps(jnp.asarray(w0, jnp.float32)), gaps(w), float(mean_loss(w0)), float(mean_loss(w))


TOY_LOSSES = [
  {},
  {"label_smoothing": 0.1},
  {"tie_model": "rao_kupper", "tie_param": 2.0},
  {"tie_model": "davidson", "tie_param": 1.0},
  {"loss_type": "ipo"},
]


@pytest.mark.parametrize(
  "loss_kwargs", TOY_LOSSES, ids=lambda k: "-".join(map(str, k.values())) or "bradley_terry"
)
def test_dpo_toy_policy_moves_preference_probabilities_the_right_way(loss_kwargs):
  # Responses ranked 0 > 1 > 2 > 3; labels in both orientations.
  pairs = [(0, 1), (1, 2), (3, 2), (0, 3), (2, 0)]
  labels = [LABEL_A, LABEL_A, LABEL_B, LABEL_A, LABEL_B]
  gap0, gap1, loss0, loss1 = _toy_train(pairs, labels, loss_kwargs, _TOY_REF_W)
  assert loss1 < loss0
  np.testing.assert_allclose(gap0, 0.0, atol=1e-6)  # starts at the reference
  sign = np.where(np.array(labels) == LABEL_A, 1.0, -1.0)
  # Every preferred response gained implicit reward over the other (so the policy's
  # log π - log π_ref now orders the responses 0 > 1 > 2 > 3, as labelled).
  assert np.all(sign * gap1 > 0.05), gap1
  tie_model = loss_kwargs.get("tie_model", "bradley_terry")
  p_a, p_b, _ = losses.preference_probs(
    gap1, np.zeros_like(gap1), tie_model, loss_kwargs.get("tie_param")
  )
  p_pref = np.where(sign > 0, p_a, p_b)
  p_pref0 = np.where(
    sign > 0,
    *losses.preference_probs(gap0, np.zeros_like(gap0), tie_model, loss_kwargs.get("tie_param"))[
      :2
    ],
  )
  assert np.all(p_pref > p_pref0 + 0.01)


@pytest.mark.parametrize(
  "loss_kwargs", TOY_LOSSES[2:] + [{}], ids=["rao_kupper", "davidson", "ipo", "bradley_terry"]
)
def test_dpo_toy_all_ties_keep_the_implicit_reward_gap_at_zero(loss_kwargs):
  pairs = [(0, 1), (1, 2), (2, 3), (0, 3), (1, 3)]
  labels = [LABEL_TIE] * 5
  # Starting at the reference the gap is 0 and stays 0: Δ = 0 maximises the tie likelihood.
  gap0, gap1, loss0, loss1 = _toy_train(pairs, labels, loss_kwargs, _TOY_REF_W)
  np.testing.assert_allclose(gap0, 0.0, atol=1e-6)
  np.testing.assert_allclose(gap1, 0.0, atol=1e-6)
  np.testing.assert_allclose(loss1, loss0, rtol=1e-6)
  # Starting away from the reference, all-tie data pulls every gap back to 0.
  w_far = _TOY_REF_W + np.array([1.0, -0.5, 0.0, 0.7], np.float32)
  gap0, gap1, _, _ = _toy_train(pairs, labels, loss_kwargs, w_far, steps=2000)
  assert np.max(np.abs(gap0)) > 0.3
  np.testing.assert_allclose(gap1, 0.0, atol=1e-4)
