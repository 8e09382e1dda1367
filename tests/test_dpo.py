"""DPO / IPO as pure functions and as a trainer: response log-probs match a float64 loop, the
step moves the implicit rewards the labels' way (and keeps the gap at 0 on all-tie data), the
reference is run once per training call, a preempted run resumes to the uninterrupted
params, and the settings refuse unknown combinations naming the field."""

import contextlib
import functools
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlhf_jax import checkpoint, losses, sharding
from rlhf_jax import dpo as dpo_lib
from rlhf_jax.models import Transformer, TransformerConfig, init_params
from rlhf_jax.train import common
from rlhf_jax.train import dpo as dpo_train

VOCAB = 24
CFG = TransformerConfig(vocab_size=VOCAB, d_model=16, n_layers=1, n_heads=2, max_len=32, head="lm")
P, N = 4, 5  # prompt and response lengths


def _pairs(n, label, seed=0):
  """``n`` pairs in the pipeline's layout: left-padded prompts, right-padded responses."""
  rng = np.random.default_rng(seed)
  p_ids = rng.integers(2, VOCAB, (n, P)).astype(np.int32)
  p_mask = np.ones_like(p_ids)
  p_mask[::3, :1] = 0
  p_ids[::3, :1] = 1
  out = {}
  for side, length in (("a", N), ("b", N - 2)):
    r_ids = rng.integers(2, VOCAB, (n, N)).astype(np.int32)
    r_mask = (np.arange(N)[None] < length).astype(np.int32).repeat(n, 0)
    r_ids[r_mask == 0] = 1
    out[f"ids_{side}"] = np.concatenate([p_ids, r_ids], 1)
    out[f"mask_{side}"] = np.concatenate([p_mask, r_mask], 1)
  out["label"] = np.broadcast_to(np.asarray(label, np.int32), (n,)).copy()
  return out


@functools.lru_cache(maxsize=1)
def _model():
  model = Transformer(CFG)
  return model, jax.jit(lambda k: init_params(model, k))(jax.random.PRNGKey(0))


def _train(hp, pairs, steps=25, lr=3e-3, start=None):
  """``steps`` full-batch DPO steps from ``start`` (default: the reference itself); returns
  the metrics of every step."""
  model, ref = _model()
  batch = dict(pairs)
  ref_a, ref_b = jax.jit(dpo_lib.make_pair_logprobs(model, N))(ref, batch)
  batch.update(ref_logp_a=ref_a, ref_logp_b=ref_b)
  opt = dpo_lib.dpo_optimizer(optax.adam(lr), hp)
  params = jax.tree.map(jnp.copy, ref if start is None else start)
  state = dpo_lib.init_dpo_state(params, opt, hp)
  step = jax.jit(dpo_lib.make_dpo_step(model, opt, hp, N), donate_argnums=0)
  history = []
  for _ in range(steps):
    state, metrics = step(state, batch)
    history.append(jax.device_get(metrics))
  return history


def test_sequence_logprobs_equal_a_float64_loop():
  model, params = _model()
  pairs = _pairs(6, losses.LABEL_A)
  got = jax.jit(lambda p, i, m: dpo_lib.sequence_logprobs(model, p, i, m, N))(
    params, pairs["ids_a"], pairs["mask_a"]
  )
  logits = jax.jit(lambda p, i, m: model.apply({"params": p}, i, m))(
    params, pairs["ids_a"], pairs["mask_a"]
  )
  logits = np.asarray(logits, np.float64)
  want = np.zeros(6)
  for i in range(6):
    for t in range(P, P + N):
      if pairs["mask_a"][i, t]:
        z = logits[i, t - 1]
        lse = np.log(np.sum(np.exp(z - z.max()))) + z.max()
        want[i] += z[pairs["ids_a"][i, t]] - lse
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_dpo_step_raises_the_preferred_responses_implicit_reward(loss_type):
  """Mixed a / b labels: the margin of the preferred over the rejected response grows from
  0, the preferred side's log-prob ratio rises, accuracy reaches 1, and the loss falls."""
  pairs = _pairs(8, [losses.LABEL_A, losses.LABEL_B] * 4)
  hist = _train(dpo_lib.DPOHparams(loss_type=loss_type, beta=0.5), pairs)
  assert abs(hist[0]["reward_margin"]) < 1e-6  # policy = reference at the first step
  assert hist[-1]["reward_margin"] > 0.5
  assert hist[-1]["chosen_reward"] > hist[-1]["rejected_reward"]
  assert hist[-1]["accuracy"] == 1.0
  assert hist[-1]["loss"] < hist[0]["loss"]
  assert hist[-1]["skipped_updates"] == 0


@pytest.mark.parametrize(
  "tie_model", [pytest.param("bradley_terry", marks=pytest.mark.slow), "rao_kupper"]
)
def test_all_tie_labels_keep_the_implicit_reward_gap_at_zero(tie_model):
  """All-tie data: from the reference the gap stays 0 (it is the loss's minimum), while the
  same pairs labelled 'a' open a gap; from a start where the gap is not 0, tie training
  closes it."""
  hp = dpo_lib.DPOHparams(beta=0.5, tie_model=tie_model, tie_param=3.0)
  ties = _pairs(8, losses.LABEL_TIE)
  decided = _pairs(8, losses.LABEL_A)
  tie_hist = _train(hp, ties, steps=15)
  a_hist = _train(hp, decided, steps=15)
  assert max(h["tie_reward_gap"] for h in tie_hist) < 1e-4
  assert a_hist[-1]["reward_margin"] > 0.5
  # A start that is not the reference: the tie loss pulls |r_a - r_b| back towards 0.
  model, ref = _model()
  noise = jax.tree.map(
    lambda x: x + 0.3 * jax.random.normal(jax.random.PRNGKey(3), x.shape, x.dtype), ref
  )
  moved = _train(hp, ties, steps=30, start=noise)
  assert moved[0]["tie_reward_gap"] > 0.1
  assert moved[-1]["tie_reward_gap"] < 0.25 * moved[0]["tie_reward_gap"]


def test_learned_tie_parameter_moves_and_is_reported():
  hp = dpo_lib.DPOHparams(
    beta=0.5, tie_model="davidson", tie_param=0.5, learn_tie_param=True, tie_learning_rate=0.1
  )
  hist = _train(hp, _pairs(8, losses.LABEL_TIE), steps=5)
  assert hist[0]["tie_param"] == pytest.approx(0.5, rel=1e-5)
  assert hist[-1]["tie_param"] > 0.5  # all ties: a likelier tie outcome


def test_non_finite_update_is_skipped():
  model, ref = _model()
  hp = dpo_lib.DPOHparams()
  batch = dict(_pairs(4, losses.LABEL_A))
  batch.update(ref_logp_a=np.full(4, np.nan, np.float32), ref_logp_b=np.zeros(4, np.float32))
  opt = dpo_lib.dpo_optimizer(optax.adam(1e-2), hp)
  state = dpo_lib.init_dpo_state(jax.tree.map(jnp.copy, ref), opt, hp)
  before = jax.tree.map(np.asarray, state.params)
  state, metrics = jax.jit(dpo_lib.make_dpo_step(model, opt, hp, N))(state, batch)
  assert int(metrics["skipped_updates"]) == 1 and np.isnan(float(metrics["grad_norm"]))
  jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, state.params))


@pytest.mark.parametrize(
  "kwargs,field",
  [
    ({"loss_type": "kto"}, "loss_type"),
    ({"beta": 0.0}, "beta"),
    ({"label_smoothing": 0.5}, "label_smoothing"),
    ({"tie_model": "thurstone"}, "tie_model"),
    ({"tie_model": "rao_kupper", "tie_param": 0.5}, "tie_param"),
    ({"loss_type": "ipo", "tie_model": "davidson"}, "tie_model"),
    ({"loss_type": "ipo", "label_smoothing": 0.1}, "label_smoothing"),
    ({"learn_tie_param": True}, "learn_tie_param"),
  ],
)
def test_hparams_refuse_unknown_combinations_naming_the_field(kwargs, field):
  with pytest.raises(ValueError, match=rf"DPOHparams\.{field}"):
    dpo_lib.DPOHparams(**kwargs)


# ----------------------------------------------------------------------------- trainer


def _trainer_args(tmp, **overrides):
  model, params = _model()
  args = dict(
    model=model,
    params=params,
    ref_params=params,
    pairs=_pairs(24, [losses.LABEL_A, losses.LABEL_B, losses.LABEL_TIE] * 8),
    hp=dpo_lib.DPOHparams(beta=0.5, tie_model="rao_kupper", tie_param=2.0),
    optim_spec=common.OptimSpec(name="adamw", learning_rate=3e-3),
    epochs=2,
    batch_size=8,
    response_len=N,
    mesh=sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1]),
    seed=1,
    workdir=str(tmp),
    log_every=2,
    checkpoint_every=3,
  )
  args.update(overrides)
  return args


def test_train_dpo_runs_the_reference_once_and_resumes_to_the_uninterrupted_params(
  tmp_path, monkeypatch
):
  """6 steps (2 epochs x 3 batches); the reference's log-probs are computed by one call per
  training call whatever the number of epochs; SIGTERM at step 3 saves and raises Preempted;
  the rerun ends with the uninterrupted run's params, bit for bit, and every logged step
  once. The caller's params (here also the reference) are left untouched."""
  calls = []
  real = dpo_train.reference_logprobs

  def counting(*args, **kwargs):
    calls.append(1)
    return real(*args, **kwargs)

  monkeypatch.setattr(dpo_train, "reference_logprobs", counting)
  args = _trainer_args(tmp_path / "straight")
  original = jax.tree.map(np.asarray, args["params"])
  want, summary = dpo_train.train_dpo(**args)
  assert len(calls) == 1
  assert summary["dpo_steps"] == 6 and summary["dpo_train_pairs"] == 24
  assert summary["dpo_skipped_updates"] == 0 and summary["dpo_reward_margin"] > 0
  jax.tree.map(np.testing.assert_array_equal, original, jax.tree.map(np.asarray, args["params"]))

  real_progress = common.progress  # the bar of the shared TrainLoop

  def progress(*a, **kw):
    bar = real_progress(*a, **kw)
    update = bar.update

    def update_then_kill(n=1, **kwargs):
      update(n, **kwargs)
      if bar.n == 3:
        os.kill(os.getpid(), signal.SIGTERM)

    bar.update = update_then_kill
    return bar

  args = _trainer_args(tmp_path / "preempted")
  with contextlib.ExitStack() as stack:
    mp = stack.enter_context(monkeypatch.context())
    mp.setattr(common, "progress", progress)
    with pytest.raises(checkpoint.Preempted, match="step 3 of 6"):
      dpo_train.train_dpo(**args)
  checkpoint.clear_preemption()
  got, _ = dpo_train.train_dpo(**args)
  assert len(calls) == 3
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(want), jax.device_get(got))
  from rlhf_jax.train.metrics import read_metrics

  steps = [r["step"] for r in read_metrics(tmp_path / "preempted" / "metrics.jsonl")]
  assert steps == [2, 4, 6]


def test_train_dpo_refuses_fewer_pairs_than_a_batch(tmp_path):
  with pytest.raises(ValueError, match="fewer than batch_size=32"):
    dpo_train.train_dpo(**_trainer_args(tmp_path, batch_size=32))
