"""Reward from a scorer directly (verifiable-reward RL): a host scorer called through
``jax.pure_callback`` inside the compiled iteration scores exactly what the scorer says on the
decoded batch, GRPO raises it with one compilation, the policy stage trains on it without a
reward model, and the config refuses what cannot work, naming the field."""

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from toy_rl import BASE, GRPO, VOCAB, B, N, P, toy_prompts

from rlhf_jax import ppo
from rlhf_jax.models import Transformer, init_params

TARGET = 7  # the toy scorer rewards this token id


def decode_ids(ids_BL, mask_BL):
  """The identity "tokenizer": each row's masked-in ids as a list."""
  return [[int(t) for t, m in zip(row, mrow) if m] for row, mrow in zip(ids_BL, mask_BL)]


def toy_scorer(prompts, responses):
  """Fraction of TARGET in the response, plus a small prompt-dependent term (so a scorer that
  got the wrong prompts would be caught)."""
  return np.asarray(
    [
      (sum(t == TARGET for t in r) / max(len(r), 1)) + 0.001 * len(p)
      for p, r in zip(prompts, responses)
    ],
    np.float32,
  )


def _setup(seed=0):
  policy = Transformer(BASE.replace(head="lm"))
  pp = init_params(policy, jax.random.PRNGKey(seed))
  frozen = ppo.PPOFrozen(jax.tree.map(jnp.copy, pp), None, jnp.float32(1.0), jnp.float32(0.0))
  ids, mask = toy_prompts(seed, avoid=TARGET)
  return policy, {"policy": pp}, frozen, ids, mask


def test_callback_score_equals_the_scorer_on_the_decoded_batch():
  policy, params, frozen, ids, mask = _setup()
  score_fn = ppo.host_scorer_score_fn(toy_scorer, decode_ids)
  sample = jax.jit(ppo.make_sample_and_score(policy, None, GRPO, score_fn))
  out = sample(params["policy"], None, ids, mask, jax.random.PRNGKey(3))
  prompts = decode_ids(ids, mask)
  responses = decode_ids(np.asarray(out.tokens_BT), np.asarray(out.mask_BT))
  assert [len(p) for p in prompts] == [P - 2, P - 2, P, P]
  np.testing.assert_array_equal(np.asarray(out.raw_score_B), toy_scorer(prompts, responses))
  assert out.raw_score_B.dtype == jnp.float32 and out.raw_score_B.shape == (B,)
  # vmap calls the scorer once per mapped element, with that element's rows.
  seq = jnp.stack([out.seq_ids_BS, out.seq_ids_BS[::-1]])
  seq_mask = jnp.stack([out.seq_mask_BS, out.seq_mask_BS[::-1]])
  vm = jax.jit(jax.vmap(lambda i, m: score_fn(None, i, m, P)))(seq, seq_mask)
  np.testing.assert_array_equal(np.asarray(vm), np.stack([out.raw_score_B, out.raw_score_B[::-1]]))


def test_host_scorer_errors_name_the_scorer():
  bad = ppo.host_scorer_score_fn(lambda p, r: np.zeros(3), decode_ids, name="config.x")
  ids = jnp.full((2, P + N), 5, jnp.int32)
  with pytest.raises(Exception, match=r"config\.x: a scorer returns one number per response"):
    jax.block_until_ready(jax.jit(lambda i, m: bad(None, i, m, P))(ids, jnp.ones_like(ids)))
  policy = Transformer(BASE.replace(head="lm"))
  with pytest.raises(ValueError, match="reward_model=None needs a score_fn"):
    ppo.make_ppo_iteration(policy, None, None, optax.sgd(0.1), GRPO)


def test_grpo_on_a_host_scorer_raises_it_and_compiles_once():
  policy, params, frozen, ids, mask = _setup(seed=1)
  opt = optax.adam(3e-3)
  score_fn = ppo.host_scorer_score_fn(toy_scorer, decode_ids)
  it = jax.jit(
    ppo.make_ppo_iteration(policy, None, None, opt, GRPO, score_fn=score_fn), donate_argnums=0
  )
  before = []
  for seed in range(2):
    fresh = ppo.init_ppo_state(
      jax.tree.map(jnp.copy, params), opt, 0.01, jax.random.PRNGKey(100 + seed)
    )
    before.append(float(it(fresh, frozen, ids, mask)[1]["score_raw"]))
  state = ppo.init_ppo_state(params, opt, 0.01, jax.random.PRNGKey(0))
  scores = []
  for _ in range(15):
    state, m = it(state, frozen, ids, mask)
    scores.append(float(m["score_raw"]))
  assert it._cache_size() == 1
  assert int(m["skipped_updates"]) == 0
  # 1/VOCAB of the tokens at first; GRPO learns to emit TARGET.
  assert np.mean(scores[-3:]) > np.mean(before) + 0.2, (before, scores)


@pytest.mark.slow
def test_policy_stage_trains_on_the_scorer_without_the_reward_model(tmp_path):
  """The pipeline's policy stage with a score_fn: the scorer's normalisation is fitted on
  reference samples, the iteration has no reward model, and PolicyResult keeps the reward
  model's gain and bias for evaluation's proxy reward. (Slow: four compilations on the
  8-device test mesh.)"""
  from rlhf_jax.train import common
  from rlhf_jax.train import pipeline as pl

  models = pl.Models.from_base(BASE)
  mesh = common.build_mesh(common.MeshSpec())
  policy_params = init_params(models.lm, jax.random.PRNGKey(0))
  rm_params = init_params(models.scalar, jax.random.PRNGKey(1))
  rng = np.random.default_rng(0)
  ids = rng.integers(2, VOCAB, (32, P)).astype(np.int32)
  mask = np.ones_like(ids)
  spec = pl.PPOSpec(
    hparams=dataclasses.replace(GRPO, num_minibatches=1, epochs=1),
    iterations=2,
    batch_size=8,  # 8 prompts x 4 samples; divisible by the 8 test devices
    norm_samples=16,
    reward_source="module:unused",  # the stage takes the score_fn it is given
  )
  score_fn = ppo.host_scorer_score_fn(toy_scorer, decode_ids)
  result = pl.policy_stage(
    models,
    spec,
    spec.hparams,
    policy_params=policy_params,
    ref_params=policy_params,
    rm_params=rm_params,
    prompt_ids=ids,
    prompt_mask=mask,
    mesh=mesh,
    seed=0,
    workdir=tmp_path / "ppo",
    desc="rlvr",
    max_skipped_fraction=0.1,
    score_fn=score_fn,
  )
  from rlhf_jax.train import ppo as ppo_train

  rm_gain, rm_bias = ppo_train.fit_reward_norm(
    models.lm, policy_params, models.scalar, rm_params, ids, mask, spec.hparams, 16, 8, mesh, 0
  )
  sc_gain, sc_bias = ppo_train.fit_reward_norm(
    models.lm, policy_params, None, None, ids, mask, spec.hparams, 16, 8, mesh, 0, score_fn
  )
  assert (result.reward_gain, result.reward_bias) == pytest.approx((rm_gain, rm_bias))
  assert sc_gain != pytest.approx(rm_gain)
  h = result.history[-1]
  assert h["score"] == pytest.approx(sc_gain * h["score_raw"] + sc_bias, rel=1e-4, abs=1e-5)
  assert 0.0 <= h["score_raw"] <= 1.1 and [r["iteration"] for r in result.history] == [1, 2]


def test_a_constant_reward_is_centred_not_scaled():
  from rlhf_jax.train import common
  from rlhf_jax.train import ppo as ppo_train

  policy, params, _, ids, mask = _setup()
  mesh = common.build_mesh(common.MeshSpec())
  const = ppo.host_scorer_score_fn(lambda p, r: np.full(len(r), 0.5, np.float32), decode_ids)
  hp = dataclasses.replace(GRPO, group_size=1, algorithm="ppo")
  gain, bias = ppo_train.fit_reward_norm(
    policy, params["policy"], None, None, ids, mask, hp, 8, 8, mesh, 0, const
  )
  assert (gain, bias) == (1.0, -0.5)


# ----------------------------------------------------------------------------- config


def _pipeline_errors(ppo_section, **sections):
  from rlhf_jax.config_schema import ConfigError, from_config
  from rlhf_jax.train import pipeline as pl

  cfg = from_config(pl.Config, {"ppo": ppo_section, **sections})
  try:
    pl.check_config(cfg)
  except ConfigError as e:
    return str(e)
  return ""


@pytest.mark.parametrize(
  "ppo_section,expected",
  [
    (
      {"reward_source": "vader"},
      "config.ppo.reward_source='vader': expected 'model', a built-in scorer",
    ),
    (
      {"reward_source": "vader_sentiment"},  # ppo, separate value model, value_init="reward"
      "config.ppo.reward_source='vader_sentiment' with config.ppo.value_init='reward'",
    ),
    (
      {"reward_source": "vader_sentiment", "hparams": {"algorithm": "dpo"}},
      "config.ppo.reward_source='vader_sentiment' with config.ppo.hparams.algorithm='dpo'",
    ),
  ],
)
def test_pipeline_config_errors_name_the_field(ppo_section, expected):
  errors = _pipeline_errors(ppo_section)
  assert any(line.startswith(expected) for line in errors.splitlines()), errors


def test_pipeline_accepts_a_scorer_reward_where_it_can_work():
  for ppo_section in (
    {"reward_source": "vader_sentiment", "value_init": "zero"},
    {"reward_source": "vader_sentiment", "hparams": {"shared_trunk": True}},
    {
      "reward_source": "tests.test_rlvr:toy_scorer",
      "hparams": {"algorithm": "rloo", "group_size": 2},
    },
  ):
    assert _pipeline_errors(ppo_section) == "", ppo_section


def test_scorer_reward_is_loaded_and_probed_at_start_up_naming_the_field():
  from rlhf_jax.train import ppo as ppo_train

  assert ppo_train.load_reward_scorer("model", "config.ppo.reward_source") is None
  assert ppo_train.load_reward_scorer("vader_sentiment", "f") is not None
  with pytest.raises(ValueError, match=r"config\.ppo\.reward_source: "):
    ppo_train.load_reward_scorer("no_such_module_xyz:f", "config.ppo.reward_source")
  with pytest.raises(ValueError, match=r"config\.ppo\.reward_source='tests\.test_rlvr:_bad'"):
    ppo_train.load_reward_scorer("tests.test_rlvr:_bad", "config.ppo.reward_source")


def _bad(prompts, responses):
  return [0.0, 1.0]  # two numbers for one response


def test_other_trainers_refuse_or_check_the_reward_source():
  from rlhf_jax.config_schema import ConfigError, from_config
  from rlhf_jax.train import overoptimization as oo
  from rlhf_jax.train import ppo as ppo_train

  with pytest.raises(ConfigError, match=r"config\.ppo\.reward_source='vader_sentiment': this task"):
    oo.check_config(from_config(oo.Config, {"ppo": {"reward_source": "vader_sentiment"}}))
  with pytest.raises(ConfigError) as e:
    ppo_train.check_config(from_config(ppo_train.Config, {"reward_source": "vader_sentiment"}))
  assert "config.reward_source='vader_sentiment' with config.value_init='reward'" in str(e.value)
  assert "config.reward_source='vader_sentiment': a scorer reads text" in str(e.value)
  ppo_train.check_config(
    from_config(
      ppo_train.Config,
      {
        "reward_source": "vader_sentiment",
        "policy": {"path": "some/dir"},
        "ppo": {"algorithm": "grpo", "group_size": 2},
      },
    )
  )


def test_rlvr_config_optimises_the_gold_scorer():
  import importlib.util

  path = pathlib.Path(__file__).resolve().parents[1] / "configs" / "grpo.py"
  spec = importlib.util.spec_from_file_location("_cfg_grpo_rlvr", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  from rlhf_jax import main as entry

  for variant in ("rlvr", "rlvr_smoke"):
    _, cfg = entry.validate(module.get_config(variant))
    assert cfg.ppo.reward_source == cfg.feedback.gold_scorer == "vader_sentiment"
    assert cfg.ppo.hparams.algorithm == "grpo"


def test_round_curve_labels_the_training_score_by_its_source():
  from rlhf_jax.config_schema import from_config
  from rlhf_jax.train import pipeline as pl

  h = {"iteration": 3, "kl": 0.5, "score": 1.5, "score_raw": 0.25}
  points = [
    pl._curve_point(from_config(pl.Config, {"ppo": {"reward_source": source}}), 1, h)
    for source in ("model", "vader_sentiment", "afinn_sentiment")
  ]
  base = {"round": 1, "iteration": 3, "kl": 0.5}
  assert points == [
    dict(base, proxy=1.5),  # the reward model's normalised score
    dict(base, gold=0.25),  # the gold scorer's own units
    dict(base, reward_source_raw=0.25),
  ]
