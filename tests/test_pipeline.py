"""The whole RLHF loop on the smoke config: every stage runs, the report's numbers are
produced and sane, and a re-run resumes without redoing finished work."""

import json
import math
import os
import pathlib
import time

import pytest

from rlhf_jax import main as entry

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def _smoke_config():
  import importlib.util

  from ml_collections import config_flags  # noqa: F401  (ml_collections is a dependency)

  spec = importlib.util.spec_from_file_location("sentiment_cfg", CONFIGS / "sentiment.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config("smoke")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("smoke")
  t0 = time.perf_counter()
  result = entry.run_task(_smoke_config(), str(workdir))
  return workdir, result, time.perf_counter() - t0


@pytest.mark.slow  # end to end: in CI's -m ci stage, not the default suite (module fixture: ~4 min)
@pytest.mark.ci
def test_smoke_pipeline_report_numbers_are_sane(smoke_run):
  workdir, result, _ = smoke_run
  report = (workdir / "report.md").read_text()
  assert "Rounds" in report or "round" in report.lower()
  for png in ("reward_vs_sqrt_kl.png", "win_rate_by_round.png"):
    data = (workdir / png).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, png
  evals = [json.loads((workdir / f"round_{r}" / "eval.json").read_text()) for r in (1, 2)]
  for ev in evals:
    assert 0.0 <= ev["win_ci_low"] <= ev["win_rate"] <= ev["win_ci_high"] <= 1.0
    assert ev["wins"] + ev["ties"] + ev["losses"] == 64
    for key in (
      "kl",
      "gold_reward_mean",
      "proxy_reward_mean",
      "perplexity_policy",
      "perplexity_ref",
      "response_length",
      "rm_accuracy",
      "rm_ece",
    ):
      assert math.isfinite(ev[key]), key
    # Monte Carlo KL of the policy to the reference on its own samples: >= 0 up to noise.
    assert ev["kl"] > -0.05
    assert 0.0 <= ev["rm_accuracy"] <= 1.0
    # eval.rm_pairs_per_prompt (4) held-out pairs per evaluation prompt (64).
    assert ev["rm_eval_pairs"] == 4 * 64
    assert 1.0 <= ev["response_length"] <= 8.0
    assert 0.0 <= ev["label_agreement_with_gold"] <= 1.0
    # An independent judge no label came from (AFINN), and the degenerate-text fraction.
    assert ev["independent_win_rate"] == ev["afinn_sentiment_win_rate"]
    assert 0.0 <= ev["afinn_sentiment_win_ci_low"] <= ev["independent_win_rate"] <= 1.0
    assert 0.0 <= ev["degenerate_fraction"] <= 1.0
    assert 0.0 <= ev["degenerate_fraction_ref"] <= 1.0
    # The tie parameter is fitted and reported against the labels' tie rate.
    assert ev["rm_tie_param"] >= 1.0 and 0.0 <= ev["rm_train_tie_rate_implied"] <= 1.0
  assert "win rate, independent judge" in report and "afinn_sentiment" in report
  assert "### Details" in report
  assert "differ by less than 0.05" in report  # the tie convention is stated
  assert (workdir / "data" / "words.json").exists()
  # Labels accumulate across rounds.
  assert evals[1]["n_labels"] == 2 * evals[0]["n_labels"] == 768
  assert result["round"] == 2
  prefs = (workdir / "round_1" / "preferences.jsonl").read_text().splitlines()
  assert len(prefs) == 384 and json.loads(prefs[0])["label"] in ("a", "b", "tie")
  # The base model and each round's policy are Hugging Face checkpoints.
  for d in ("base/model", "round_1/policy", "round_2/policy"):
    assert (workdir / d / "config.json").exists() and (workdir / d / "tokenizer.json").exists()


@pytest.mark.slow  # end to end: in CI's -m ci stage, not the default suite (module fixture: ~4 min)
@pytest.mark.ci
def test_smoke_pipeline_resumes_without_redoing_work(smoke_run):
  workdir, result, first_seconds = smoke_run
  t0 = time.perf_counter()
  again = entry.run_task(_smoke_config(), str(workdir))
  assert again["win_rate"] == result["win_rate"] and again["kl"] == result["kl"]
  assert time.perf_counter() - t0 < 0.5 * first_seconds


@pytest.mark.slow  # end to end: in CI's -m ci stage, not the default suite (module fixture: ~4 min)
@pytest.mark.ci
def test_base_path_with_another_tokenizer_is_refused(smoke_run, tmp_path):
  """A base checkpoint whose tokenizer differs from the run's is an error naming base.path."""
  import shutil

  from rlhf_jax import data as data_lib
  from rlhf_jax import sharding
  from rlhf_jax.train import pipeline as pl

  workdir, _, _ = smoke_run
  tokenizer = data_lib.load_tokenizer(workdir / "data" / "tokenizer")
  mesh = sharding.make_mesh(1, -1, 1)
  same = pl.BaseSpec(path=str(workdir / "base" / "model"))
  model, _ = pl.pretrain_base(same, workdir / "data", tmp_path / "unused", tokenizer, mesh, 0)
  assert model.cfg.vocab_size == len(tokenizer)

  other = tmp_path / "other"
  shutil.copytree(workdir / "base" / "model", other)
  tok = json.loads((other / "tokenizer.json").read_text())
  vocab = tok["model"]["vocab"]
  a, b = [k for k in vocab if not k.startswith("<|")][:2]
  vocab[a], vocab[b] = vocab[b], vocab[a]
  (other / "tokenizer.json").write_text(json.dumps(tok))
  with pytest.raises(ValueError, match="base.path=.*different vocabulary"):
    pl.pretrain_base(
      pl.BaseSpec(path=str(other)), workdir / "data", tmp_path / "unused", tokenizer, mesh, 0
    )


def test_rm_pairs_per_prompt_checked_before_any_work():
  from rlhf_jax.train import pipeline as pl

  with pytest.raises(ValueError, match=r"eval\.rm_pairs_per_prompt=0"):
    pl.EvalSpec(rm_pairs_per_prompt=0)


@pytest.mark.slow  # minutes on 2 cores; run by `launchers/test.sh -m slow`
def test_openai_variant_runs_with_value_head_on_the_policy_trunk(smoke_run, tmp_path):
  """configs/sentiment.py:openai_smoke: shared trunk, '.' truncation, score replacement,
  whitened rewards — one round on the smoke run's base model."""
  workdir, _, _ = smoke_run
  import importlib.util

  spec = importlib.util.spec_from_file_location("sentiment_cfg2", CONFIGS / "sentiment.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  cfg = module.get_config("openai_smoke")
  cfg.rounds = 1
  cfg.base.path = str(workdir / "base" / "model")
  result = entry.run_task(cfg, str(tmp_path / "openai"))
  assert result["round"] == 1 and math.isfinite(result["kl"])
  rows = [
    json.loads(l)
    for l in (tmp_path / "openai" / "round_1" / "ppo" / "metrics.jsonl").read_text().splitlines()
  ]
  assert all(math.isfinite(r["value_loss"]) for r in rows if "value_loss" in r)
  # The exported policy is a plain LM: the value head stays behind.
  config = json.loads((tmp_path / "openai" / "round_1" / "policy" / "config.json").read_text())
  assert not any("Classification" in a for a in config.get("architectures", []))


def _fake_scorers(monkeypatch):
  import sys
  import types

  import numpy as np

  module = types.ModuleType("fake_feedback")
  module.nan_scorer = lambda prompts, responses: np.full(len(responses), np.nan)
  module.short_scorer = lambda prompts, responses: np.zeros(1)
  module.good_scorer = lambda prompts, responses: np.arange(len(responses), dtype=float)
  module.one_arg = lambda responses: np.zeros(len(responses))
  module.bad_judge = lambda prompts, a, b: [0.5] * (len(a) + 1)
  module.good_judge = lambda prompts, a, b: [0.5] * len(a)
  monkeypatch.setitem(sys.modules, "fake_feedback", module)


@pytest.mark.parametrize(
  "fields,message",
  [
    (
      {"gold_scorer": "fake_feedback:nan_scorer", "labeller_scorer": "fake_feedback:good_scorer"},
      r"config\.feedback\.gold_scorer='fake_feedback:nan_scorer': returned non-finite scores",
    ),
    (
      {"labeller_scorer": "fake_feedback:short_scorer"},
      r"config\.feedback\.labeller_scorer='fake_feedback:short_scorer': a scorer returns one "
      r"number per response; got shape \[1\] for 2 responses",
    ),
    (
      {"gold_scorer": "fake_feedback:one_arg"},
      r"config\.feedback\.gold_scorer='fake_feedback:one_arg': calling it as scorer\(prompts, "
      r"responses\) on a probe batch of 2 failed: TypeError",
    ),
    (
      {"gold_scorer": "os:getcwd"},
      r"config\.feedback\.gold_scorer='os:getcwd': calling it as scorer\(prompts, responses\)",
    ),
    (
      {"source": "fake_feedback:bad_judge"},
      r"config\.feedback\.source='fake_feedback:bad_judge': calling it as judge\(prompts, "
      r"responses_a, responses_b\) on a probe batch of 2 failed: .*3 verdicts for 2 pairs",
    ),
    (
      {"source": "fake_feedback:nope"},
      r"config\.feedback\.source: callable spec 'fake_feedback:nope'.*no attribute",
    ),
  ],
)
def test_custom_scorers_and_judges_are_probed_at_start(monkeypatch, fields, message):
  from rlhf_jax.train import pipeline as pl

  _fake_scorers(monkeypatch)
  with pytest.raises(ValueError, match=message):
    pl.load_scorers(pl.FeedbackSpec(**fields))
  ok = pl.load_scorers(
    pl.FeedbackSpec(gold_scorer="fake_feedback:good_scorer", source="fake_feedback:good_judge")
  )
  assert list(ok(["p"], ["r"])) == [0.0]


def test_pipeline_sizes_checked_before_any_work():
  from rlhf_jax.config_schema import ConfigError, from_config
  from rlhf_jax.train import pipeline as pl

  cfg = from_config(
    pl.Config,
    {
      "ppo": {"batch_size": 0, "iterations": -5},
      "reward": {"batch_size": -1},
      "rounds": 0,
      "feedback": {"pairs_per_round": 16},
      "base": {"optimizer": {"learning_rate": 0.0}},
    },
  )
  with pytest.raises(ConfigError) as e:
    pl.check_config(cfg)
  lines = str(e.value).splitlines()
  for expected in (
    "config.ppo.batch_size=0: expected >= 1",
    "config.ppo.iterations=-5: expected >= 1",
    "config.reward.batch_size=-1: expected >= 1",
    "config.rounds=0: expected >= 1",
    "config.base.optimizer.learning_rate=0.0: expected > 0",
  ):
    assert expected in lines, lines
  cfg = from_config(
    pl.Config,
    {"ppo": {"batch_size": 6}, "feedback": {"pairs_per_round": 8}, "reward": {"batch_size": 16}},
  )
  with pytest.raises(ConfigError) as e:
    pl.check_config(cfg)
  assert str(e.value).splitlines() == [
    "config.ppo.batch_size=6: must be divisible by config.ppo.hparams.num_minibatches=4",
    "config.reward.batch_size=16: larger than the 8 labelled pairs of round 1 "
    "(feedback.pairs_per_round)",
  ]
  pl.check_config(pl.Config())  # the defaults pass


# ----------------------------------------------------------------------------- preemption


def _sigterm_during(stack, monkeypatch, stage: str, at: int = 1):
  """Sends this process SIGTERM inside ``stage``: at step / iteration ``at`` of a training
  loop's progress bar (``desc`` = stage), or when the pipeline enters a stage function
  (``data``: packing the corpus, ``labels``: labelling pairs, ``evaluation``)."""
  import signal

  from rlhf_jax import data as data_lib
  from rlhf_jax.train import common as train_common
  from rlhf_jax.train import pipeline as pl
  from rlhf_jax.train import ppo as ppo_train

  mp = stack.enter_context(monkeypatch.context())
  fired = []

  def kill():
    if not fired:
      fired.append(stage)
      os.kill(os.getpid(), signal.SIGTERM)

  functions = {
    "data": (data_lib, "pack_texts"),
    "labels": (pl, "label_pairs"),
    "evaluation": (pl, "evaluate_policy"),
  }
  if stage in functions:
    module, name = functions[stage]
    real = getattr(module, name)

    def wrapped(*args, **kwargs):
      kill()
      return real(*args, **kwargs)

    mp.setattr(module, name, wrapped)
    return fired

  def wrap(real):
    def progress(*args, **kwargs):
      bar = real(*args, **kwargs)
      if kwargs.get("desc", args[1] if len(args) > 1 else "") == stage:
        update = bar.update

        def update_then_kill(n=1, **kwargs):
          update(n, **kwargs)
          if bar.n >= at:
            kill()

        bar.update = update_then_kill
      return bar

    return progress

  # The training loops (base model, reward model, PPO) share train.common.TrainLoop's bar.
  for module in (pl, train_common, ppo_train):
    mp.setattr(module, "progress", wrap(module.progress))
  return fired


def _preempt_and_resume(config, workdir, monkeypatch, stops):
  """Runs the pipeline once per (stage, at) in ``stops``, each attempt stopped by SIGTERM in
  that stage, then once to the end; returns the final result."""
  import contextlib

  from rlhf_jax import checkpoint

  for stage, at in stops:
    with contextlib.ExitStack() as stack:
      fired = _sigterm_during(stack, monkeypatch, stage, at)
      with pytest.raises(checkpoint.Preempted):
        entry.run_task(config, str(workdir))
    assert fired == [stage]
    assert not (workdir / "report.md").exists()  # nothing reported from half-trained stages
  return entry.run_task(config, str(workdir))


def _same_round(workdir, reference, r):
  """The round's policy is byte-identical and its report numbers equal (timings aside)."""
  a = (workdir / f"round_{r}" / "policy" / "model.safetensors").read_bytes()
  b = (reference / f"round_{r}" / "policy" / "model.safetensors").read_bytes()
  assert a == b, f"round {r}: policy differs from the uninterrupted run"
  timing = ("rm_seconds", "ppo_seconds", "round_seconds")
  ev = {
    k: v
    for k, v in json.loads((workdir / f"round_{r}" / "eval.json").read_text()).items()
    if k not in timing
  }
  ref = {
    k: v
    for k, v in json.loads((reference / f"round_{r}" / "eval.json").read_text()).items()
    if k not in timing
  }
  assert ev == ref
  done = json.loads((workdir / f"round_{r}" / "DONE").read_text())
  ref_done = json.loads((reference / f"round_{r}" / "DONE").read_text())
  assert done["curve"] == ref_done["curve"]  # the curve holds every iteration, once
  return ev


def _steps(path):
  from rlhf_jax.train.metrics import read_metrics

  return [r["step"] for r in read_metrics(path)]


@pytest.mark.slow  # the default suite keeps a cheaper test of the same path
def test_sigterm_in_training_stages_resumes_to_the_uninterrupted_result(
  smoke_run, tmp_path, monkeypatch
):
  """SIGTERM inside base pretraining, reward-model training and PPO (round 1 of a one-round
  run): each attempt saves, raises Preempted and marks nothing done; the last rerun ends
  with the uninterrupted run's round-1 policy (byte-identical), numbers and curve."""
  reference, _, _ = smoke_run
  config = _smoke_config()
  config.rounds = 1
  workdir = tmp_path / "preempted"
  stops = [("pretrain base", 25), ("reward model round 1", 4), ("ppo round 1", 2)]
  result = _preempt_and_resume(config, workdir, monkeypatch, stops)
  ev = _same_round(workdir, reference, 1)
  assert result["win_rate"] == ev["win_rate"] and ev["ppo_iterations"] == 3
  # Metrics survive the resumes: every logged step once.
  assert _steps(workdir / "base") == [50, 60]
  assert _steps(workdir / "round_1" / "ppo") == [1, 2, 3]
  assert _steps(workdir / "round_1" / "reward") == [8, 8]  # training row, evaluation row


@pytest.mark.slow
def test_sigterm_in_every_stage_of_both_rounds(smoke_run, tmp_path, monkeypatch):
  """Every stage — data, base pretraining, pairs and labels, reward model, PPO, evaluation —
  of the two-round smoke run, then round 2's reward model and PPO."""
  reference, reference_result, _ = smoke_run
  workdir = tmp_path / "preempted"
  stops = [
    ("data", 1),
    ("pretrain base", 10),
    ("labels", 1),
    ("reward model round 1", 2),
    ("ppo round 1", 1),
    ("evaluation", 1),
    ("reward model round 2", 12),
    ("ppo round 2", 2),
  ]
  result = _preempt_and_resume(_smoke_config(), workdir, monkeypatch, stops)
  for r in (1, 2):
    _same_round(workdir, reference, r)
  assert result["win_rate"] == reference_result["win_rate"]
  assert result["kl"] == reference_result["kl"]


@pytest.mark.slow  # end to end: in CI's -m ci stage, not the default suite (module fixture: ~4 min)
@pytest.mark.ci
def test_rerun_with_another_seed_is_refused_listing_the_fields(smoke_run):
  """A finished workdir rerun with --config.seed=1 used to exit 0, overwrite config.json and
  rewrite the report from seed 0's results."""
  workdir, _, _ = smoke_run
  before = (workdir / "config.json").read_text()
  config = _smoke_config()
  config.seed = 1
  config.base.preset = "gpt2-small"
  config.eval.num_samples_in_report = 2  # may change: it cannot change results
  with pytest.raises(entry.UsageError) as e:
    entry.run_task(config, str(workdir))
  message = str(e.value)
  assert "seed: 0 -> 1" in message and "base.preset: 'tiny' -> 'gpt2-small'" in message
  assert "num_samples_in_report" not in message and "pass a new --workdir" in message
  assert (workdir / "config.json").read_text() == before


@pytest.mark.parametrize(
  "algorithm,shared_trunk,value",
  [
    ("ppo", False, "separate"),
    ("ppo", True, "on the trunk"),
    ("grpo", False, None),
    ("rloo", False, None),
    ("reinforce_pp", False, None),
    ("dr_grpo", False, None),
  ],
)
def test_policy_stage_builds_a_value_model_only_for_algorithms_with_a_critic(
  algorithm, shared_trunk, value
):
  """One policy stage for every algorithm: the value model is chosen from the hparams, never
  by a branch in the pipeline's loop."""
  import dataclasses

  import jax

  from rlhf_jax import ppo as ppo_lib
  from rlhf_jax.models import init_params
  from rlhf_jax.train import common
  from rlhf_jax.train import pipeline as pl

  models = pl.Models.from_base(common.preset_config("tiny", 64, head="lm"))
  policy = init_params(models.lm, jax.random.PRNGKey(0))
  rm = init_params(models.scalar, jax.random.PRNGKey(1))
  hp = dataclasses.replace(
    ppo_lib.PPOHparams(), algorithm=algorithm, shared_trunk=shared_trunk, group_size=2
  )
  policy_model, start, value_model, value_params = pl.policy_and_value(
    models, hp, policy, rm, 2.0, 0.5, "reward"
  )
  if value == "separate":
    assert policy_model is models.lm and start is policy
    assert value_model is not None and value_params is not None
  elif value == "on the trunk":
    assert policy_model is models.both and value_model is None and value_params is None
    assert start["score"]["kernel"].shape == (models.both.cfg.d_model, 1)
    assert not float(abs(start["score"]["kernel"]).sum())
  else:
    assert hp.critic_free and policy_model is models.lm and start is policy
    assert value_model is None and value_params is None


class _EchoSampler:
  """Returns the prompt ids as the 'response', tagged by the sampling seed."""

  def sample(self, params, ids, mask, seed, temperature, desc=""):
    return ids + 1000 * seed, mask


def test_collect_pairs_draws_every_prompt_before_repeating_one():
  import numpy as np

  from rlhf_jax.train import pipeline as pl

  n = 10
  ids = np.arange(n, dtype=np.int32)[:, None].repeat(3, 1)
  prompts = pl.Prompts([f"p{i}" for i in range(n)], ids, np.ones_like(ids), [], ids[:0], ids[:0])
  # At most n pairs: n distinct prompts, the draw of rng.choice without replacement.
  got = pl.collect_pairs(_EchoSampler(), None, prompts, 7, 1.0, seed=3, round_idx=1)
  want = np.random.default_rng([3, 1]).choice(n, 7, replace=False)
  np.testing.assert_array_equal(got.rows, want)
  np.testing.assert_array_equal(got.tokens_a[:, 0], want + 1000 * (3 * 31 + 2))
  np.testing.assert_array_equal(got.tokens_b[:, 0], want + 1000 * (3 * 31 + 3))
  # 25 pairs on 10 prompts: every prompt twice in the first 20, then 5 distinct ones.
  got = pl.collect_pairs(_EchoSampler(), None, prompts, 25, 1.0, seed=3, round_idx=1)
  assert len(got.rows) == 25
  np.testing.assert_array_equal(np.sort(got.rows[:10]), np.arange(n))
  np.testing.assert_array_equal(np.sort(got.rows[10:20]), np.arange(n))
  assert len(set(got.rows[20:].tolist())) == 5
  np.testing.assert_array_equal(got.tokens_a[:, 0] % 1000, got.rows)


def test_collect_pairs_with_k_responses_labels_every_pair_of_a_prompt():
  """K = 3: 12 pairs are 4 prompts x 3 pairs, in groups; each response is a fresh sample
  (seed base + r) and the pairs of a group compare (0,1), (0,2), (1,2); K = 2 keeps the
  seeds and order pairs always had; a count that splits a group is refused."""
  import numpy as np

  from rlhf_jax import reward
  from rlhf_jax.train import pipeline as pl

  n = 10
  ids = np.arange(n, dtype=np.int32)[:, None].repeat(3, 1)
  prompts = pl.Prompts([f"p{i}" for i in range(n)], ids, np.ones_like(ids), [], ids[:0], ids[:0])
  got = pl.collect_pairs(
    _EchoSampler(), None, prompts, 12, 1.0, seed=3, round_idx=1, responses_per_prompt=3
  )
  chosen = np.random.default_rng([3, 1]).choice(n, 4, replace=False)
  np.testing.assert_array_equal(got.rows, np.repeat(chosen, 3))
  base = 3 * 31 + 3 * 1
  seed_a = (got.tokens_a[:, 0] - got.rows) // 1000 - base
  seed_b = (got.tokens_b[:, 0] - got.rows) // 1000 - base
  assert seed_a.tolist() == [0, 0, 1] * 4 and seed_b.tolist() == [1, 2, 2] * 4
  arrays = {
    "ids_a": got.tokens_a,
    "mask_a": got.mask_a,
    "ids_b": got.tokens_b,
    "mask_b": got.mask_b,
    "label": np.zeros(12, np.int32),
  }
  assert reward.group_pairs(arrays, 3)["ids"].shape == (4, 3, 3)
  two = pl.collect_pairs(
    _EchoSampler(), None, prompts, 7, 1.0, seed=3, round_idx=1, responses_per_prompt=2
  )
  np.testing.assert_array_equal(two.tokens_b[:, 0] - two.rows, 1000 * (3 * 31 + 3))
  with np.testing.assert_raises_regex(ValueError, "not a multiple of 3"):
    pl.collect_pairs(
      _EchoSampler(), None, prompts, 10, 1.0, seed=3, round_idx=1, responses_per_prompt=3
    )


@pytest.mark.parametrize(
  "changes, message",
  [
    ({"feedback.responses_per_prompt": 1}, "config.feedback.responses_per_prompt=1: expected >= 2"),
    (
      {"feedback.responses_per_prompt": 4, "feedback.pairs_per_round": 100},
      "config.feedback.pairs_per_round=100: not a multiple of the 6 pairs",
    ),
    (
      {"feedback.responses_per_prompt": 3, "reward.batch_size": 16},
      "config.reward.batch_size=16: a step scores 2 x batch_size sequences",
    ),
    (
      {"feedback.responses_per_prompt": 4, "ppo.hparams.algorithm": "dpo"},
      "config.feedback.responses_per_prompt=4: DPO / IPO train on pairs",
    ),
  ],
)
def test_k_wise_comparison_config_errors_name_the_field(changes, message):
  from rlhf_jax import config_schema
  from rlhf_jax.train import pipeline as pl

  cfg = pl.Config()
  for key, value in changes.items():
    cfg = _replace(cfg, key, value)
  with pytest.raises(config_schema.ConfigError, match=message.replace("(", r"\(")):
    pl.check_config(cfg)


def _replace(obj, dotted, value):
  import dataclasses

  head, _, rest = dotted.partition(".")
  if not rest:
    return dataclasses.replace(obj, **{head: value})
  return dataclasses.replace(obj, **{head: _replace(getattr(obj, head), rest, value)})


def test_sampler_logprobs_at_several_temperatures_match_one_at_a_time():
  """``Sampler.logprobs_at``: one forward pass, the log-probs at each temperature equal to
  ``ops.token_logprobs`` on the full forward's logits (and to ``logprobs`` at that one)."""
  import jax
  import numpy as np

  from rlhf_jax import ops
  from rlhf_jax import ppo as ppo_lib
  from rlhf_jax.models import Transformer, TransformerConfig, init_params
  from rlhf_jax.train import common
  from rlhf_jax.train import pipeline as pl

  cfg = TransformerConfig(vocab_size=32, d_model=32, n_layers=1, n_heads=2, max_len=16)
  models = pl.Models.from_base(cfg)
  params = init_params(Transformer(cfg), jax.random.PRNGKey(0))
  hp = ppo_lib.PPOHparams(response_len=4)
  sampler = pl.Sampler(models, hp, 8, common.build_mesh(common.MeshSpec()))
  rng = np.random.default_rng(0)
  ids = rng.integers(0, 32, (12, 10)).astype(np.int32)  # 12 rows: two batches, one padded
  mask = np.ones_like(ids)
  mask[:, :2] = 0
  tokens = ids[:, -4:]
  got = sampler.logprobs_at(params, ids, mask, tokens, (0.7, 1.0))
  logits = Transformer(cfg).apply({"params": params}, ids, mask)[:, 5:9]
  for temp, g in zip((0.7, 1.0), got):
    want = np.asarray(ops.token_logprobs(logits, tokens, temp))
    np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sampler.logprobs(params, ids, mask, tokens, temp), g, atol=1e-6)
