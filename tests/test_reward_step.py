"""Reward-model step: scoring at the last real token, learning, ties, non-finite skip."""

import jax
import jax.numpy as jnp
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


def _grouped_toy(rng, groups=8, k=4, t=8):
  """``groups`` prompts with ``k`` responses each, labelled by their count of token 3 (ties
  on equal counts), as pair arrays in group_pair_index order."""
  resp = rng.integers(4, 16, (groups, k, t)).astype(np.int32)
  resp[..., 2:5] = np.where(rng.random((groups, k, 3)) < 0.5, 3, resp[..., 2:5])
  mask = np.ones((groups, k, t), np.int32)
  mask[..., :2] = 0
  i, j = reward.group_pair_index(k)
  count = (resp == 3).sum(-1)
  label = np.where(
    count[:, i] > count[:, j],
    losses.LABEL_A,
    np.where(count[:, i] < count[:, j], losses.LABEL_B, losses.LABEL_TIE),
  ).astype(np.int32)
  flat = lambda x: x.reshape(-1, t)
  pairs = dict(
    ids_a=flat(resp[:, i]),
    mask_a=flat(mask[:, i]),
    ids_b=flat(resp[:, j]),
    mask_b=flat(mask[:, j]),
    label=label.reshape(-1),
  )
  return pairs, resp, mask


def test_group_pairs_recovers_each_response_once_and_refuses_non_groups():
  pairs, resp, mask = _grouped_toy(np.random.default_rng(0), groups=3, k=4)
  assert list(zip(*reward.group_pair_index(4))) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
  got = reward.group_pairs(pairs, 4)
  np.testing.assert_array_equal(got["ids"], resp)
  np.testing.assert_array_equal(got["mask"], mask)
  np.testing.assert_array_equal(got["label"], pairs["label"].reshape(3, 6))
  two = reward.group_pairs({k: v[:1] for k, v in pairs.items()}, 2)  # K = 2: a pair is a group
  np.testing.assert_array_equal(two["ids"][0], [pairs["ids_a"][0], pairs["ids_b"][0]])
  with pytest.raises(ValueError, match="not a multiple of 6"):
    reward.group_pairs({k: v[:5] for k, v in pairs.items()}, 4)
  shuffled = {k: v[::-1].copy() for k, v in pairs.items()}
  with pytest.raises(ValueError, match="disagree within a group"):
    reward.group_pairs(shuffled, 4)


@pytest.mark.parametrize(
  "tie_model", ["rao_kupper", pytest.param("bradley_terry", marks=pytest.mark.slow)]
)
def test_grouped_step_equals_the_pair_step_on_the_same_comparisons(tie_model):
  """Oracle: one step on 8 groups of 4 responses (32 sequences scored once, 48 comparisons)
  gives the loss, metrics and updated params of the pair step on the same 48 pairs (96
  sequences)."""
  pairs, _, _ = _grouped_toy(np.random.default_rng(1), groups=8, k=4)
  hp = reward.RewardHparams(tie_model=tie_model)
  opt = optax.sgd(1.0)  # the update is the gradient itself (Adam's first step is its sign)
  params = init_params(MODEL, jax.random.PRNGKey(0))
  step = jax.jit(reward.make_reward_step(MODEL, opt, hp))
  start = reward.init_reward_state(params, opt, hp)
  s_pair, m_pair = step(start, pairs)
  s_group, m_group = step(start, reward.group_pairs(pairs, 4))
  for key in ("loss", "accuracy", "margin", "score_mean", "grad_norm", "tie_param"):
    np.testing.assert_allclose(float(m_group[key]), float(m_pair[key]), rtol=2e-5, err_msg=key)

  delta = lambda new: jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), new, start.params)
  want, got = delta(s_pair.params), delta(s_group.params)
  scale = max(float(np.abs(x).max()) for x in jax.tree.leaves(want))  # gradients that cancel
  jax.tree.map(  # to ~1e-10 in some leaves are compared at the scale of the largest one
    lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * scale), got, want
  )
  r_a, r_b = jax.jit(reward.make_pair_scorer(MODEL))(params, reward.group_pairs(pairs, 4))
  want_a, want_b = jax.jit(reward.make_pair_scorer(MODEL))(params, pairs)
  np.testing.assert_allclose(np.asarray(r_a).reshape(-1), np.asarray(want_a), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(r_b).reshape(-1), np.asarray(want_b), rtol=1e-5)


# Slow: the grouped step equals the pair step (oracle above) and pair training learns
# (test_reward_training_learns_preferences), and the assistant smoke (-m ci, K = 4) runs
# the grouped trainer in CI; this checks its step count and learning on a toy task.
@pytest.mark.slow
def test_train_reward_model_on_groups_learns_and_steps_over_groups(tmp_path):
  """K = 4: a step takes 2 x batch_size / K = 8 groups (48 comparisons); 32 groups and 2
  epochs are 8 steps; the model learns the marker (held-out pairs, decided accuracy) and
  the tie refit sees every training pair. A batch size that splits a group is refused."""
  from rlhf_jax.train import common
  from rlhf_jax.train import metrics as metrics_lib
  from rlhf_jax.train import reward as reward_train

  pairs, _, _ = _grouped_toy(np.random.default_rng(2), groups=32, k=4)
  held_out, _, _ = _grouped_toy(np.random.default_rng(3), groups=16, k=4)
  mesh = common.build_mesh(common.MeshSpec())

  def train(batch_size, eval_pairs, workdir):
    return reward_train.train_reward_model(
      MODEL,
      init_params(MODEL, jax.random.PRNGKey(0)),
      pairs,
      eval_pairs,
      hp=reward.RewardHparams(),
      optim_spec=common.OptimSpec(name="adamw", learning_rate=1e-2, warmup_steps=0),
      epochs=2,
      batch_size=batch_size,
      mesh=mesh,
      seed=0,
      workdir=str(tmp_path / workdir),
      responses_per_prompt=4,
    )

  _, result = train(16, held_out, "ok")
  rows = metrics_lib.read_metrics(str(tmp_path / "ok"))
  assert max(r["step"] for r in rows) == 8
  assert result["rm_train_pairs"] == 32 * 6
  assert result["rm_accuracy"] > 0.8
  rate = float(np.mean(pairs["label"] == losses.LABEL_TIE))
  assert result["rm_train_tie_rate_labels"] == pytest.approx(rate)
  with pytest.raises(ValueError, match="not a whole number of groups"):
    train(15, None, "bad")


def test_held_out_accuracy_per_group_counts_decided_pairs_by_hand():
  """``groups``: accuracy over each group's decided pairs (ties left out), next to the
  overall accuracy; a scorer that reads the score off the first token makes it hand-countable."""
  from rlhf_jax.train import common
  from rlhf_jax.train import reward as reward_train

  # pair: (first token of a, of b, label, group); the scorer ranks by first token
  rows = [
    (5, 3, losses.LABEL_A, "harmful"),  # right
    (2, 7, losses.LABEL_A, "harmful"),  # wrong
    (4, 4, losses.LABEL_TIE, "harmful"),  # tie: not in the accuracy
    (1, 9, losses.LABEL_B, "benign"),  # right
    (8, 6, losses.LABEL_B, "benign"),  # wrong
    (3, 2, losses.LABEL_A, "benign"),  # right
  ]
  ids_a = np.array([[a, 1] for a, _, _, _ in rows], np.int32)
  ids_b = np.array([[b, 1] for _, b, _, _ in rows], np.int32)
  pairs = dict(
    ids_a=ids_a,
    mask_a=np.ones_like(ids_a),
    ids_b=ids_b,
    mask_b=np.ones_like(ids_b),
    label=np.array([lab for _, _, lab, _ in rows], np.int32),
  )
  scorer = jax.jit(lambda params, batch: (batch["ids_a"][:, 0] * 1.0, batch["ids_b"][:, 0] * 1.0))
  hp = reward.RewardHparams(tie_model="rao_kupper", init_tie_param=1.5)
  params = {"model": {}, "tie": jnp.asarray(reward.raw_tie(1.5, "rao_kupper"), jnp.float32)}
  mesh = common.build_mesh(common.MeshSpec())
  groups = [g for _, _, _, g in rows]
  out = reward_train.evaluate_reward_model(
    MODEL, params, hp, pairs, 8, mesh, scorer=scorer, groups=groups
  )
  assert out["rm_accuracy"] == pytest.approx(3 / 5)
  assert out["rm_accuracy_harmful"] == pytest.approx(1 / 2) and out["rm_decided_harmful"] == 2
  assert out["rm_accuracy_benign"] == pytest.approx(2 / 3) and out["rm_decided_benign"] == 3
  with pytest.raises(ValueError, match="5 group names for 6 pairs"):
    reward_train.evaluate_reward_model(
      MODEL, params, hp, pairs, 8, mesh, scorer=scorer, groups=groups[:5]
    )


def test_scalar_head_init_std():
  """The scalar head's kernel: std 1/sqrt(d + 1) by default (sample std over 256 values
  within 15%), all zeros with ``scalar_init_std=0.0`` — then every score is exactly 0."""
  cfg = TransformerConfig(
    vocab_size=16, d_model=256, n_layers=1, n_heads=2, max_len=8, head="scalar"
  )
  ids = jnp.asarray(np.random.default_rng(0).integers(0, 16, (3, 8)), jnp.int32)
  default = init_params(Transformer(cfg), jax.random.PRNGKey(0))["score"]["kernel"]
  assert np.std(np.asarray(default)) == pytest.approx(1 / np.sqrt(257), rel=0.15)
  zero_model = Transformer(cfg.replace(scalar_init_std=0.0))
  zero = init_params(zero_model, jax.random.PRNGKey(0))
  assert not np.any(np.asarray(zero["score"]["kernel"]))
  assert not np.any(np.asarray(zero_model.apply({"params": zero}, ids)))


@pytest.mark.parametrize("lora", [False, True])
def test_train_reward_model_head_init_std(tmp_path, lora):
  """``head_init_std=0.0``: the fresh head is zero, so at a negligible learning rate every
  held-out score stays ~0; the default head ranks them at random (score std well above 0).
  Both the dense and the LoRA paths."""
  from rlhf_jax import lora as lora_lib
  from rlhf_jax.train import common
  from rlhf_jax.train import reward as reward_train

  pairs = _toy_batch(np.random.default_rng(4), b=16)
  mesh = common.build_mesh(common.MeshSpec())
  spec = lora_lib.LoraSpec(rank=2, alpha=4.0, targets=("q", "v")) if lora else None

  def score_std(head_init_std, workdir):
    _, result = reward_train.train_reward_model(
      MODEL,
      init_params(MODEL, jax.random.PRNGKey(0)),
      pairs,
      pairs,
      hp=reward.RewardHparams(),
      optim_spec=common.OptimSpec(name="adamw", learning_rate=1e-9, warmup_steps=0),
      epochs=1,
      batch_size=16,
      mesh=mesh,
      seed=0,
      workdir=str(tmp_path / workdir),
      lora=spec,
      head_init_std=head_init_std,
    )
    return result["rm_score_std"]

  assert score_std(0.0, "zero") < 1e-6
  assert score_std(None, "default") > 1e-2
