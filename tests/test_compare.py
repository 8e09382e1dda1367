"""The algorithm comparison (task "compare", configs/algorithms.py): its fairness checks
name the field, and the table and plot writer turns eval rows into README.md, a plot and
rows.json with intervals over seeds. The full comparison is run by hand (minutes to hours)."""

import json
import pathlib

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _rows():
  rng = np.random.default_rng(0)
  rows = []
  for i, name in enumerate(("ppo", "grpo", "rloo", "dpo")):
    for seed in (0, 1, 2):
      for rnd in (1, 2):
        rows.append(
          {
            "algorithm": name,
            "seed": seed,
            "round": rnd,
            "kl": 2.0 * rnd + i + rng.normal(0, 0.2),
            "gold_reward_mean": 0.1 * rnd + 0.05 * i + rng.normal(0, 0.02),
            "gold_reward_ref_mean": 0.05,
            "win_rate": 0.5 + 0.05 * rnd + rng.normal(0, 0.02),
            "rm_accuracy": 0.7,
            "n_labels": 256 * rnd,
            "ppo_seconds": 30.0 + i,
            "round_seconds": 60.0 + i,
            "run_seconds": 120.0 + i,
          }
        )
  return rows


def test_writer_makes_the_table_plot_and_rows(tmp_path):
  from rlhf_jax.train import compare
  from rlhf_jax.train.seeds import t_interval

  rows = _rows()
  budgets = {
    n: {"labels": 512, "policy_samples_per_round": 0 if n == "dpo" else 1536}
    for n in ("ppo", "grpo", "rloo", "dpo")
  }
  text = compare.write_comparison(rows, tmp_path / "out", budgets, "Synthetic")
  out = tmp_path / "out"
  assert (out / "README.md").read_text() == text
  assert (out / "algorithms.png").stat().st_size > 10_000
  assert json.loads((out / "rows.json").read_text()) == rows
  assert text.startswith("# Synthetic") and "4 algorithms × 3 seeds" in text
  # The last-round row of grpo: mean [95% t interval] of its three seeds' KL.
  last = [r["kl"] for r in rows if r["algorithm"] == "grpo" and r["round"] == 2]
  mean, lo, hi = t_interval(last)
  grpo_line = next(line for line in text.splitlines() if line.startswith("| grpo | 3 |"))
  assert f"{mean:.3f} [{lo:.3f}, {hi:.3f}]" in grpo_line and "1536" in grpo_line
  dpo_line = next(line for line in text.splitlines() if line.startswith("| dpo | 3 |"))
  assert "— (pairs)" in dpo_line
  assert text.count("| ppo | ") == 3  # one last-round row, two per-round rows
  assert grpo_line.endswith("| 121 [121, 121] |")  # the whole run's wall time


def test_shipped_config_validates_and_arms_compare_fairly(monkeypatch):
  from rlhf_jax import main as entry
  from rlhf_jax.train import compare

  monkeypatch.chdir(ROOT)
  cfg = entry.load_config_file("configs/algorithms.py:smoke")
  _, valid = entry.validate(cfg)
  budgets = {n: compare.budget(a) for n, a in compare.arm_configs(valid).items()}
  assert set(budgets) == {"ppo", "grpo", "rloo", "dpo"}
  assert {b["policy_samples_per_round"] for n, b in budgets.items() if n != "dpo"} == {96}
  assert budgets["dpo"]["policy_samples_per_round"] == 0
  assert len({b["labels"] for b in budgets.values()}) == 1


def test_unfair_or_broken_arms_are_refused_naming_the_field(monkeypatch):
  from rlhf_jax import main as entry
  from rlhf_jax.config_schema import ConfigError

  monkeypatch.chdir(ROOT)
  cfg = entry.load_config_file("configs/algorithms.py:smoke")
  cfg.arms = ("ppo=configs/sentiment.py:smoke", "grpo=configs/grpo.py")  # smoke vs full
  with pytest.raises(ConfigError, match=r"config\.arms: the RL arms differ in policy samples"):
    entry.validate(cfg)
  cfg.arms = ("ppo=configs/nope.py",)
  with pytest.raises(ConfigError, match=r"config\.arms\[0\]='ppo=configs/nope\.py'"):
    entry.validate(cfg)
  cfg.arms = ("configs/grpo.py",)
  with pytest.raises(ConfigError, match=r"expected 'name=path"):
    entry.validate(cfg)
  cfg.arms = ("ppo=configs/sentiment.py:smoke",)
  cfg.seeds = (1, 1)
  with pytest.raises(ConfigError, match=r"config\.seeds=\(1, 1\)"):
    entry.validate(cfg)
