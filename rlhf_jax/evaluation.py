"""Evaluation statistics on host arrays: win rates, intervals, calibration, agreement, fits.

Everything here is numpy in, numpy / Python floats out, float64 throughout; nothing touches a
device. The pipeline fetches its per-example arrays once (gold scores, reward-model
probabilities, judge labels) and calls these functions.

* :func:`win_rate` — policy vs reference under the gold scorer, ties count half, with a Wilson
  score interval.
* :func:`effective_n` / :func:`clustered_rate` / :func:`paired_change` — intervals when
  several answers share one prompt (they count prompts, not answers).
* :func:`t_interval` — Student-t interval for a mean.
* :func:`bootstrap_ci` — percentile bootstrap interval for any statistic.
* :func:`expected_calibration_error` / :func:`reliability_table` — is the reward model's
  P(a ≻ b) a probability?
* :func:`agreement` — raw agreement and Cohen's kappa of two label sets over {a, b, tie}.
* :func:`fleiss_kappa` — Fleiss' kappa of many annotators' label counts per pair.
* :func:`fit_bon` / :func:`fit_rl` / :func:`predict` / :func:`peak` / :func:`bon_kl` — the
  reward over-optimisation scaling laws of Gao, Schulman & Hilton (2022), "Scaling Laws for
  Reward Model Overoptimization", with ``d = sqrt(KL(π ‖ π_init))``.
* :func:`perplexity` — ``exp`` of the token-mean negative log-likelihood.

Label convention (as in :mod:`rlhf_jax.feedback.judges`): ``0 = a``, ``1 = b``, ``2 = tie``,
or the strings ``"a"``, ``"b"``, ``"tie"``.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re
from typing import Any, Callable, NamedTuple

import numpy as np

from rlhf_jax.labels import LABEL_A, LABEL_B, LABEL_TIE, LABELS, encode_labels

__all__ = [
  "Z_95",
  "WinRate",
  "win_rate",
  "gold_labels",
  "wilson_interval",
  "Interval",
  "t_interval",
  "effective_n",
  "clustered_rate",
  "paired_change",
  "bootstrap_ci",
  "labels_to_outcome",
  "Reliability",
  "reliability_table",
  "expected_calibration_error",
  "Agreement",
  "agreement",
  "fleiss_kappa",
  "Fit",
  "fit_bon",
  "fit_rl",
  "predict",
  "peak",
  "bon_kl",
  "perplexity",
  "words",
  "degenerate",
]

Z_95 = 1.959963984540054
"""Two-sided 95% standard-normal quantile, ``Φ⁻¹(0.975)``."""


def _float_1d(name: str, x: Any) -> np.ndarray:
  arr = np.asarray(x, dtype=np.float64)
  if arr.ndim != 1:
    raise ValueError(f"{name}: expected a 1-D array, got shape {arr.shape}")
  if not np.all(np.isfinite(arr)):
    raise ValueError(f"{name}: contains NaN or inf")
  return arr


# ----------------------------------------------------------------------------- win rate


class WinRate(NamedTuple):
  """Result of :func:`win_rate`.

  Attributes:
    rate: ``(wins + ties / 2) / n``.
    wins / ties / losses: counts of policy > / = / < reference.
    n: number of prompts.
    ci_low / ci_high: Wilson score interval on ``rate``.
  """

  rate: float
  wins: int
  ties: int
  losses: int
  n: int
  ci_low: float
  ci_high: float

  def fields(self) -> dict:
    """The flat record of a run's evaluation (``eval.json``): ``win_rate``, ``win_ci_low``,
    ``win_ci_high``, ``wins``, ``ties``, ``losses``."""
    return {
      "win_rate": self.rate,
      "win_ci_low": self.ci_low,
      "win_ci_high": self.ci_high,
      "wins": self.wins,
      "ties": self.ties,
      "losses": self.losses,
    }


def wilson_interval(p_hat: float, n: int, z: float = Z_95) -> tuple[float, float]:
  """Wilson score interval for a proportion ``p_hat`` observed over ``n`` trials.

  ``(p̂ + z²/2n ± z sqrt(p̂(1-p̂)/n + z²/4n²)) / (1 + z²/n)`` — the two roots ``p`` of
  ``(p̂ - p)² = z² p (1 - p) / n``. Unlike the normal (Wald) interval it stays inside [0, 1]
  and does not collapse to a point at ``p̂ ∈ {0, 1}``.
  """
  if n <= 0:
    raise ValueError(f"wilson_interval: n must be positive, got {n}")
  if not 0.0 <= p_hat <= 1.0:
    raise ValueError(f"wilson_interval: p_hat must be in [0, 1], got {p_hat}")
  z2n = z * z / n
  denom = 1.0 + z2n
  center = (p_hat + z2n / 2.0) / denom
  half = z / denom * math.sqrt(p_hat * (1.0 - p_hat) / n + z2n / (4.0 * n))
  return max(0.0, center - half), min(1.0, center + half)


def gold_labels(gold_a: Any, gold_b: Any, tie_threshold: float = 0.0) -> np.ndarray:
  """Labels ``0 = a``, ``1 = b``, ``2 = tie`` from gold scores: the one tie convention.

  A pair is a tie when ``|g_a - g_b| < tie_threshold`` or the scores are equal, else the
  higher score wins — the rule of the simulated annotators
  (:func:`rlhf_jax.feedback.simulated.simulate_labels`), so label agreement, reward-model
  accuracy and win rates all count near-ties the same way.
  """
  a = _float_1d("gold_labels: gold_a", gold_a)
  b = _float_1d("gold_labels: gold_b", gold_b)
  if a.shape != b.shape:
    raise ValueError(f"gold_labels: gold_a {a.shape} and gold_b {b.shape} differ")
  if tie_threshold < 0:
    raise ValueError(f"gold_labels: tie_threshold must be >= 0, got {tie_threshold}")
  d = a - b
  tie = (np.abs(d) < tie_threshold) | (d == 0)
  return np.where(tie, LABEL_TIE, np.where(d > 0, LABEL_A, LABEL_B)).astype(np.int32)


def win_rate(
  gold_policy: Any,
  gold_reference: Any,
  tie_eps: float = 0.0,
  z: float = Z_95,
  clusters: Any = None,
) -> WinRate:
  """Win rate of the policy over the reference under the gold scorer, ties counting half.

  Prompt ``i`` is a tie when ``|gold_policy[i] - gold_reference[i]| < tie_eps`` or the two are
  equal (:func:`gold_labels`), else a win or a loss by the sign of the difference;
  ``rate = (wins + ties / 2) / n``.

  Interval: the Wilson score interval (:func:`wilson_interval`) with ``p̂ = rate``. Each prompt
  scores ``s ∈ {0, ½, 1}`` with mean ``p``; its variance ``p - p² - t/4`` (``t`` the tie
  probability) is at most the Bernoulli ``p(1 - p)`` that Wilson assumes, so with ties the
  interval is conservative (slightly wide), and exact Wilson without them. Chosen over the
  bootstrap because it is deterministic, closed-form, and behaves at small ``n`` and at rates
  near 0 or 1.

  Args:
    gold_policy: float [N], gold reward of the policy's response to prompt i.
    gold_reference: float [N], gold reward of the reference's response to the same prompt.
    tie_eps: scores closer than this are a tie (the annotators' ``tie_threshold``).
    z: normal quantile of the interval (``Z_95`` → 95%).
    clusters: optional [N] ids: pairs with one id share a prompt (several answers to it).
      The interval then uses :func:`effective_n` draws instead of ``N`` (one id per pair
      gives exactly the interval without ``clusters``).
  """
  pol = _float_1d("win_rate: gold_policy", gold_policy)
  ref = _float_1d("win_rate: gold_reference", gold_reference)
  if pol.shape != ref.shape:
    raise ValueError(f"win_rate: gold_policy {pol.shape} and gold_reference {ref.shape} differ")
  if pol.size == 0:
    raise ValueError("win_rate: no prompts")
  if tie_eps < 0:
    raise ValueError(f"win_rate: tie_eps must be >= 0, got {tie_eps}")
  labels = gold_labels(pol, ref, tie_eps)
  wins = int(np.sum(labels == LABEL_A))
  losses = int(np.sum(labels == LABEL_B))
  n = int(labels.size)
  ties = n - wins - losses
  rate = (wins + 0.5 * ties) / n
  score = np.where(labels == LABEL_A, 1.0, np.where(labels == LABEL_B, 0.0, 0.5))
  n_eff = n if clusters is None else effective_n(score, clusters)
  lo, hi = wilson_interval(rate, n_eff, z)
  return WinRate(rate, wins, ties, losses, n, lo, hi)


# ----------------------------------------------------------------------------- several answers
# a prompt


def _cluster_ids(name: str, clusters: Any, n: int) -> np.ndarray:
  ids = np.asarray(clusters)
  if ids.shape != (n,):
    raise ValueError(f"{name}: clusters has shape {ids.shape}, expected ({n},)")
  return np.unique(ids, return_inverse=True)[1].reshape(-1)


def effective_n(values: Any, clusters: Any) -> float:
  """How many independent draws the mean of ``values`` is worth when rows sharing a cluster id
  (answers to one prompt) are correlated: ``p̂(1 - p̂) / Var̂(p̂)``, with ``p̂`` the mean and
  ``Var̂`` the cluster-robust (linearisation) estimate ``G / (G - 1) · Σ_c (y_c - p̂ m_c)² / N²``
  (``y_c``, ``m_c``: cluster c's sum and size, ``G`` clusters, ``N`` rows). Clipped to
  ``[1, N]``; ``N`` when every row is its own cluster (plain Wilson) or the estimate is 0.
  With ``k`` identical answers a prompt it is about the number of prompts; with independent
  answers about ``N``. Feed it to :func:`wilson_interval` (values in [0, 1])."""
  y = _float_1d("effective_n: values", values)
  ids = _cluster_ids("effective_n", clusters, y.size)
  n = y.size
  if n == 0:
    raise ValueError("effective_n: no values")
  g = int(ids.max()) + 1
  if g == n:
    return float(n)
  if g == 1:
    return 1.0
  p = float(np.mean(y))
  tot = np.bincount(ids, weights=y, minlength=g)
  size = np.bincount(ids, minlength=g).astype(np.float64)
  var = g / (g - 1) * float(np.sum((tot - p * size) ** 2)) / n**2
  if var <= 0.0:
    return float(n)
  return float(min(n, max(1.0, p * (1.0 - p) / var)))


def clustered_rate(passed: Any, clusters: Any = None, z: float = Z_95) -> Interval:
  """Share of ``passed`` (bools or values in [0, 1]) with a Wilson interval at
  :func:`effective_n` draws (plain Wilson over the rows without ``clusters``)."""
  y = _float_1d("clustered_rate: passed", passed)
  if y.size == 0:
    raise ValueError("clustered_rate: no values")
  rate = float(np.mean(y))
  n_eff = y.size if clusters is None else effective_n(y, clusters)
  lo, hi = wilson_interval(min(max(rate, 0.0), 1.0), n_eff, z)
  return Interval(rate, lo, hi)


def paired_change(before: Any, after: Any, clusters: Any = None) -> Interval:
  """Mean change ``after - before`` (rows: the same prompts, answered before and after) with a
  95% Student-t interval: over the clusters' mean differences, each cluster (prompt) weighted
  once — with equal cluster sizes the row mean — or over the rows without ``clusters``.
  Pairing removes what varies between prompts (a claim every model agrees with), which two
  separate intervals would count twice."""
  b = _float_1d("paired_change: before", before)
  a = _float_1d("paired_change: after", after)
  if a.shape != b.shape or a.size == 0:
    raise ValueError(f"paired_change: before {b.shape} and after {a.shape}: need equal, non-empty")
  d = a - b
  if clusters is None:
    return Interval(*t_interval(d))
  ids = _cluster_ids("paired_change", clusters, d.size)
  g = int(ids.max()) + 1
  per = np.bincount(ids, weights=d, minlength=g) / np.bincount(ids, minlength=g)
  return Interval(*t_interval(per))


# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (30 beyond: conservative).
_T95 = (
  12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912,
  2.364624, 2.306004, 2.262157, 2.228139, 2.200985, 2.178813,
  2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922,
  2.093024, 2.085963, 2.079614, 2.073873, 2.068658, 2.063899,
  2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272,
)  # fmt: skip


def t_interval(values: Any) -> tuple[float, float, float]:
  """``(mean, low, high)``: the 95% Student-t interval for the mean of ``values``
  (``low = high = mean`` for a single value)."""
  x = np.asarray(values, np.float64)
  if x.size == 0:
    raise ValueError("t_interval: no values")
  mean = float(np.mean(x))
  if x.size == 1:
    return mean, mean, mean
  half = _T95[min(x.size - 1, len(_T95)) - 1] * float(np.std(x, ddof=1)) / math.sqrt(x.size)
  return mean, mean - half, mean + half


# ----------------------------------------------------------------------------- bootstrap


class Interval(NamedTuple):
  """A point estimate with a confidence interval."""

  estimate: float
  low: float
  high: float


def bootstrap_ci(
  values: Any,
  stat: Callable[[np.ndarray], Any] = np.mean,
  n_boot: int = 1000,
  alpha: float = 0.05,
  seed: int = 0,
) -> Interval:
  """Percentile bootstrap interval of ``stat(values)``.

  Draws ``n_boot`` resamples of ``values`` with replacement (``np.random.default_rng(seed)``),
  and returns ``stat(values)`` with the ``alpha/2`` and ``1 - alpha/2`` quantiles of the
  resampled statistic. Resamples are drawn one at a time (memory ``O(N)``).

  Args:
    values: [N] numbers (or [N, ...]; rows are resampled).
    stat: array -> scalar.
    n_boot: number of resamples.
    alpha: 1 - confidence level.
    seed: RNG seed; the same seed gives the same interval.
  """
  values = np.asarray(values, dtype=np.float64)
  if values.ndim == 0 or values.shape[0] == 0:
    raise ValueError("bootstrap_ci: values must be a non-empty array")
  if not 0.0 < alpha < 1.0:
    raise ValueError(f"bootstrap_ci: alpha must be in (0, 1), got {alpha}")
  if n_boot < 1:
    raise ValueError(f"bootstrap_ci: n_boot must be >= 1, got {n_boot}")
  rng = np.random.default_rng(seed)
  n = values.shape[0]
  stats = np.empty(n_boot, dtype=np.float64)
  for i in range(n_boot):
    stats[i] = stat(values[rng.integers(0, n, size=n)])
  lo, hi = np.quantile(stats, [alpha / 2.0, 1.0 - alpha / 2.0])
  return Interval(float(stat(values)), float(lo), float(hi))


# ----------------------------------------------------------------------------- labels


def labels_to_outcome(labels: Any) -> np.ndarray:
  """Gold labels -> float64 outcome of "a ≻ b": ``a → 1``, ``b → 0``, ``tie → ½``.

  This is the target that :func:`expected_calibration_error` compares P(a ≻ b) against: a tie
  is half a win for each side (the Bradley–Terry reading of a tie).
  """
  return np.array([1.0, 0.0, 0.5])[encode_labels(labels, "labels_to_outcome")]


# ----------------------------------------------------------------------------- calibration


class Reliability(NamedTuple):
  """Per-bin reliability diagram data (equal-width bins on [0, 1]); arrays of length n_bins.

  Empty bins have ``count == 0`` and NaN means.
  """

  bin_low: np.ndarray
  bin_high: np.ndarray
  count: np.ndarray
  mean_pred: np.ndarray
  mean_outcome: np.ndarray


def reliability_table(prob_pred: Any, outcome: Any, n_bins: int = 10) -> Reliability:
  """Bins predictions into ``n_bins`` equal-width bins and averages prediction and outcome.

  Bin ``k`` holds ``k/n_bins <= p < (k+1)/n_bins``; the last bin also holds ``p = 1``.

  Args:
    prob_pred: float [N] in [0, 1], the predicted P(a ≻ b).
    outcome: float [N] in [0, 1], observed outcome: 1 if a won, 0 if b won, ½ for a tie
      (:func:`labels_to_outcome` builds it from gold labels). Ties therefore count as half a
      win; drop them beforehand to calibrate on decisive pairs only.
    n_bins: number of bins.
  """
  p = _float_1d("reliability_table: prob_pred", prob_pred)
  y = _float_1d("reliability_table: outcome", outcome)
  if p.shape != y.shape:
    raise ValueError(f"reliability_table: prob_pred {p.shape} and outcome {y.shape} differ")
  if np.any((p < 0) | (p > 1)) or np.any((y < 0) | (y > 1)):
    raise ValueError("reliability_table: prob_pred and outcome must lie in [0, 1]")
  if n_bins < 1:
    raise ValueError(f"reliability_table: n_bins must be >= 1, got {n_bins}")
  edges = np.linspace(0.0, 1.0, n_bins + 1)
  idx = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
  count = np.bincount(idx, minlength=n_bins)
  sum_p = np.bincount(idx, weights=p, minlength=n_bins)
  sum_y = np.bincount(idx, weights=y, minlength=n_bins)
  with np.errstate(invalid="ignore", divide="ignore"):
    mean_p = np.where(count > 0, sum_p / count, np.nan)
    mean_y = np.where(count > 0, sum_y / count, np.nan)
  return Reliability(edges[:-1], edges[1:], count, mean_p, mean_y)


def expected_calibration_error(prob_pred: Any, outcome: Any, n_bins: int = 10) -> float:
  """ECE = Σ_k (n_k / N) |mean_pred_k - mean_outcome_k| over equal-width bins.

  See :func:`reliability_table` for the binning and the outcome encoding (ties = ½).
  """
  table = reliability_table(prob_pred, outcome, n_bins)
  total = int(table.count.sum())
  if total == 0:
    raise ValueError("expected_calibration_error: no predictions")
  used = table.count > 0
  gaps = np.abs(table.mean_pred[used] - table.mean_outcome[used])
  return float(np.sum(table.count[used] * gaps) / total)


# ----------------------------------------------------------------------------- agreement


class Agreement(NamedTuple):
  """Result of :func:`agreement`."""

  rate: float
  kappa: float
  n: int


def agreement(labels_1: Any, labels_2: Any) -> Agreement:
  """Raw agreement and Cohen's kappa of two labelings of the same pairs over {a, b, tie}.

  ``rate = p_o`` (fraction equal); ``kappa = (p_o - p_e) / (1 - p_e)`` with chance agreement
  ``p_e = Σ_c p1(c) p2(c)`` from each labeler's marginals. When ``p_e = 1`` (both labelers used
  one and the same label for every pair) kappa is undefined and NaN is returned.

  Args:
    labels_1, labels_2: [N] labels, ints 0/1/2 or strings "a"/"b"/"tie".
  """
  c1 = encode_labels(labels_1, "agreement: labels_1")
  c2 = encode_labels(labels_2, "agreement: labels_2")
  if c1.shape != c2.shape:
    raise ValueError(f"agreement: labels_1 {c1.shape} and labels_2 {c2.shape} differ")
  n = int(c1.size)
  if n == 0:
    raise ValueError("agreement: no labels")
  p_o = float(np.mean(c1 == c2))
  m1 = np.bincount(c1, minlength=3) / n
  m2 = np.bincount(c2, minlength=3) / n
  p_e = float(np.dot(m1, m2))
  kappa = float("nan") if p_e >= 1.0 else (p_o - p_e) / (1.0 - p_e)
  return Agreement(p_o, kappa, n)


def fleiss_kappa(counts: Any) -> Agreement:
  """Fleiss' kappa of several annotators labelling the same pairs over {a, b, tie}.

  ``counts[i, c]`` is how many annotators gave pair ``i`` label ``c``; a pair's number of labels
  ``n_i`` may vary (each pair needs at least two). With the per-pair agreement
  ``P_i = (Σ_c n_ic² - n_i) / (n_i (n_i - 1))``, ``P̄ = mean_i P_i`` and the chance agreement
  ``P_e = Σ_c p_c²`` from the pooled label shares ``p_c = Σ_i n_ic / Σ_i n_i``:
  ``kappa = (P̄ - P_e) / (1 - P_e)`` (NaN when ``P_e = 1``: one label used throughout). With
  two labels per pair this is Scott's pi, close to Cohen's kappa.

  Args:
    counts: [N, 3] non-negative integer counts (columns a, b, tie).
  Returns:
    ``Agreement(rate=P̄, kappa, n=N)``.
  """
  c = np.asarray(counts)
  if c.ndim != 2 or c.shape[1] != len(LABELS):
    raise ValueError(f"fleiss_kappa: expected counts of shape [N, 3], got {c.shape}")
  if c.shape[0] == 0:
    raise ValueError("fleiss_kappa: no pairs")
  if c.dtype.kind not in "iu" or (c < 0).any():
    raise ValueError("fleiss_kappa: counts must be non-negative integers")
  c = c.astype(np.float64)
  n_i = c.sum(axis=1)
  if (n_i < 2).any():
    raise ValueError(
      f"fleiss_kappa: pair {int(np.argmax(n_i < 2))} has {int(n_i[n_i < 2][0])} label(s); "
      "every pair needs at least two"
    )
  p_i = ((c * c).sum(axis=1) - n_i) / (n_i * (n_i - 1.0))
  p_bar = float(p_i.mean())
  p_c = c.sum(axis=0) / n_i.sum()
  p_e = float(np.dot(p_c, p_c))
  kappa = float("nan") if p_e >= 1.0 else (p_bar - p_e) / (1.0 - p_e)
  return Agreement(p_bar, kappa, int(c.shape[0]))


# ----------------------------------------------------------------------------- over-optimisation


@dataclasses.dataclass(frozen=True)
class Fit:
  """A fitted over-optimisation curve ``R(d)`` with ``d = sqrt(KL)``.

  Attributes:
    alpha, beta: coefficients.
    r2: coefficient of determination of the fit (``1 - SS_res / SS_tot``, ``SS_tot`` about the
      mean of r). The model has no intercept, so a bad fit can give ``r2 < 0``.
    form: ``"bon"`` for ``R = d (α - β d)``, ``"rl"`` for ``R = d (α - β log d)``.
  """

  alpha: float
  beta: float
  r2: float
  form: str


def _design(form: str, d: np.ndarray) -> np.ndarray:
  """Columns multiplying (α, β): R = α d - β g(d), g = d² (bon) or d log d (rl, 0 at d = 0)."""
  if form == "bon":
    g = d * d
  elif form == "rl":
    with np.errstate(divide="ignore", invalid="ignore"):
      g = np.where(d > 0, d * np.log(np.where(d > 0, d, 1.0)), 0.0)
  else:
    raise ValueError(f"unknown fit form {form!r}; expected 'bon' or 'rl'")
  return np.stack([d, -g], axis=1)


def _fit(form: str, d: Any, r: Any) -> Fit:
  d = _float_1d(f"fit_{form}: d", d)
  r = _float_1d(f"fit_{form}: r", r)
  if d.shape != r.shape:
    raise ValueError(f"fit_{form}: d {d.shape} and r {r.shape} differ")
  if np.any(d < 0):
    raise ValueError(f"fit_{form}: d = sqrt(KL) must be >= 0")
  x = _design(form, d)
  if np.linalg.matrix_rank(x) < 2:
    raise ValueError(
      f"fit_{form}: need at least two distinct d > 0"
      + (" other than d = 1 (log d = 0)" if form == "rl" else "")
    )
  (alpha, beta), *_ = np.linalg.lstsq(x, r, rcond=None)
  resid = r - x @ np.array([alpha, beta])
  ss_res = float(np.dot(resid, resid))
  ss_tot = float(np.sum((r - r.mean()) ** 2))
  if ss_tot > 0:
    r2 = 1.0 - ss_res / ss_tot
  else:
    r2 = 1.0 if ss_res <= 1e-24 else float("nan")
  return Fit(float(alpha), float(beta), r2, form)


def fit_bon(d: Any, r: Any) -> Fit:
  """Least-squares fit of the best-of-n law ``R(d) = d (α - β d)``.

  Linear in (α, β) for known d, so solved by ``np.linalg.lstsq`` on columns ``[d, -d²]``.

  Args:
    d: float [N], ``sqrt(KL)``; for best-of-n, ``sqrt(bon_kl(n))``.
    r: float [N], reward **relative to the initial policy** (the law has ``R(0) = 0``).
  """
  return _fit("bon", d, r)


def fit_rl(d: Any, r: Any) -> Fit:
  """Least-squares fit of the RL law ``R(d) = d (α - β log d)`` (columns ``[d, -d log d]``).

  Args:
    d: float [N], ``sqrt(KL(π ‖ π_init))``; ``d = 0`` is allowed (``d log d → 0``).
    r: float [N], reward relative to the initial policy.
  """
  return _fit("rl", d, r)


def predict(fit: Fit, d: Any) -> np.ndarray:
  """``R(d)`` of a fitted curve; float64 array shaped like ``d``."""
  d = np.asarray(d, dtype=np.float64)
  flat = d.reshape(-1)
  return (_design(fit.form, flat) @ np.array([fit.alpha, fit.beta])).reshape(d.shape)


def peak(fit: Fit) -> tuple[float, float]:
  """``(d*, R(d*))`` where the fitted reward peaks; ``(nan, nan)`` when it has no peak.

  bon: ``d* = α / 2β``, ``R* = α² / 4β``. rl: ``dR/dd = α - β (log d + 1) = 0`` gives
  ``d* = exp(α/β - 1)``, ``R* = β d*``. A peak exists only for ``β > 0`` (and ``α > 0`` for
  bon).
  """
  if fit.beta <= 0:
    return float("nan"), float("nan")
  if fit.form == "bon":
    if fit.alpha <= 0:
      return float("nan"), float("nan")
    return fit.alpha / (2 * fit.beta), fit.alpha**2 / (4 * fit.beta)
  if fit.form == "rl":
    d_star = math.exp(fit.alpha / fit.beta - 1.0)
    return d_star, fit.beta * d_star
  raise ValueError(f"unknown fit form {fit.form!r}")


def bon_kl(n: Any) -> Any:
  """Analytic KL(best-of-n ‖ base) = ``log n - (n - 1) / n`` (float, or array for array n)."""
  n_arr = np.asarray(n, dtype=np.float64)
  if np.any(n_arr < 1):
    raise ValueError(f"bon_kl: n must be >= 1, got {n}")
  out = np.log(n_arr) - (n_arr - 1.0) / n_arr
  return float(out) if out.ndim == 0 else out


# ----------------------------------------------------------------------------- perplexity


def perplexity(nll_sum: Any, n_tokens: Any) -> float:
  """Token-level perplexity ``exp(Σ nll / Σ n_tokens)``.

  Args:
    nll_sum: summed negative log-likelihood (nats), a scalar or [B] per-sequence sums.
    n_tokens: token count(s) matching ``nll_sum``.
  Arrays are summed first: the corpus perplexity (token-weighted), not the mean of
  per-sequence perplexities.
  """
  total_nll = float(np.sum(np.asarray(nll_sum, dtype=np.float64)))
  total_tok = float(np.sum(np.asarray(n_tokens, dtype=np.float64)))
  if not total_tok > 0:
    raise ValueError(f"perplexity: n_tokens must sum to > 0, got {total_tok}")
  if not math.isfinite(total_nll):
    raise ValueError("perplexity: nll_sum is not finite")
  return math.exp(total_nll / total_tok)


# ----------------------------------------------------------------------------- degenerate text

_WORD_RE = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")


def words(text: str) -> list[str]:
  """Lower-cased alphabetic words of ``text`` (apostrophes inside a word kept)."""
  return [w.lower() for w in _WORD_RE.findall(text)]


def degenerate(
  texts: Any,
  vocabulary: Any = None,
  *,
  max_top_word_share: float = 0.5,
  max_unknown_share: float = 1 / 3,
) -> np.ndarray:
  """Which responses are degenerate text: bool ``[N]``.

  A response is degenerate when it has no word; or it is repetitive — with at least four
  words, one word makes up more than ``max_top_word_share`` of them or a word trigram occurs
  twice; or, given a ``vocabulary`` (a set of lower-cased words, e.g. the training
  corpus's), more than ``max_unknown_share`` of its words are not in it (non-words). These
  are the failure modes of a policy that games a lexicon scorer: strings of rewarded words,
  loops, and broken tokens.
  """
  vocab = None if vocabulary is None else frozenset(vocabulary)
  out = np.zeros(len(texts), bool)
  for i, text in enumerate(texts):
    ws = words(str(text))
    if not ws:
      out[i] = True
      continue
    if len(ws) >= 4:
      if collections.Counter(ws).most_common(1)[0][1] > max_top_word_share * len(ws):
        out[i] = True
        continue
      trigrams = list(zip(ws, ws[1:], ws[2:]))
      if len(set(trigrams)) < len(trigrams):
        out[i] = True
        continue
    if vocab is not None and sum(w not in vocab for w in ws) > max_unknown_share * len(ws):
      out[i] = True
  return out
