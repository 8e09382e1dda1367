"""Reward-model step: scoring at the last real token, learning, ties, non-finite skip."""

import jax
import numpy as np
import optax
import pytest

from rlhf_jax import losses, reward
from rlhf_jax.models import Transformer, TransformerConfig, init_params

CFG = TransformerConfig(vocab_size=16, d_model=32, n_layers=1, n_heads=2, max_len=16, head="scalar")
MODEL = Transformer(CFG)


def _toy_batch(rng, b=16, t=8):
  """a is preferred when it contains more token 3s than b: learnable by a 1-layer model."""
  ids_a = rng.integers(4, 16, (b, t)).astype(np.int32)
  ids_b = rng.integers(4, 16, (b, t)).astype(np.int32)
  ids_a[:, 2] = 3  # the preferred side carries the marker token
  flip = rng.random(b) < 0.5
  ids_a[flip], ids_b[flip] = ids_b[flip].copy(), ids_a[flip].copy()
  label = np.where(flip, losses.LABEL_B, losses.LABEL_A).astype(np.int32)
  mask = np.ones((b, t), np.int32)
  mask[:, :2] = 0  # left padding
  mask[: b // 2, -2:] = 0  # and right padding on half the rows
  return dict(ids_a=ids_a, mask_a=mask, ids_b=ids_b, mask_b=mask.copy(), label=label)


def test_score_reads_last_real_token():
  params = init_params(MODEL, jax.random.PRNGKey(0))
  ids = np.arange(12, dtype=np.int32).reshape(2, 6) % 16
  mask = np.array([[0, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], np.int32)
  full = MODEL.apply({"params": params}, ids, mask)
  got = reward.score_sequences(MODEL, params, ids, mask)
  np.testing.assert_allclose(np.asarray(got), [full[0, 3], full[1, 5]], rtol=1e-6)


@pytest.mark.parametrize(
  "tie_model",
  [  # the default tie model in the default suite, the other two in the slow one
    pytest.param("bradley_terry", marks=pytest.mark.slow),
    "rao_kupper",
    pytest.param("davidson", marks=pytest.mark.slow),
  ],
)
def test_reward_training_learns_preferences(tie_model):
  hp = reward.RewardHparams(tie_model=tie_model, init_tie_param=1.5)
  opt = optax.adam(3e-3)
  state = reward.init_reward_state(init_params(MODEL, jax.random.PRNGKey(0)), opt, hp)
  step = jax.jit(reward.make_reward_step(MODEL, opt, hp), donate_argnums=0)
  rng = np.random.default_rng(0)
  first = None
  for i in range(60):
    batch = _toy_batch(rng)
    if tie_model != "bradley_terry":
      batch["label"][:2] = losses.LABEL_TIE
    state, m = step(state, batch)
    first = first if first is not None else float(m["loss"])
  held_out = _toy_batch(np.random.default_rng(123), b=64)
  r_a, r_b = jax.jit(reward.make_pair_scorer(MODEL))(state.params["model"], held_out)
  acc = float(reward.preference_metrics(r_a, r_b, held_out["label"])["accuracy"])
  assert acc > 0.9, acc
  assert float(m["loss"]) < first
  if tie_model != "bradley_terry":
    # The learned tie parameter moved away from its initial value and stays valid.
    tie = float(reward.tie_parameter(state.params["tie"], tie_model))
    assert tie != pytest.approx(1.5, abs=1e-4)
    assert tie >= (1.0 if tie_model == "rao_kupper" else 0.0)


def test_nonfinite_loss_skips_update_bitwise():
  hp = reward.RewardHparams(tie_model="rao_kupper")
  opt = optax.adam(1e-2)
  state = reward.init_reward_state(init_params(MODEL, jax.random.PRNGKey(0)), opt, hp)
  step = jax.jit(reward.make_reward_step(MODEL, opt, hp))
  batch = _toy_batch(np.random.default_rng(0))
  batch["label"][0] = 7  # an invalid label makes the loss NaN
  new_state, m = step(state, batch)
  assert int(m["skipped_updates"]) == 1 and not np.isfinite(float(m["loss"]))
  for a, b in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  for a, b in zip(jax.tree.leaves(new_state.opt_state), jax.tree.leaves(state.opt_state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  batch["label"][0] = losses.LABEL_A
  newer, m = step(new_state, batch)
  assert int(m["skipped_updates"]) == 1 and np.isfinite(float(m["loss"]))
  assert not np.array_equal(np.asarray(newer.params["tie"]), np.asarray(state.params["tie"]))


def test_invalid_hparams_name_the_field():
  with pytest.raises(ValueError, match="tie_model"):
    reward.RewardHparams(tie_model="thurstone")
  with pytest.raises(ValueError, match="init_tie_param"):
    reward.RewardHparams(tie_model="rao_kupper", init_tie_param=0.5)


def test_reward_training_fits_the_tie_parameter(tmp_path):
  """With 40% tie labels the trained model's θ is refitted far above its 1.5 start, ties
  become predictable (tie accuracy > 0) and the implied tie rate matches the labels'."""
  from rlhf_jax.train import common
  from rlhf_jax.train import reward as reward_train

  rng = np.random.default_rng(0)
  batches = [_toy_batch(rng, b=32) for _ in range(8)]
  pairs = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
  tie = rng.random(len(pairs["label"])) < 0.4
  pairs["ids_b"][tie] = pairs["ids_a"][tie]  # identical responses: a tie
  pairs["mask_b"][tie] = pairs["mask_a"][tie]
  pairs["label"][tie] = losses.LABEL_TIE
  hp = reward.RewardHparams(tie_model="rao_kupper", init_tie_param=1.5)
  mesh = common.build_mesh(common.MeshSpec())
  _, result = reward_train.train_reward_model(
    MODEL,
    init_params(MODEL, jax.random.PRNGKey(0)),
    pairs,
    pairs,
    hp=hp,
    optim_spec=common.OptimSpec(name="adamw", learning_rate=3e-3, warmup_steps=0),
    epochs=2,
    batch_size=32,
    mesh=mesh,
    seed=0,
    workdir=str(tmp_path),
  )
  assert result["rm_tie_param"] > 2.0
  assert result["rm_tie_accuracy"] > 0.5
  assert abs(result["rm_train_tie_rate_implied"] - result["rm_train_tie_rate_labels"]) < 0.05
  assert result["rm_tie_rate_labels"] == pytest.approx(np.mean(tie))
