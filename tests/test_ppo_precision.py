"""The PPO update under the speed options: per-block remat is exact, bf16 matmuls are close.

The float32 update without remat is the oracle: the update phase runs on one fixed rollout
(random tokens, log-probs, values and advantages: the update's arithmetic does not depend on
where they came from) under each option.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlhf_jax import ppo
from rlhf_jax.models import Transformer, TransformerConfig, init_params

VOCAB = 24
BASE = TransformerConfig(vocab_size=VOCAB, d_model=32, n_layers=1, n_heads=2, max_len=32)
# One update: one epoch of one minibatch.
HP = ppo.PPOHparams(
  response_len=6, num_minibatches=1, epochs=1, temperature=1.0, eos_id=0, pad_id=1
)
B, P = 8, 5
LR = 0.05  # SGD: the update is -LR * gradient, so update differences are gradient differences


@pytest.fixture(scope="module")
def f32_run():
  """Params, the f32 rollout and the f32 update phase's new params and metrics."""
  policy = Transformer(BASE.replace(head="lm"))
  value = Transformer(BASE.replace(head="scalar"))
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  pp, vp = init_params(policy, k1), init_params(value, k2)
  params = {"policy": pp, "value": vp}
  rng = np.random.default_rng(0)
  n = HP.response_len
  seq_mask = np.ones((B, P + n), np.int32)
  seq_mask[:3, :2] = 0  # left padding
  resp_mask = np.ones((B, n), np.int32)
  resp_mask[:2, -2:] = 0  # responses that ended early
  seq_mask[:, P:] = resp_mask
  rollout = ppo.Rollout(
    seq_ids_BS=rng.integers(2, VOCAB, (B, P + n)).astype(np.int32),
    seq_mask_BS=seq_mask,
    response_mask_BT=resp_mask,
    logp_old_BT=(-np.log(VOCAB) + 0.3 * rng.standard_normal((B, n))).astype(np.float32),
    values_old_BT=(0.1 * rng.standard_normal((B, n))).astype(np.float32),
    advantages_BT=rng.standard_normal((B, n)).astype(np.float32),
    returns_BT=rng.standard_normal((B, n)).astype(np.float32),
  )
  ro = (rollout, {}, jnp.float32(0.0))
  opt = optax.sgd(LR)
  state = ppo.init_ppo_state(params, opt, 0.1, jax.random.PRNGKey(1))
  _, update_phase = ppo.make_ppo_iteration(policy, value, value, opt, HP, phases=True)
  new_state, metrics = jax.jit(update_phase)(state, *ro)
  return state, ro, new_state, metrics


def _update_with(f32_run, **cfg):
  state, ro, _, _ = f32_run
  policy = Transformer(BASE.replace(head="lm", **cfg))
  value = Transformer(BASE.replace(head="scalar", **cfg))
  _, update_phase = ppo.make_ppo_iteration(policy, value, value, optax.sgd(LR), HP, phases=True)
  return jax.jit(update_phase)(state, *ro)


def _deltas(new_state, state):
  return jax.tree.map(
    lambda a, b: np.asarray(a, np.float64) - np.asarray(b), new_state.params, state.params
  )


@pytest.mark.slow  # the default suite keeps the model-level remat test (tests/test_models.py)
def test_remat_update_equals_plain_update(f32_run):
  state, _, ref_state, ref_metrics = f32_run
  new_state, metrics = _update_with(f32_run, remat=True)
  np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=1e-6)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
    _deltas(new_state, state),
    _deltas(ref_state, state),
  )


def test_bf16_matmul_update_close_to_float32(f32_run):
  """Loss within 1% of float32; each param's update (one SGD step) within 5% in L2 norm of
  its float32 update (plus 0.1% of the whole update's norm: some gradients, such as the key
  bias's, are zero in exact arithmetic and pure rounding in either dtype)."""
  state, _, ref_state, ref_metrics = f32_run
  new_state, metrics = _update_with(f32_run, matmul_dtype="bfloat16")
  loss32, loss16 = float(ref_metrics["loss"]), float(metrics["loss"])
  assert abs(loss16 - loss32) <= 0.01 * abs(loss32) + 1e-4, (loss16, loss32)
  d16, d32 = _deltas(new_state, state), _deltas(ref_state, state)
  total = np.sqrt(sum(np.sum(b**2) for b in jax.tree.leaves(d32)))
  errs = jax.tree.map(
    lambda a, b: np.linalg.norm(a - b) / (np.linalg.norm(b) + 1e-3 * total), d16, d32
  )
  assert max(jax.tree.leaves(errs)) < 0.05, errs
  assert min(jax.tree.leaves(errs)) > 0  # the bf16 path did run, in every param
  assert jax.tree.all(jax.tree.map(lambda a: a.dtype == jnp.float32, new_state.params))


def test_bf16_matmuls_recompute_old_logprobs():
  assert HP.recomputes_old_logprobs(BASE.replace(matmul_dtype="bfloat16").lowest_dtype)
  assert not HP.recomputes_old_logprobs(BASE.replace(matmul_dtype="float32").lowest_dtype)
