"""Across-seed summary: values per seed, mean and Student-t interval (hand-worked)."""

import json
import math

import pytest

from rlhf_jax.train import seeds


def test_t_interval_hand_worked():
  mean, lo, hi = seeds.t_interval([0.8, 0.9, 1.0])
  # sd = 0.1, half-width = t(0.975, 2) * 0.1 / sqrt(3), t(0.975, 2) = 4.302653
  half = 4.302653 * 0.1 / math.sqrt(3)
  assert mean == pytest.approx(0.9) and lo == pytest.approx(0.9 - half)
  assert hi == pytest.approx(0.9 + half)
  assert seeds.t_interval([0.5]) == (0.5, 0.5, 0.5)
  with pytest.raises(ValueError):
    seeds.t_interval([])


def test_seed_summary_table(tmp_path):
  runs = []
  for i, wr in enumerate((0.8, 0.9, 1.0)):
    w = tmp_path / f"s{i}"
    for r in (1, 2):
      (w / f"round_{r}").mkdir(parents=True)
      (w / f"round_{r}" / "eval.json").write_text(
        json.dumps({"win_rate": wr - 0.1 * (2 - r), "kl": 5.0 + i, "rm_accuracy": float("nan")})
      )
    runs.append(w)
  text = seeds.write_seed_summary(runs, tmp_path / "seeds.md")
  assert (tmp_path / "seeds.md").read_text() == text
  half = 4.303 * 0.1 / math.sqrt(3)
  assert (
    f"| 2 | win rate (gold) | 0.800 | 0.900 | 1.000 | 0.900 [{0.9 - half:.3f}, {0.9 + half:.3f}] | 0.800 |"
    in text
  )
  assert "| 1 | win rate (gold) | 0.700 | 0.800 | 0.900 |" in text
  assert "RM accuracy" not in text  # NaN in a run: not summarised
  assert "harmful" not in text  # the assistant task's keys: in no run here


def test_seed_summary_adds_the_assistant_rows_every_run_has(tmp_path):
  runs = []
  for i, change in enumerate((0.2, 0.4, 0.6)):
    w = tmp_path / f"a{i}"
    (w / "round_1").mkdir(parents=True)
    ev = {"win_rate": 0.5, "pass_harmful_change": change, "pass_benign_change": -change}
    if i:
      ev["false_premise_agreement_change"] = 0.1
    (w / "round_1" / "eval.json").write_text(json.dumps(ev))
    runs.append(w)
  text = seeds.write_seed_summary(runs, tmp_path / "seeds.md")
  half = 4.303 * 0.2 / math.sqrt(3)
  lo, hi = -0.4 - half, -0.4 + half
  assert (
    f"| 1 | benign look-alikes: pass-rate change | -0.200 | -0.400 | -0.600 | -0.400 [{lo:.3f}, {hi:.3f}] | -0.600 |"
    in text
  )
  assert "| 1 | harmful: pass-rate change | 0.200 | 0.400 | 0.600 |" in text
  assert "false-premise" not in text  # seed 0 lacks it
  with pytest.raises(FileNotFoundError, match="no finished round"):
    seeds.summarize([tmp_path / "missing"])
