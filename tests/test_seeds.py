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
  with pytest.raises(FileNotFoundError, match="no finished round"):
    seeds.summarize([tmp_path / "missing"])
