"""Critic-free iterations (GRPO, Dr.GRPO, RLOO, REINFORCE++) on PPO's skeleton: they equal a
composition of the public functions, compile once, learn, and refuse unknown combinations."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from toy_rl import BASE, GRPO, G, N, P, toy_prompts

from rlhf_jax import advantages as adv_lib
from rlhf_jax import kl as kl_lib
from rlhf_jax import losses, ops, ppo
from rlhf_jax import reward as reward_lib
from rlhf_jax.models import Transformer, init_params


def _setup(seed=0):
  policy = Transformer(BASE.replace(head="lm"))
  rm = Transformer(BASE.replace(head="scalar"))
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  pp = init_params(policy, k1)
  rp = init_params(rm, k2)
  ref = jax.tree.map(jnp.copy, pp)
  frozen = ppo.PPOFrozen(ref, rp, jnp.float32(1.3), jnp.float32(-0.2))
  ids, mask = toy_prompts(seed)
  return policy, rm, {"policy": pp}, frozen, ids, mask


def _ref_logp(policy, frozen, seq_ids, seq_mask, temperature):
  logits = policy.apply(
    {"params": frozen.ref_params}, seq_ids, seq_mask, head_slice=(P - 1, P + N - 1)
  )
  return ops.token_logprobs(logits, seq_ids[:, P:], temperature)


def _score(rm, frozen, seq_ids, seq_mask):
  raw = reward_lib.score_sequences(rm, frozen.reward_params, seq_ids, seq_mask)
  return adv_lib.apply_reward_normalization(raw, frozen.reward_gain, frozen.reward_bias)


@pytest.fixture(scope="module")
def grpo_iteration():
  """One jitted, donating GRPO iteration shared by the compile-count and learning tests."""
  policy, rm, *_ = _setup()
  opt = optax.adam(3e-3)
  it = jax.jit(ppo.make_ppo_iteration(policy, None, rm, opt, GRPO), donate_argnums=0)
  return it, opt


@pytest.mark.slow  # the default suite keeps a cheaper test of the same path
def test_grpo_iteration_equals_composition_of_public_functions():
  """epochs = minibatches = 1: sample (same key) → score → grpo_advantages → clipped loss with
  the sequence reduction + β·k3 loss term → one SGD step gives the iteration's params."""
  policy, rm, params, frozen, ids, mask = _setup()
  hp = dataclasses.replace(GRPO, epochs=1, num_minibatches=1, adaptive_kl=False)
  beta, lr = 0.3, 0.5
  opt = optax.sgd(lr)
  state = ppo.init_ppo_state(params, opt, beta, jax.random.PRNGKey(7))
  new_state, m = jax.jit(ppo.make_ppo_iteration(policy, None, rm, opt, hp))(
    state, frozen, ids, mask
  )

  sample_key, _ = jax.random.split(jax.random.fold_in(state.rng, state.step))
  ids_r, mask_r = np.repeat(ids, G, 0), np.repeat(mask, G, 0)
  tokens, resp_mask, logp_old, _ = ppo.sample_responses(
    policy, hp, params["policy"], ids_r, mask_r, sample_key
  )
  seq_ids = jnp.concatenate([ids_r, tokens], 1)
  seq_mask = jnp.concatenate([mask_r, resp_mask], 1)
  score = _score(rm, frozen, seq_ids, seq_mask)
  adv_B = adv_lib.grpo_advantages(score, G)
  logp_ref = _ref_logp(policy, frozen, seq_ids, seq_mask, hp.temperature)

  def loss(p):
    logits = policy.apply({"params": p["policy"]}, seq_ids, seq_mask, head_slice=(P - 1, P + N - 1))
    logp = ops.token_logprobs(logits, tokens, hp.temperature)
    pg, _ = losses.ppo_policy_loss(
      logp, logp_old, adv_B, resp_mask, hp.clip_eps, reduction="sequence"
    )
    k3 = kl_lib.kl_penalty(logp, logp_ref, "k3", mask=resp_mask)
    return pg + beta * jnp.mean(ops.masked_mean(k3, resp_mask, axis=1))

  expected_loss, grads = jax.value_and_grad(loss)(params)
  updates, _ = opt.update(grads, opt.init(params), params)
  expected = optax.apply_updates(params, updates)

  np.testing.assert_allclose(float(m["score"]), float(jnp.mean(score)), rtol=1e-5)
  np.testing.assert_allclose(float(m["loss"]), float(expected_loss), rtol=1e-4, atol=1e-6)
  assert float(m["kl_loss"]) == pytest.approx(0.0, abs=1e-6)  # π_θ = π_ref before the step
  moved = 0.0
  for new, exp, old in zip(
    jax.tree.leaves(new_state.params), jax.tree.leaves(expected), jax.tree.leaves(params)
  ):
    np.testing.assert_allclose(
      np.asarray(new) - np.asarray(old), np.asarray(exp) - np.asarray(old), rtol=2e-3, atol=2e-7
    )
    moved = max(moved, float(np.max(np.abs(np.asarray(exp) - np.asarray(old)))))
  assert moved > 1e-4  # the comparison is not between two unchanged trees


@pytest.mark.parametrize(
  "algorithm",
  [
    "rloo",
    pytest.param("dr_grpo", marks=pytest.mark.slow),
    pytest.param("reinforce_pp", marks=pytest.mark.slow),
  ],
)
def test_rollout_advantages_equal_public_functions(algorithm):
  policy, rm, params, frozen, ids, mask = _setup(seed=1)
  hp = dataclasses.replace(GRPO, algorithm=algorithm)
  beta = 0.2
  state = ppo.init_ppo_state(params, optax.sgd(0.0), beta, jax.random.PRNGKey(3))
  rollout_phase, _ = ppo.make_ppo_iteration(policy, None, rm, optax.sgd(0.0), hp, phases=True)
  rollout, stats, _ = jax.jit(rollout_phase)(state, frozen, ids, mask)

  # Prompt g's G samples are rows g*G ... g*G + G - 1.
  np.testing.assert_array_equal(np.asarray(rollout.seq_ids_BS[:, :P]), np.repeat(ids, G, 0))
  assert rollout.values_old_BT is None and rollout.returns_BT is None
  m = rollout.response_mask_BT
  score = _score(rm, frozen, rollout.seq_ids_BS, rollout.seq_mask_BS)
  logp_ref = _ref_logp(policy, frozen, rollout.seq_ids_BS, rollout.seq_mask_BS, hp.temperature)
  if algorithm == "rloo":  # KL as a reward penalty: the total reward is score - β Σ_t k1
    assert not hp.kl_in_loss_resolved and rollout.logp_ref_BT is None
    total = score - beta * kl_lib.sequence_kl(rollout.logp_old_BT, logp_ref, m, "k1")
    expected = adv_lib.rloo_advantages(total, G)[:, None] * m
  elif algorithm == "dr_grpo":  # KL as a loss term: the total reward is the score
    assert hp.kl_in_loss_resolved and hp.loss_reduction_resolved == "constant"
    np.testing.assert_allclose(rollout.logp_ref_BT, logp_ref, atol=1e-5)
    expected = adv_lib.grpo_advantages(score, G, scale_by_std=False)[:, None] * m
  else:  # REINFORCE++: whitened return-to-go of the KL-shaped per-token rewards
    shaped = adv_lib.shape_rewards(score, rollout.logp_old_BT, logp_ref, m, beta, "k1")
    to_go, _ = adv_lib.gae(shaped.rewards, jnp.zeros_like(shaped.rewards), m, 1.0, 1.0)
    expected = ops.whiten(to_go, m, shift_mean=True)
    np.testing.assert_allclose(
      float(stats["return_mean"]), float(ops.masked_mean(to_go, m)), rtol=1e-4, atol=1e-5
    )
  assert float(jnp.max(jnp.abs(expected))) > 0.1
  np.testing.assert_allclose(
    np.asarray(rollout.advantages_BT), np.asarray(expected), rtol=1e-4, atol=2e-5
  )
  for key in ("value_explained_variance", "value_loss"):
    assert key not in stats


@pytest.mark.slow  # the default suite keeps a cheaper test of the same path
def test_critic_free_iteration_compiles_once_while_beta_changes(grpo_iteration):
  it, opt = grpo_iteration
  _, _, params, frozen, ids, mask = _setup()
  state = ppo.init_ppo_state(params, opt, 0.1, jax.random.PRNGKey(0))
  betas = []
  for _ in range(3):
    state, m = it(state, frozen, ids, mask)
    betas.append(float(m["beta"]))
  assert it._cache_size() == 1
  assert len(set(betas)) == 3, betas  # the adaptive controller moved β every iteration
  assert int(state.step) == 3 and set(state.params) == {"policy"}
  for key in (
    "score",
    "kl",
    "kl_loss",
    "entropy",
    "policy_clip_frac",
    "approx_kl",
    "group_score_std",
    "advantage_mean",
    "grad_norm",
  ):
    assert np.isfinite(float(m[key])), key
  assert not any(k.startswith("value") for k in m)
  assert float(m["non_score_reward"]) == 0.0  # the KL is in the loss, not the reward
  assert int(m["skipped_updates"]) == 0


# Slow: tests/test_rlvr.py's GRPO-on-a-host-scorer test shows GRPO raising a score in the
# default suite; the iteration's arithmetic is checked by the composition oracles above.
@pytest.mark.slow
def test_grpo_increases_a_toy_reward(grpo_iteration):
  """A reward model whose score reads one embedding feature that only token 7 has."""
  it, opt = grpo_iteration
  _, _, params, frozen, ids, mask = _setup(seed=1)
  rp = jax.tree.map(np.array, frozen.reward_params)
  rp["score"]["kernel"][:] = 0.0
  rp["score"]["kernel"][0, 0] = 1.0
  rp["embed"]["embedding"][:, 0] = 0.0
  rp["embed"]["embedding"][7, 0] = 8.0
  frozen = frozen._replace(
    reward_params=jax.tree.map(jnp.asarray, rp),
    reward_gain=jnp.float32(1.0),
    reward_bias=jnp.float32(0.0),
  )
  # The initial policy's mean score: the pre-update rollout score of four first iterations
  # from fresh copies of the initial params, with different RNG keys.
  before = []
  for seed in range(4):
    fresh = ppo.init_ppo_state(
      jax.tree.map(jnp.copy, params), opt, 0.01, jax.random.PRNGKey(100 + seed)
    )
    before.append(float(it(fresh, frozen, ids, mask)[1]["score"]))
  state = ppo.init_ppo_state(params, opt, 0.01, jax.random.PRNGKey(0))
  scores = []
  for _ in range(20):
    state, m = it(state, frozen, ids, mask)
    scores.append(float(m["score"]))
  assert np.mean(scores[-5:]) > np.mean(before) + 0.5, (before, scores)


@pytest.mark.parametrize(
  "kw, field",
  [
    ({"algorithm": "a2c"}, "algorithm"),
    ({"algorithm": "rloo"}, "group_size"),
    ({"algorithm": "grpo", "group_size": 1}, "group_size"),
    ({"algorithm": "dr_grpo"}, "group_size"),
    ({"group_size": 0}, "group_size"),
    ({"algorithm": "grpo", "group_size": 4, "shared_trunk": True}, "shared_trunk"),
    ({"algorithm": "reinforce_pp", "shared_trunk": True}, "shared_trunk"),
    ({"loss_reduction": "mean"}, "loss_reduction"),
    ({"kl_loss_estimator": "k4"}, "kl_loss_estimator"),
    ({"clip_eps_high": -0.1}, "clip_eps_high"),
  ],
)
def test_invalid_combinations_name_the_field(kw, field):
  with pytest.raises(ValueError, match=f"PPOHparams.{field}"):
    ppo.PPOHparams(**kw)


def test_critic_free_refuses_a_value_model_and_ragged_minibatches():
  policy, rm, params, frozen, ids, mask = _setup()
  with pytest.raises(ValueError, match="value_model must be None"):
    ppo.make_ppo_iteration(policy, rm, rm, optax.sgd(0.1), GRPO)
  # 4 prompts × 4 samples = 16 rollouts do not split into 3 minibatches.
  it = ppo.make_ppo_iteration(
    policy, None, rm, optax.sgd(0.1), dataclasses.replace(GRPO, num_minibatches=3)
  )
  state = ppo.init_ppo_state(params, optax.sgd(0.1), 0.1, jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="num_minibatches=3"):
    jax.eval_shape(it, state, frozen, ids, mask)


def test_defaults_follow_the_papers_and_keep_ppo():
  assert (ppo.PPOHparams().kl_in_loss_resolved, ppo.PPOHparams().loss_reduction_resolved) == (
    False,
    "token",
  )
  assert not ppo.PPOHparams().critic_free
  assert (GRPO.kl_in_loss_resolved, GRPO.loss_reduction_resolved) == (True, "sequence")
  rloo = ppo.PPOHparams(algorithm="rloo", group_size=2)
  assert (rloo.kl_in_loss_resolved, rloo.loss_reduction_resolved) == (False, "token")
  dapo = dataclasses.replace(GRPO, loss_reduction="token", clip_eps_high=0.28, kl_in_loss=False)
  assert (dapo.kl_in_loss_resolved, dapo.loss_reduction_resolved) == (False, "token")
