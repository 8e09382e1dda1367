"""The reward over-optimisation study on its smoke config: every stage runs, best-of-n and
PPO points are produced for each label count, and the fitted laws and the report exist."""

import importlib.util
import json
import math
import pathlib

import numpy as np
import pytest

from rlhf_jax import evaluation
from rlhf_jax import main as entry

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def _config(arg):
  spec = importlib.util.spec_from_file_location("overopt_cfg", CONFIGS / "overoptimization.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("overopt")
  cfg = _config("smoke")
  result = entry.run_task(cfg, str(workdir))
  return workdir, cfg, result


@pytest.mark.slow  # minutes on 2 cores; run by `launchers/test.sh -m slow`
def test_smoke_study_points_fits_and_report(study):
  workdir, cfg, result = study
  points = json.loads((workdir / "points.json").read_text())
  for n_labels in cfg.label_counts:
    bon = [p for p in points if p["n_labels"] == n_labels and p["method"] == "bon"]
    assert [p["n"] for p in bon] == list(cfg.bon_ns)
    for p in bon:  # KL(best-of-n || base) = log n - (n - 1) / n, exactly
      assert p["kl"] == pytest.approx(math.log(p["n"]) - (p["n"] - 1) / p["n"], abs=1e-12)
    # n = 1 is the base policy itself: zero reward change.
    assert bon[0]["gold"] == pytest.approx(0.0, abs=1e-12)
    assert bon[0]["proxy"] == pytest.approx(0.0, abs=1e-6)
    # Best-of-n by the proxy raises the proxy reward (it picks the proxy's maximum).
    assert bon[-1]["proxy"] >= bon[0]["proxy"] - 1e-6
    ppo = [p for p in points if p["n_labels"] == n_labels and p["method"] == "ppo"]
    evals = cfg.ppo.iterations // cfg.ppo_eval_every
    assert [p["iteration"] for p in ppo] == [cfg.ppo_eval_every * (i + 1) for i in range(evals)]
    for p in ppo:
      assert p["kl"] >= 0.0 and math.isfinite(p["gold"]) and math.isfinite(p["proxy"])
  fits = json.loads((workdir / "fits.json").read_text())
  for n_labels in cfg.label_counts:
    for method in ("bon", "ppo"):
      f = fits[f"{method}_{n_labels}"]
      assert "error" in f or all(math.isfinite(f[k]) for k in ("alpha", "beta", "r2")), f
  # The fitted coefficients are the least-squares solution on the study's own points.
  pts = [
    p
    for p in points
    if p["n_labels"] == cfg.label_counts[0] and p["method"] == "bon" and p["kl"] > 0
  ]
  d = np.sqrt([p["kl"] for p in pts])
  g = np.array([p["gold"] for p in pts])
  coef, *_ = np.linalg.lstsq(np.stack([d, -d * d], 1), g, rcond=None)
  f = fits[f"bon_{cfg.label_counts[0]}"]
  assert f["alpha"] == pytest.approx(coef[0], abs=1e-9)
  assert f["beta"] == pytest.approx(coef[1], abs=1e-9)
  assert evaluation.bon_kl(4) == pytest.approx(math.log(4) - 0.75)
  report = (workdir / "overoptimization.md").read_text()
  assert "best-of-n" in report.lower() and ("R²" in report or "R^2" in report)
  png = (workdir / "overoptimization.png").read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
  assert result["seconds"] > 0
