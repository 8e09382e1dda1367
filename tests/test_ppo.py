"""PPO iteration: compiles once, skips non-finite updates, learns, shards, resumes."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlhf_jax import ppo, sharding
from rlhf_jax.models import Transformer, TransformerConfig, init_params
from rlhf_jax.train import common
from rlhf_jax.train import ppo as ppo_train

VOCAB = 24
BASE = TransformerConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=2, max_len=32)
HP = ppo.PPOHparams(
  response_len=6,
  num_minibatches=2,
  epochs=2,
  temperature=1.0,
  eos_id=0,
  pad_id=1,
  kl_target=1.0,
  kl_horizon=100.0,
)
B, P = 8, 5


def _models(shared_trunk=False):
  policy = Transformer(BASE.replace(head="both" if shared_trunk else "lm"))
  rm = Transformer(BASE.replace(head="scalar"))
  return policy, rm


def _setup(shared_trunk=False, seed=0):
  policy, rm = _models(shared_trunk)
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  pp = init_params(policy, k1)
  rp = init_params(rm, k2)
  # The value model starts from the reward model: a copy, since the state is donated.
  params = {"policy": pp} if shared_trunk else {"policy": pp, "value": jax.tree.map(jnp.copy, rp)}
  ref = jax.tree.map(jnp.copy, {k: v for k, v in pp.items() if k != "score"})
  frozen = ppo.PPOFrozen(ref, rp, jnp.float32(1.0), jnp.float32(0.0))
  rng = np.random.default_rng(seed)
  ids = rng.integers(2, VOCAB, (B, P)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[:3, :2] = 0
  ids[:3, :2] = HP.pad_id
  return policy, rm, params, frozen, ids, mask


def test_truncate_at_stop_hand_example():
  tokens = jnp.array([[5, 9, 7, 9, 4], [9, 3, 3, 3, 3], [2, 2, 2, 2, 2]])
  mask = jnp.array([[1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
  out, m, has = ppo.truncate_at_stop(tokens, mask, stop_token_id=9, min_len=3, pad_id=1)
  # Row 0: the first 9 at index >= 2 is index 3 -> keep 0..3. Row 1: its only 9 is too early.
  np.testing.assert_array_equal(m, [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
  np.testing.assert_array_equal(out[0], [5, 9, 7, 9, 1])
  np.testing.assert_array_equal(has, [True, False, False])


@pytest.mark.parametrize(
  "shared_trunk",
  [
    pytest.param(False, id="separate_value"),
    pytest.param(True, id="shared_trunk", marks=pytest.mark.slow),
  ],
)
def test_iteration_compiles_once_while_beta_changes(shared_trunk):
  policy, rm, params, frozen, ids, mask = _setup(shared_trunk)
  hp = dataclasses.replace(HP, shared_trunk=shared_trunk)
  opt = optax.adam(1e-3)
  state = ppo.init_ppo_state(params, opt, 0.1, jax.random.PRNGKey(0))
  it = jax.jit(
    ppo.make_ppo_iteration(policy, None if shared_trunk else rm, rm, opt, hp), donate_argnums=0
  )
  betas = []
  for i in range(3):
    state, m = it(state, frozen, ids, mask)
    betas.append(float(m["beta"]))
  assert it._cache_size() == 1
  assert len(set(betas)) == 3, betas  # the adaptive controller moved beta every iteration
  assert int(state.step) == 3
  for key in (
    "score",
    "kl",
    "entropy",
    "policy_clip_frac",
    "approx_kl",
    "value_explained_variance",
    "response_length",
    "value_loss",
  ):
    assert np.isfinite(float(m[key])), key
  assert int(m["skipped_updates"]) == 0


@pytest.mark.slow  # the default suite keeps a cheaper test of the same path
def test_nonfinite_reward_skips_every_update_bitwise():
  policy, rm, params, frozen, ids, mask = _setup()
  opt = optax.adam(1e-3)
  state = ppo.init_ppo_state(params, opt, 0.1, jax.random.PRNGKey(0))
  before = jax.tree.map(np.asarray, state.params)
  frozen = frozen._replace(reward_gain=jnp.float32(np.nan))
  it = jax.jit(ppo.make_ppo_iteration(policy, rm, rm, opt, HP))
  state, m = it(state, frozen, ids, mask)
  assert int(m["skipped_updates"]) == HP.epochs * HP.num_minibatches
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(before)):
    np.testing.assert_array_equal(np.asarray(a), b)


def test_ppo_increases_reward():
  policy, rm, params, frozen, ids, mask = _setup(seed=1)
  # Reward: +1 for every token 7 in the response (an RM whose score head reads a one-hot
  # feature would be contrived; instead use the real RM params but make the score large
  # for token 7 through the embedding).
  rp = jax.tree.map(np.array, frozen.reward_params)
  rp["score"]["kernel"][:] = 0.0
  rp["score"]["kernel"][0, 0] = 1.0
  rp["embed"]["embedding"][:, 0] = 0.0
  rp["embed"]["embedding"][7, 0] = 8.0
  frozen = frozen._replace(reward_params=jax.tree.map(jnp.asarray, rp))
  hp = dataclasses.replace(HP, adaptive_kl=False, epochs=4)
  opt = optax.adam(3e-3)
  state = ppo.init_ppo_state(params, opt, 0.01, jax.random.PRNGKey(0))
  it = jax.jit(ppo.make_ppo_iteration(policy, rm, rm, opt, hp), donate_argnums=0)
  scores = []
  for _ in range(25):
    state, m = it(state, frozen, ids, mask)
    scores.append(float(m["score"]))
  assert np.mean(scores[-5:]) > np.mean(scores[:5]) + 0.5, scores


@pytest.mark.slow  # the default suite keeps a cheaper test of the same path
def test_sharded_iteration_equals_single_device():
  policy, rm, params, frozen, ids, mask = _setup()
  opt = optax.adam(1e-3)
  it = ppo.make_ppo_iteration(policy, rm, rm, opt, HP)
  state = ppo.init_ppo_state(params, opt, 0.1, jax.random.PRNGKey(0))
  ref_state, ref_m = jax.jit(it)(state, frozen, ids, mask)

  mesh = sharding.make_mesh(2, 2, 2)
  init = lambda r: policy.init(r, jnp.zeros((1, 8), jnp.int32))["params"]
  pol_sh = sharding.params_shardings(init, jax.random.PRNGKey(0), mesh=mesh)
  init_rm = lambda r: rm.init(r, jnp.zeros((1, 8), jnp.int32))["params"]
  rm_sh = sharding.params_shardings(init_rm, jax.random.PRNGKey(0), mesh=mesh)
  sh_params = {
    "policy": sharding.shard_tree(params["policy"], pol_sh),
    "value": sharding.shard_tree(params["value"], rm_sh),
  }
  sh_state = ppo.init_ppo_state(sh_params, opt, 0.1, jax.random.PRNGKey(0))
  sh_frozen = frozen._replace(
    ref_params=sharding.shard_tree(frozen.ref_params, pol_sh),
    reward_params=sharding.shard_tree(frozen.reward_params, rm_sh),
  )
  batch = sharding.shard_batch({"ids": ids, "mask": mask}, mesh)
  out_state, out_m = jax.jit(it)(sh_state, sh_frozen, batch["ids"], batch["mask"])
  assert (
    out_state.params["policy"]["layers"]["attn"]["q"]["kernel"].sharding.spec
    == pol_sh["layers"]["attn"]["q"]["kernel"].spec
  )
  for key in ("score", "kl", "loss"):
    np.testing.assert_allclose(float(out_m[key]), float(ref_m[key]), rtol=2e-4, atol=2e-5)
  for a, b in zip(jax.tree.leaves(out_state.params), jax.tree.leaves(ref_state.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=2e-5)


def _train(workdir, stop_after=None, iterations=4, reward_gain=1.0, **kwargs):
  policy, rm, params, frozen, ids, mask = _setup()
  mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  return ppo_train.train_ppo(
    policy_model=policy,
    policy_params=params["policy"],
    value_model=rm,
    value_params=params["value"],
    reward_model=rm,
    reward_params=frozen.reward_params,
    ref_params=frozen.ref_params,
    prompt_ids=np.repeat(ids, 4, 0),
    prompt_mask=np.repeat(mask, 4, 0),
    hp=HP,
    optim_spec=common.OptimSpec(learning_rate=1e-3),
    batch_size=B,
    iterations=iterations,
    init_kl_coef=0.1,
    reward_gain=reward_gain,
    reward_bias=0.0,
    mesh=mesh,
    seed=3,
    workdir=str(workdir),
    checkpoint_every=1,
    stop_after=stop_after,
    **kwargs,
  )


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
  """One uninterrupted 4-iteration run, the reference of the resume tests."""
  return _train(tmp_path_factory.mktemp("straight"))


# Slow: the SIGTERM test below resumes the same run and checks params bit for bit and the
# iteration history against the straight run; this one adds beta and the score curve.
@pytest.mark.slow
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, straight_run):
  straight, hist = straight_run
  first, _ = _train(tmp_path / "resumed", stop_after=2)
  assert int(first.step) == 2
  resumed, hist2 = _train(tmp_path / "resumed")
  assert int(resumed.step) == 4
  for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(straight.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_array_equal(np.asarray(resumed.kl.beta), np.asarray(straight.kl.beta))
  assert hist2[-1]["score"] == hist[-1]["score"]
  # The curve of a resumed run holds every iteration once, the first attempt's included.
  assert [h["iteration"] for h in hist2] == [1, 2, 3, 4]
  assert [h["score"] for h in hist2] == [h["score"] for h in hist]


@pytest.mark.slow  # a 4-iteration trainer run twice (~70 s): in CI's -m ci stage
@pytest.mark.ci
def test_sigterm_saves_raises_preempted_and_resumes(tmp_path, straight_run):
  """SIGTERM ends the call with a checkpoint and Preempted (never a normal return that a
  caller would take for a finished run); the rerun continues the same trajectory."""
  import signal

  from rlhf_jax import checkpoint
  from rlhf_jax.train import metrics as metrics_lib

  straight, _ = straight_run
  real = metrics_lib.MetricWriter.write

  def write_then_sigterm(self, step, values):
    real(self, step, values)
    if step == 2:
      os.kill(os.getpid(), signal.SIGTERM)

  metrics_lib.MetricWriter.write = write_then_sigterm
  try:
    with pytest.raises(
      checkpoint.Preempted,
      match=r"ppo: stopped by a signal at iteration 2 "
      r"of 4; checkpoint saved",
    ):
      _train(tmp_path / "resumed")
  finally:
    metrics_lib.MetricWriter.write = real
    checkpoint.clear_preemption()
  assert sorted(os.listdir(tmp_path / "resumed" / "checkpoints"))[-1] == "2"
  resumed, hist = _train(tmp_path / "resumed")
  for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(straight.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert [h["iteration"] for h in hist] == [1, 2, 3, 4]


def test_diverging_run_stops_naming_the_iteration(tmp_path):
  """A reward that turns every update non-finite: the run stops at the first iteration whose
  skipped updates exceed max_skipped_fraction of the run's, instead of training on NaN."""
  updates = HP.epochs * HP.num_minibatches
  with pytest.raises(
    common.DivergenceError,
    match=rf"ppo: {updates} of the {updates} updates so far were skipped for a "
    rf"non-finite loss or gradient \(at iteration 1\), more than "
    rf"max_skipped_fraction=0.1 of the run's {4 * updates} updates",
  ):
    _train(tmp_path / "nan", reward_gain=float("nan"))
  assert not os.listdir(tmp_path / "nan" / "checkpoints")  # nothing saved from it
  # A lenient fraction lets the same run go on (params unchanged by skipped updates).
  state, _ = _train(
    tmp_path / "lenient", reward_gain=float("nan"), max_skipped_fraction=1.0, stop_after=1
  )
  assert int(state.skipped_updates) == updates


def test_corrupt_checkpoint_stops_the_resume_naming_the_step(tmp_path):
  """Flipped bytes in the newest checkpoint used to restore, skip every later update as
  non-finite and finish with NaN metrics; now the restore stops naming the step."""
  from rlhf_jax import checkpoint

  _train(tmp_path / "run", stop_after=2)
  step_dir = tmp_path / "run" / "checkpoints" / "2"
  files = [
    os.path.join(r, f)
    for r, _, fs in os.walk(step_dir / "state")
    for f in fs
    if os.sep + "d" + os.sep in os.path.join(r, f)
  ]
  big = max(files, key=os.path.getsize)
  data = bytearray(open(big, "rb").read())
  data[len(data) // 2] ^= 0x10
  open(big, "wb").write(bytes(data))
  with pytest.raises(
    checkpoint.CheckpointError,
    match=r"checkpoints/2: the checkpoint of "
    r"step 2 is corrupt",
  ):
    _train(tmp_path / "run")


@pytest.mark.slow  # minutes on 2 cores; run by `launchers/test.sh -m slow`
def test_shipped_tiny_config_runs_on_presets(tmp_path):
  """configs/ppo.py:tiny as written (model.path "" = a preset, no tokenizer to load)."""
  import importlib.util

  from rlhf_jax import main as entry

  spec = importlib.util.spec_from_file_location(
    "ppo_config", os.path.join(os.path.dirname(__file__), "..", "configs", "ppo.py")
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  cfg = module.get_config("tiny")
  cfg.iterations = 1
  result = entry.run_task(cfg, str(tmp_path))
  assert result["iteration"] == 1
  assert np.isfinite(result["loss"]) and result["skipped_updates"] == 0


# ----------------------------------------------------------------------------- review fixes


def test_value_model_starts_at_the_normalised_reward():
  """The value model's first predictions are gain * r + bias at every position, in particular
  at the last response token, where PPO's return is the normalised score."""
  _, rm = _models()
  rp = init_params(rm, jax.random.PRNGKey(3))
  rng = np.random.default_rng(0)
  ids = rng.integers(2, VOCAB, (B, P + 6)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[:2, :2] = 0  # left padding
  mask[2:4, P + 3 :] = 0  # short responses
  gain, bias = 1.7, -0.4
  value_model, vp = ppo.init_value_from_reward(rm, rp, gain, bias)
  assert value_model.cfg.scalar_bias and not rm.cfg.scalar_bias
  values_BT = value_model.apply({"params": vp}, ids, mask)
  scores_BT = rm.apply({"params": rp}, ids, mask)
  np.testing.assert_allclose(values_BT, gain * scores_BT + bias, rtol=1e-5, atol=1e-5)
  from rlhf_jax import reward as reward_lib

  last_values = reward_lib.score_sequences(value_model, vp, ids, mask)
  norm = gain * reward_lib.score_sequences(rm, rp, ids, mask) + bias
  np.testing.assert_allclose(last_values, norm, rtol=1e-5, atol=1e-5)
  # The reward params are not touched (no aliasing of the frozen reward model).
  assert "bias" not in rp["score"]
  _, zp = ppo.init_value_from_reward(rm, rp, gain, bias, "zero")
  np.testing.assert_array_equal(value_model.apply({"params": zp}, ids, mask), 0.0)
  with pytest.raises(ValueError, match="'reward' or 'zero'"):
    ppo.init_value_from_reward(rm, rp, gain, bias, "copy")


@pytest.mark.parametrize(
  "mode, with_stop, without_stop",
  [("none", 0.5, 0.5), ("replace", 0.5, -1.0), ("penalty", 0.5, 0.5 - 1.0)],
)
def test_missing_stop_penalises(mode, with_stop, without_stop):
  """TRL's sign: a positive penalty is subtracted; 'replace' sets the configured score."""
  from rlhf_jax import advantages as adv_lib

  hp = dataclasses.replace(HP, missing_stop=mode)
  scores = jnp.array([0.5, 0.5])
  mask = jnp.ones((2, 3), jnp.int32)
  zeros = jnp.zeros((2, 3))
  out = adv_lib.shape_rewards(
    scores,
    zeros,
    zeros,
    mask,
    0.0,
    has_stop_B=jnp.array([True, False]),
    missing_stop=hp.missing_stop,
    missing_stop_value=hp.missing_stop_value,
  )
  np.testing.assert_allclose(out.rewards[:, -1], [with_stop, without_stop], rtol=1e-6)
  assert out.rewards[1, -1] <= out.rewards[0, -1]


def test_missing_stop_penalty_must_be_positive():
  with pytest.raises(ValueError, match="missing_stop_penalty"):
    ppo.PPOHparams(missing_stop="penalty", missing_stop_penalty=-1.0)


@pytest.mark.parametrize("kw", [dict(top_k=5), dict(top_p=0.9)])
def test_ppo_refuses_truncated_sampling(kw):
  with pytest.raises(ValueError, match="biases both"):
    ppo.PPOHparams(**kw)


def test_bfloat16_policy_recomputes_old_logprobs():
  """In bfloat16 log π_old comes from a full forward pass (the sampler's cached log-probs
  round differently); in float32 the sampler's are reused unless asked otherwise."""
  assert HP.recomputes_old_logprobs("bfloat16")
  assert not HP.recomputes_old_logprobs("float32")
  assert dataclasses.replace(HP, recompute_old_logprobs=True).recomputes_old_logprobs("float32")
  assert not dataclasses.replace(HP, recompute_old_logprobs=False).recomputes_old_logprobs(
    "bfloat16"
  )
  policy = Transformer(BASE.replace(head="lm", dtype="bfloat16"))
  rm = Transformer(BASE.replace(head="scalar"))
  _, _, params, frozen, ids, mask = _setup()
  rollout_phase, _ = ppo.make_ppo_iteration(policy, rm, rm, optax.sgd(0.0), HP, phases=True)
  state = ppo.init_ppo_state(params, optax.sgd(0.0), 0.1, jax.random.PRNGKey(0))
  rollout, _, _ = jax.jit(rollout_phase)(state, frozen, ids, mask)
  p = ids.shape[1]
  logits = policy.apply(
    {"params": params["policy"]},
    rollout.seq_ids_BS,
    rollout.seq_mask_BS,
    head_slice=(p - 1, p + HP.response_len - 1),
  )
  from rlhf_jax import ops

  full = ops.token_logprobs(logits, rollout.seq_ids_BS[:, p:], HP.temperature)
  m = np.asarray(rollout.response_mask_BT) > 0
  np.testing.assert_allclose(np.asarray(rollout.logp_old_BT)[m], np.asarray(full)[m], atol=1e-6)
