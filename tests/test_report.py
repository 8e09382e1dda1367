"""report.md and PNG plots from plain round dicts; over-optimisation report with fits."""

import math
import os
import struct

import numpy as np
import pytest

from rlhf_jax import evaluation as E
from rlhf_jax.train import report as R

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path, min_bytes=5000):
  data = open(path, "rb").read()
  assert data[:8] == PNG_MAGIC, path
  assert len(data) > min_bytes, (path, len(data))
  assert data[12:16] == b"IHDR"
  width, height = struct.unpack(">II", data[16:24])
  assert width >= 400 and height >= 300, (path, width, height)


def _rounds():
  rounds = []
  for r in (1, 2):
    rounds.append(
      dict(
        round=r,
        n_labels=500 * r,
        win_rate=0.5 + 0.1 * r,
        win_ci_low=0.45 + 0.1 * r,
        win_ci_high=0.55 + 0.1 * r,
        gold_reward_mean=0.25 * r,
        gold_reward_ref_mean=0.0,
        proxy_reward_mean=np.float32(1.5 * r),
        kl=np.float64(2.0 * r),
        rm_accuracy=0.7,
        rm_tie_accuracy=0.6,
        rm_ece=0.05,
        response_length=30,
        perplexity_policy=6.5,
        perplexity_ref=5.0,
        ppo_seconds=120.0,
        rm_kappa=0.42,
        independent_win_rate=0.5 + 0.05 * r,
        degenerate_fraction=0.1 * r,
        perplexity_ratio=1.3,
      )
    )
  return rounds


def _no_temp_files(workdir):
  assert not [f for f in os.listdir(workdir) if ".tmp-" in f]


def test_round_report_tables_plots_and_escaping(tmp_path):
  samples = [
    dict(
      prompt="Rate | this\nmovie",
      before="meh <eos>",
      after="great & fun",
      gold_before=-0.5,
      gold_after=0.75,
    )
  ]
  path = R.write_round_report(
    tmp_path / "run",
    _rounds(),
    samples,
    {"model": {"width": 64}, "lr": 1e-5},
    {"sft": 12.4, "total": 3725.0},
    {"win_rate": 0.65, "kl": "<= 3", "total": ("<", 3600), "rm_ece": "< 0.1"},
  )
  workdir = tmp_path / "run"
  assert path == os.path.join(workdir, "report.md")
  text = open(path, encoding="utf-8").read()

  # Headline table: the eight columns that matter; every other key in the details table.
  assert (
    "| round | labels | win rate [CI] | win rate, independent judge | KL | RM acc "
    "| degenerate | ppl ratio |"
  ) in text
  assert "| 1 | 500 | 0.600 [0.550, 0.650] | 0.55 | 2 | 0.7 | 0.1 | 1.3 |" in text
  assert "| 2 | 1000 | 0.700 [0.650, 0.750] | 0.6 | 4 | 0.7 | 0.2 | 1.3 |" in text
  assert "| metric | round 1 | round 2 |" in text
  assert "| gold_reward_mean | 0.25 | 0.5 |" in text
  assert "| rm_kappa | 0.42 | 0.42 |" in text
  assert "| win_ci_low |" not in text

  # Targets from the last round (and timings), with yes / no.
  assert "2 of 4 met" in text
  assert "| win_rate | >= 0.65 | 0.7 | yes |" in text
  assert "| kl | <= 3 | 4 | no |" in text
  assert "| total | < 3600 | 3725 | no |" in text
  assert "| rm_ece | < 0.1 | 0.05 | yes |" in text

  # Timings, configuration (flattened), samples escaped.
  assert "| sft | 12.4 | 0:00:12 |" in text
  assert "| total | 3725.0 | 1:02:05 |" in text
  assert "| model.width | 64 |" in text and "| lr | 1e-05 |" in text
  assert (
    "| 0 | Rate \\| this<br>movie | meh &lt;eos&gt; | great &amp; fun | -0.5 | 0.75 | +1.25 |"
  ) in text

  for name in (
    "reward_vs_sqrt_kl.png",
    "win_rate_by_round.png",
    "kl_by_round.png",
    "reward_model_by_round.png",
  ):
    assert f"]({name})" in text
    _assert_png(workdir / name)
  _no_temp_files(workdir)


def test_missing_and_nan_values_render_dash_and_skip_plots(tmp_path):
  rounds = [
    {"round": 1, "win_rate": 0.55, "kl": float("nan")},
    {"round": 2, "win_rate": 0.6, "win_ci_low": 0.5, "win_ci_high": 0.7, "rm_accuracy": None},
  ]
  samples = [{"prompt": "p", "after": "x"}]
  path = R.write_round_report(
    tmp_path, rounds, samples, {}, {"rollout": None}, {"gold_reward_mean": 0.1}
  )
  text = open(path, encoding="utf-8").read()
  assert "| 1 | – | 0.550 | – | – | – | – | – |" in text
  assert "| metric | round 1 | round 2 |" in text
  assert "| 2 | – | 0.600 [0.500, 0.700] | – |" in text
  assert "| 0 | p | – | x | – | – | – |" in text
  assert "| gold_reward_mean | >= 0.1 | – | no |" in text and "0 of 1 met" in text
  assert "| rollout | – | – |" in text
  assert "No configuration summary." in text
  # Only the win-rate plot has data.
  assert os.path.exists(tmp_path / "win_rate_by_round.png")
  for name in ("reward_vs_sqrt_kl.png", "kl_by_round.png", "reward_model_by_round.png"):
    assert not os.path.exists(tmp_path / name) and name not in text


def test_empty_report_and_atomic_rewrite(tmp_path):
  path = R.write_round_report(tmp_path, [], [], None, None, None)
  text = open(path, encoding="utf-8").read()
  assert "No rounds yet." in text and "No samples." in text and "## Plots" not in text
  assert [f for f in os.listdir(tmp_path)] == ["report.md"]
  # Re-writing after the next round replaces the file in place.
  R.write_round_report(tmp_path, _rounds()[:1], [], None, {"ppo": 1.0})
  text = open(path, encoding="utf-8").read()
  assert "1 round(s)" in text and "| 1 | 500 |" in text and "No rounds yet." not in text
  _no_temp_files(tmp_path)


def test_curve_points_draw_reward_plot(tmp_path):
  curve = [
    {"round": 1, "kl": k, "gold": math.sqrt(k) * (1 - 0.3 * math.sqrt(k)), "proxy": math.sqrt(k)}
    for k in (0.1, 0.5, 1.0, 2.0, 4.0)
  ]
  rounds = [{"round": 1, "kl": 4.0, "gold_reward_mean": 0.8, "proxy_reward_mean": 2.0}]
  path = R.write_round_report(tmp_path, rounds, curve=curve)
  assert "](reward_vs_sqrt_kl.png)" in open(path, encoding="utf-8").read()
  _assert_png(tmp_path / "reward_vs_sqrt_kl.png")


def test_bad_target_spec_names_the_target(tmp_path):
  with pytest.raises(ValueError, match=r"targets\['kl'\] = 'about 3'"):
    R.write_round_report(tmp_path, _rounds(), targets={"kl": "about 3"})


def _sweep():
  points = []
  for n_labels, (a, b) in {100: (1.0, 0.5), 1000: (1.4, 0.25)}.items():
    for n in (1, 2, 4, 8, 16, 64):
      d = math.sqrt(E.bon_kl(n))
      points.append(
        dict(n_labels=n_labels, method="bon", kl=d * d, gold=d * (a - b * d), proxy=1.5 * d)
      )
    for kl in (0.5, 1.0, 4.0, 9.0, 16.0):
      d = math.sqrt(kl)
      points.append(
        dict(
          n_labels=n_labels,
          method="ppo",
          kl=kl,
          gold=d * (a - b * math.log(d)),
          proxy=d * (a + 0.2),
        )
      )
  return points


def test_overoptimization_report_fits_and_plot(tmp_path):
  points = _sweep() + [dict(n_labels=5, method="ppo", kl=1.0, gold=0.1)]
  path = R.write_overoptimization_report(tmp_path, points)
  assert path == os.path.join(tmp_path, "overoptimization.md")
  text = open(path, encoding="utf-8").read()
  # Exact data: the fit recovers the generating coefficients; bon peak d* = a / 2b = 1.0.
  assert "| 100 | best-of-n | gold | R = d(α − β·d) | 1 | 0.5 | 1.000 | 1 | 0.5 | 6 |" in text
  # ppo, 100 labels: d* = exp(a / b - 1) = e, R* = b e.
  assert (
    f"| 100 | PPO | gold | R = d(α − β·log d) | 1 | 0.5 | 1.000 | {math.e:.4g} "
    f"| {0.5 * math.e:.4g} | 5 |"
  ) in text
  # 1000 labels, ppo: d* = exp(4.6) ≈ 99 is beyond twice the largest d (4).
  assert (
    "| 1000 | PPO | gold | R = d(α − β·log d) | 1.4 | 0.25 | 1.000 | beyond data (> 8) |" in text
  )
  # A group with a single point gets no fit.
  assert "| 5 | PPO | gold | R = d(α − β·log d) | – | – | – | – | – | 1 |" in text
  assert "| 5 | PPO | proxy | R = d(α − β·log d) | – | – | – | – | – | 0 |" in text
  assert "](overoptimization.png)" in text
  _assert_png(tmp_path / "overoptimization.png")
  _no_temp_files(tmp_path)


def test_overoptimization_report_uses_given_fits_and_validates(tmp_path):
  fits = {
    (100, "bon"): E.Fit(2.0, 0.5, 0.9, "bon"),
    (1000, "bon"): {"proxy": E.Fit(1.5, 0.0, 1.0, "bon")},
  }
  points = [p for p in _sweep() if p["method"] == "bon"]
  text = open(R.write_overoptimization_report(tmp_path, points, fits), encoding="utf-8").read()
  assert "| 100 | best-of-n | gold | R = d(α − β·d) | 2 | 0.5 | 0.900 | 2 | 2 | 6 |" in text
  assert "| 100 | best-of-n | proxy | R = d(α − β·d) | – |" in text
  assert "| 1000 | best-of-n | gold | R = d(α − β·d) | – |" in text
  assert "| 1000 | best-of-n | proxy | R = d(α − β·d) | 1.5 | 0 | 1.000 | none | – | 6 |" in text
  assert "PPO" not in text.split("## Fits")[1]
  _assert_png(tmp_path / "overoptimization.png")
  with pytest.raises(ValueError, match=r"points\[0\]: method 'dpo'"):
    R.write_overoptimization_report(tmp_path, [dict(n_labels=1, method="dpo", kl=1.0, gold=0)])
  with pytest.raises(ValueError, match=r"points\[0\]: kl must be"):
    R.write_overoptimization_report(tmp_path, [dict(n_labels=1, method="bon", kl=-1.0)])


def test_legend_names_the_judges_and_the_tie_rule(tmp_path):
  for judges in ("afinn_sentiment", ("afinn_sentiment",)):
    path = R.write_round_report(
      tmp_path,
      _rounds(),
      [],
      {"gold": "vader_sentiment", "independent_judges": judges, "tie_threshold": 0.05},
      {},
    )
    text = open(path, encoding="utf-8").read()
    assert "under the gold judge (vader_sentiment)" in text
    assert "win rate under afinn_sentiment (ties: equal scores) — a scorer no label came" in text
    assert "differ by less than 0.05" in text
  path = R.write_round_report(tmp_path, _rounds(), [], {"independent_judges": "none"}, {})
  assert "under no independent judge" in open(path, encoding="utf-8").read()
