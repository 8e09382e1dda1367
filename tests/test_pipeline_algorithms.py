"""The policy stage's algorithm field across the pipeline: DPO / IPO and the critic-free RL
algorithms are selected by ``ppo.hparams.algorithm``, their settings are checked at start-up
naming the field, and a smoke round of configs/dpo.py and configs/grpo.py runs end to end."""

import importlib.util
import json
import math
import pathlib

import optax
import pytest

from rlhf_jax import main as entry

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def _config(name, variant):
  spec = importlib.util.spec_from_file_location(f"_cfg_{name}", CONFIGS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


def _with_algorithm(cfg, algorithm):
  import dataclasses

  hp = dataclasses.replace(cfg.ppo.hparams, algorithm=algorithm)
  return dataclasses.replace(cfg, ppo=dataclasses.replace(cfg.ppo, hparams=hp))


def _pipeline_cfg(ppo_hparams=None, **sections):
  from rlhf_jax.config_schema import from_config
  from rlhf_jax.train import pipeline as pl

  raw = {"ppo": {"hparams": ppo_hparams or {}}, **sections}
  return pl, from_config(pl.Config, raw)


@pytest.mark.parametrize(
  "hparams,dpo,expected",
  [
    (
      {"algorithm": "ipo"},
      {"tie_model": "davidson"},
      "config.dpo.tie_model='davidson' with config.ppo.hparams.algorithm='ipo'",
    ),
    (
      {"algorithm": "ipo"},
      {"label_smoothing": 0.1},
      "config.dpo.label_smoothing=0.1 with config.ppo.hparams.algorithm='ipo'",
    ),
    ({"algorithm": "dpo"}, {"beta": -1.0}, "config.dpo.beta=-1.0: expected a finite value > 0"),
    ({"algorithm": "dpo"}, {"epochs": 0}, "config.dpo.epochs=0: expected >= 1"),
    (
      {"algorithm": "dpo"},
      {"optimizer": {"learning_rate": 0.0}},
      "config.dpo.optimizer.learning_rate=0.0: expected > 0",
    ),
    (
      {"algorithm": "dpo"},
      {"batch_size": 64},
      "config.dpo.batch_size=64: larger than the 32 pairs labelled each round",
    ),
  ],
)
def test_pipeline_check_config_names_the_dpo_field(hparams, dpo, expected):
  from rlhf_jax.config_schema import ConfigError

  pl, cfg = _pipeline_cfg(
    hparams, dpo=dpo, feedback={"pairs_per_round": 32}, reward={"batch_size": 16}
  )
  with pytest.raises(ConfigError) as e:
    pl.check_config(cfg)
  assert any(line.startswith(expected) for line in str(e.value).splitlines()), str(e.value)
  # The same dpo section under an RL algorithm is unused, hence not checked.
  pl.check_config(_with_algorithm(cfg, "ppo"))


@pytest.mark.parametrize(
  "hparams,expected",
  [
    ({"algorithm": "dpo", "shared_trunk": True}, r"PPOHparams\.shared_trunk=True with .*'dpo'"),
    ({"algorithm": "ipo", "group_size": 4}, r"PPOHparams\.group_size=4 with .*'ipo'"),
    ({"algorithm": "rloo", "group_size": 1}, r"PPOHparams\.group_size=1 with .*'rloo'"),
    ({"algorithm": "kto"}, r"PPOHparams\.algorithm='kto'; expected one of .*'dpo', 'ipo'"),
  ],
)
def test_unknown_algorithm_combinations_are_refused_naming_the_field(hparams, expected):
  from rlhf_jax.config_schema import ConfigError

  with pytest.raises(ConfigError, match=r"config\.ppo\.hparams: " + expected):
    _pipeline_cfg(hparams)


def test_dpo_is_refused_where_the_policy_learns_from_rollouts():
  """The PPO trainer, the over-optimisation study and the PPO iteration itself refuse the
  preference algorithms, naming the field."""
  from rlhf_jax import ppo as ppo_lib
  from rlhf_jax.config_schema import ConfigError, from_config
  from rlhf_jax.train import overoptimization as oo
  from rlhf_jax.train import ppo as ppo_train

  with pytest.raises(ConfigError, match=r"config\.ppo\.algorithm='dpo': this trainer"):
    ppo_train.check_config(from_config(ppo_train.Config, {"ppo": {"algorithm": "dpo"}}))
  with pytest.raises(ConfigError, match=r"config\.ppo\.hparams\.algorithm='ipo': this task"):
    oo.check_config(from_config(oo.Config, {"ppo": {"hparams": {"algorithm": "ipo"}}}))
  from rlhf_jax.models import Transformer
  from rlhf_jax.train import common

  model = Transformer(common.preset_config("tiny", 64, head="lm"))
  with pytest.raises(ValueError, match="trains from preference pairs"):
    ppo_lib.make_ppo_iteration(
      model, None, model, optax.adam(1e-3), ppo_lib.PPOHparams(algorithm="dpo")
    )


# ----------------------------------------------------------------------------- smoke rounds


def _metrics(path):
  return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def dpo_round(tmp_path_factory):
  """One round of configs/dpo.py:smoke (data, base model, labels, reward model, DPO)."""
  workdir = tmp_path_factory.mktemp("dpo")
  cfg = _config("dpo", "smoke")
  cfg.rounds = 1
  return workdir, entry.run_task(cfg, str(workdir))


@pytest.mark.slow
def test_dpo_smoke_round_trains_on_the_rounds_pairs_and_reports_win_rate(dpo_round):
  """The policy stage is DPO on round 1's 128 labelled pairs (2 epochs of 8 batches of 16),
  with Rao-Kupper ties; the round's evaluation (win rate, KL, reward-model accuracy, proxy
  reward) is the RL algorithms'."""
  workdir, result = dpo_round
  assert result["round"] == 1
  assert 0.0 <= result["win_ci_low"] <= result["win_rate"] <= result["win_ci_high"] <= 1.0
  for key in ("kl", "gold_reward_mean", "proxy_reward_mean", "rm_accuracy", "perplexity_ratio"):
    assert math.isfinite(result[key]), key
  assert result["beta_final"] == pytest.approx(0.1)  # DPO's β
  rows = _metrics(workdir / "round_1" / "ppo" / "metrics.jsonl")
  assert [r["step"] for r in rows] == [16]
  last = rows[-1]
  assert last["skipped_updates"] == 0 and math.isfinite(last["loss"])
  assert last["tie_param"] != pytest.approx(1.5)  # θ is learned (configs/dpo.py)
  for key in ("reward_margin", "chosen_reward", "rejected_reward", "tie_reward_gap"):
    assert math.isfinite(last[key]), key
  assert (workdir / "round_1" / "policy" / "model.safetensors").exists()
  assert (workdir / "report.md").exists()


@pytest.mark.slow
def test_grpo_smoke_round_runs_critic_free_from_the_same_base(dpo_round, tmp_path):
  """configs/grpo.py:smoke, one round on the DPO run's base model: 8 prompts x 4 samples an
  iteration, the KL as a k3 loss term, no value model."""
  base_dir, _ = dpo_round
  cfg = _config("grpo", "smoke")
  cfg.rounds = 1
  cfg.base.path = str(base_dir / "base" / "model")
  result = entry.run_task(cfg, str(tmp_path / "grpo"))
  assert result["round"] == 1 and math.isfinite(result["kl"])
  assert 0.0 <= result["win_rate"] <= 1.0
  rows = _metrics(tmp_path / "grpo" / "round_1" / "ppo" / "metrics.jsonl")
  assert [r["step"] for r in rows] == [1, 2, 3]
  for r in rows:
    assert math.isfinite(r["group_score_std"]) and math.isfinite(r["kl_loss"])
    assert "value_loss" not in r
