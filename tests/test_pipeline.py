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
  from ml_collections import config_flags  # noqa: F401  (ml_collections is a dependency)
  import importlib.util

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
    for key in ("kl", "gold_reward_mean", "proxy_reward_mean", "perplexity_policy",
                "perplexity_ref", "response_length", "rm_accuracy", "rm_ece"):
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
  assert evals[1]["n_labels"] == 2 * evals[0]["n_labels"] == 256
  assert result["round"] == 2
  prefs = (workdir / "round_1" / "preferences.jsonl").read_text().splitlines()
  assert len(prefs) == 128 and json.loads(prefs[0])["label"] in ("a", "b", "tie")
  # The base model and each round's policy are Hugging Face checkpoints.
  for d in ("base/model", "round_1/policy", "round_2/policy"):
    assert (workdir / d / "config.json").exists() and (workdir / d / "tokenizer.json").exists()


def test_smoke_pipeline_resumes_without_redoing_work(smoke_run):
  workdir, result, first_seconds = smoke_run
  t0 = time.perf_counter()
  again = entry.run_task(_smoke_config(), str(workdir))
  assert again["win_rate"] == result["win_rate"] and again["kl"] == result["kl"]
  assert time.perf_counter() - t0 < 0.5 * first_seconds


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
    pl.pretrain_base(pl.BaseSpec(path=str(other)), workdir / "data", tmp_path / "unused",
                     tokenizer, mesh, 0)


def test_rm_pairs_per_prompt_checked_before_any_work():
  from rlhf_jax.train import pipeline as pl
  with pytest.raises(ValueError, match=r"eval\.rm_pairs_per_prompt=0"):
    pl.EvalSpec(rm_pairs_per_prompt=0)


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
  rows = [json.loads(l) for l in (tmp_path / "openai" / "round_1" / "ppo" / "metrics.jsonl")
          .read_text().splitlines()]
  assert all(math.isfinite(r["value_loss"]) for r in rows if "value_loss" in r)
  # The exported policy is a plain LM: the value head stays behind.
  config = json.loads((tmp_path / "openai" / "round_1" / "policy" / "config.json").read_text())
  assert not any("Classification" in a for a in config.get("architectures", []))
