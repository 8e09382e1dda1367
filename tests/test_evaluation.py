"""Evaluation statistics against hand-computed values and independent float64 oracles."""

import math

import numpy as np
import pytest

from rlhf_jax import evaluation as E

# ----------------------------------------------------------------------------- several answers


def test_effective_n_by_hand():
  # two prompts, answers identical within each: worth G - 1 = 1 draw (ddof-style factor)
  assert E.effective_n([1, 1, 0, 0], [0, 0, 1, 1]) == 1.0
  # the prompts' means equal: no between-prompt spread, worth every answer
  assert E.effective_n([1, 0, 1, 0], [0, 0, 1, 1]) == 4.0
  assert E.effective_n([1, 0, 1], [7, 8, 9]) == 3.0  # one answer a prompt: plain Wilson
  # p = 2/3, totals (3, 1) vs expected (2, 2): var = 2/1 * 2 / 36 = 1/9; p(1-p) = 2/9 -> 2
  assert E.effective_n([1, 1, 1, 0, 0, 1], [0, 0, 0, 1, 1, 1]) == pytest.approx(2.0)
  with pytest.raises(ValueError, match="clusters has shape"):
    E.effective_n([1, 0], [0])


def test_effective_n_matches_a_float64_loop():
  rng = np.random.default_rng(3)
  y = rng.random(50)
  c = rng.integers(0, 12, 50)
  p = y.mean()
  groups = sorted(set(c.tolist()))
  g = len(groups)
  s = 0.0
  for k in groups:
    s += (
      sum(y[i] for i in range(50) if c[i] == k) - p * sum(1 for i in range(50) if c[i] == k)
    ) ** 2
  var = g / (g - 1) * s / 50**2
  assert E.effective_n(y, c) == pytest.approx(min(50, p * (1 - p) / var), rel=1e-12)


def test_clustered_interval_covers_where_answer_counting_does_not():
  """40 prompts x 8 answers, each prompt with its own pass probability (Beta(0.5, 0.5)):
  the interval counting answers as draws covers the true mean far less than 95% of the time;
  the clustered one about 95%."""
  rng = np.random.default_rng(0)
  clusters = np.repeat(np.arange(40), 8)
  cover_naive = cover_clustered = 0
  trials = 1000
  for _ in range(trials):
    p = rng.beta(0.5, 0.5, 40)
    y = (rng.random(320) < p[clusters]).astype(float)
    naive = E.clustered_rate(y)
    clus = E.clustered_rate(y, clusters)
    cover_naive += naive.low <= 0.5 <= naive.high
    cover_clustered += clus.low <= 0.5 <= clus.high
  assert cover_naive / trials < 0.80
  assert 0.92 <= cover_clustered / trials <= 0.98


def test_paired_change_by_hand():
  # per-prompt changes (mean of the prompt's answers): prompt 0: 1 - 0, prompt 1: 0.5 - 1
  iv = E.paired_change([0, 0, 1, 1], [1, 1, 1, 0], [0, 0, 1, 1])
  half = 12.706205 * np.std([1.0, -0.5], ddof=1) / math.sqrt(2)
  assert iv.estimate == pytest.approx(0.25)
  assert (iv.low, iv.high) == pytest.approx((0.25 - half, 0.25 + half), rel=1e-6)
  # without clusters: the rows are the pairs
  iv = E.paired_change([0, 1, 0], [1, 1, 1])
  half = 4.302653 * np.std([1.0, 0.0, 1.0], ddof=1) / math.sqrt(3)
  assert (iv.estimate, iv.low, iv.high) == pytest.approx((2 / 3, 2 / 3 - half, 2 / 3 + half))
  with pytest.raises(ValueError, match="need equal"):
    E.paired_change([0, 1], [1])


def test_win_rate_with_clusters():
  pol, ref = [1.0, 0.0, 1.0, 1.0, 0.5, 0.5], [0.0, 0.0, 0.0, 1.0, 1.0, 0.0]
  plain = E.win_rate(pol, ref)
  assert E.win_rate(pol, ref, clusters=np.arange(6)) == plain  # one id a pair: unchanged
  grouped = E.win_rate(pol, ref, clusters=[0, 0, 0, 1, 1, 1])
  assert grouped.rate == plain.rate and grouped.n == 6
  # pair scores (1, .5, 1 | .5, 0, 1): p = 2/3 by both counts, the interval from effective_n
  lo, hi = E.wilson_interval(plain.rate, E.effective_n([1, 0.5, 1, 0.5, 0, 1], [0, 0, 0, 1, 1, 1]))
  assert (grouped.ci_low, grouped.ci_high) == (lo, hi)


# ----------------------------------------------------------------------------- win rate


def test_win_rate_counts_ties_half_and_wilson_by_hand():
  # diffs: 7 wins, 2 exact ties, 1 loss -> rate 0.8, n = 10.
  pol = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 0.5, 0.5, 0.0])
  ref = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5, 0.5, 1.0])
  wr = E.win_rate(pol, ref, z=1.96)
  assert (wr.wins, wr.ties, wr.losses, wr.n) == (7, 2, 1, 10)
  assert wr.rate == pytest.approx(0.8, abs=1e-15)
  # By hand, z = 1.96: z²/n = 0.38416, denominator 1.38416, centre 0.99208 / 1.38416,
  # = 0.716738, half-width 1.96 / 1.38416 * sqrt(0.016 + 0.009604) = 1.416021 * 0.160012
  # = 0.226581.
  assert wr.ci_low == pytest.approx(0.716738 - 0.226581, abs=2e-6)
  assert wr.ci_high == pytest.approx(0.716738 + 0.226581, abs=2e-6)


def test_wilson_matches_quadratic_root_oracle():
  # The Wilson bounds are the roots p of (p̂ - p)² = z² p (1 - p) / n, i.e.
  # (1 + z²/n) p² - (2 p̂ + z²/n) p + p̂² = 0; solve that with np.roots in float64.
  for p_hat, n in [(0.8, 10), (0.5, 7), (0.03, 200), (0.999, 1000), (0.25, 1)]:
    z = E.Z_95
    a, b, c = 1 + z * z / n, -(2 * p_hat + z * z / n), p_hat * p_hat
    roots = np.sort(np.roots([a, b, c]).real)
    lo, hi = E.wilson_interval(p_hat, n, z)
    np.testing.assert_allclose([lo, hi], roots, rtol=0, atol=1e-12)


def test_wilson_at_zero_successes_by_hand():
  # p̂ = 0: lower bound 0, upper bound (z²/n) / (1 + z²/n) = 0.38416 / 1.38416 for z = 1.96.
  wr = E.win_rate(np.zeros(10), np.ones(10), z=1.96)
  assert (wr.rate, wr.wins, wr.losses) == (0.0, 0, 10)
  assert wr.ci_low == 0.0
  assert wr.ci_high == pytest.approx(0.38416 / 1.38416, abs=1e-12)


def test_win_rate_tie_eps_and_validation():
  pol = np.array([1.0, 1.05, 0.95, 2.0])
  ref = np.ones(4)
  exact = E.win_rate(pol, ref)
  assert (exact.wins, exact.ties, exact.losses) == (2, 1, 1)
  wr = E.win_rate(pol, ref, tie_eps=0.1)
  assert (wr.wins, wr.ties, wr.losses) == (1, 3, 0)
  assert wr.rate == pytest.approx(2.5 / 4)
  assert wr.ci_low < wr.rate < wr.ci_high
  with pytest.raises(ValueError, match="differ"):
    E.win_rate(np.ones(3), np.ones(4))
  with pytest.raises(ValueError, match="NaN"):
    E.win_rate(np.array([np.nan]), np.array([0.0]))
  with pytest.raises(ValueError, match="no prompts"):
    E.win_rate(np.zeros(0), np.zeros(0))


# ----------------------------------------------------------------------------- bootstrap


def test_bootstrap_ci_normal_mean_close_to_analytic():
  rng = np.random.default_rng(1)
  x = rng.normal(3.0, 2.0, size=2000)
  ci = E.bootstrap_ci(x, n_boot=2000, seed=0)
  assert ci.estimate == pytest.approx(float(np.mean(x)), abs=1e-12)
  half = 1.959964 * np.std(x) / math.sqrt(x.size)
  assert ci.low == pytest.approx(x.mean() - half, abs=0.15 * half)
  assert ci.high == pytest.approx(x.mean() + half, abs=0.15 * half)


def test_bootstrap_ci_deterministic_degenerate_and_custom_stat():
  x = np.arange(20.0)
  assert E.bootstrap_ci(x, seed=3) == E.bootstrap_ci(x, seed=3)
  assert E.bootstrap_ci(x, seed=3) != E.bootstrap_ci(x, seed=4)
  assert E.bootstrap_ci(np.full(5, 2.5)) == (2.5, 2.5, 2.5)
  med = E.bootstrap_ci(x, stat=np.median, n_boot=200)
  assert med.estimate == 9.5 and 0 <= med.low <= 9.5 <= med.high <= 19
  with pytest.raises(ValueError, match="non-empty"):
    E.bootstrap_ci([])


# ----------------------------------------------------------------------------- calibration


def test_labels_to_outcome():
  np.testing.assert_array_equal(E.labels_to_outcome(["a", "b", "tie"]), [1.0, 0.0, 0.5])
  np.testing.assert_array_equal(E.labels_to_outcome(np.array([1, 0, 2])), [0.0, 1.0, 0.5])
  with pytest.raises(ValueError, match="unknown label 'c'"):
    E.labels_to_outcome(["a", "c"])
  with pytest.raises(ValueError, match="label 3"):
    E.labels_to_outcome([0, 3])


def test_ece_hand_computed_two_bins():
  # n_bins = 2: bin [0, .5) holds p = .1, .3 (mean .2) with outcomes 0, 1 (mean .5): gap .3.
  # bin [.5, 1] holds p = .6, .8, 1.0 (mean .8) with outcomes 1, 1, .5 (tie; mean 5/6):
  # gap 1/30. ECE = 2/5 * .3 + 3/5 * 1/30 = .12 + .02 = .14.
  p = np.array([0.1, 0.3, 0.6, 0.8, 1.0])
  y = E.labels_to_outcome(["b", "a", "a", "a", "tie"])
  assert E.expected_calibration_error(p, y, n_bins=2) == pytest.approx(0.14, abs=1e-15)
  t = E.reliability_table(p, y, n_bins=2)
  np.testing.assert_array_equal(t.count, [2, 3])
  np.testing.assert_allclose(t.mean_pred, [0.2, 0.8])
  np.testing.assert_allclose(t.mean_outcome, [0.5, 5 / 6])
  np.testing.assert_allclose(t.bin_low, [0.0, 0.5])
  np.testing.assert_allclose(t.bin_high, [0.5, 1.0])


def test_ece_against_loop_oracle_and_perfect_calibration():
  rng = np.random.default_rng(0)
  p = rng.uniform(size=500)
  y = (rng.uniform(size=500) < p).astype(np.float64)
  # Independent oracle: explicit loop over bins with half-open intervals.
  ece, bins = 0.0, 10
  for k in range(bins):
    lo, hi = k / bins, (k + 1) / bins
    sel = (p >= lo) & ((p < hi) if k < bins - 1 else (p <= hi))
    if sel.any():
      ece += sel.sum() / p.size * abs(p[sel].mean() - y[sel].mean())
  assert E.expected_calibration_error(p, y) == pytest.approx(ece, abs=1e-12)
  t = E.reliability_table(np.array([0.05, 0.95]), np.array([0.0, 1.0]), n_bins=10)
  assert t.count.tolist() == [1, 0, 0, 0, 0, 0, 0, 0, 0, 1]
  assert np.isnan(t.mean_pred[1]) and np.isnan(t.mean_outcome[5])
  # Predictions equal to the bin's outcome frequency: zero error.
  assert E.expected_calibration_error([0.5, 0.5, 1.0], [1.0, 0.0, 1.0]) == 0.0
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    E.expected_calibration_error([1.2], [1.0])


# ----------------------------------------------------------------------------- agreement


def test_agreement_and_kappa_by_hand():
  # 10 pairs. Rater 1: a a a a a b b b tie tie; rater 2: a a a a b b b a tie b.
  l1 = ["a"] * 5 + ["b"] * 3 + ["tie"] * 2
  l2 = ["a", "a", "a", "a", "b", "b", "b", "a", "tie", "b"]
  ag = E.agreement(l1, l2)
  # p_o = (4 + 2 + 1) / 10 = .7; marginals r1 (.5, .3, .2), r2 (.5, .4, .1);
  # p_e = .25 + .12 + .02 = .39; kappa = (.7 - .39) / .61.
  assert ag.n == 10
  assert ag.rate == pytest.approx(0.7)
  assert ag.kappa == pytest.approx(0.31 / 0.61, abs=1e-12)
  # Integer codes give the same answer (0 = a, 1 = b, 2 = tie).
  codes = {"a": 0, "b": 1, "tie": 2}
  assert E.agreement([codes[x] for x in l1], np.array([codes[x] for x in l2])) == ag


def test_agreement_edge_cases():
  assert E.agreement([0, 1, 2], [0, 1, 2]) == (1.0, 1.0, 3)
  # Perfect disagreement with balanced marginals: p_o = 0, p_e = .5 -> kappa = -1.
  assert E.agreement([0, 1], [1, 0]).kappa == pytest.approx(-1.0)
  # Both always "a": chance agreement is 1, kappa undefined.
  ag = E.agreement(["a", "a"], ["a", "a"])
  assert ag.rate == 1.0 and math.isnan(ag.kappa)
  with pytest.raises(ValueError, match="differ"):
    E.agreement([0], [0, 1])


# ----------------------------------------------------------------------------- over-optimisation


def test_bon_kl_by_hand():
  assert E.bon_kl(1) == 0.0
  assert E.bon_kl(4) == pytest.approx(math.log(4) - 0.75, abs=1e-15)
  assert E.bon_kl(4) == pytest.approx(0.6362943611198906, abs=1e-15)
  np.testing.assert_allclose(E.bon_kl(np.array([2, 4])), [math.log(2) - 0.5, 0.6362943611198906])
  with pytest.raises(ValueError, match="n must be >= 1"):
    E.bon_kl(0)


@pytest.mark.parametrize("form,fit_fn", [("bon", E.fit_bon), ("rl", E.fit_rl)])
def test_fit_recovers_exact_coefficients(form, fit_fn):
  alpha, beta = 1.7, 0.35
  d = np.sqrt(np.array([0.0, 0.3, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0]))
  g = d * d if form == "bon" else np.array([x * math.log(x) if x > 0 else 0.0 for x in d])
  r = alpha * d - beta * g
  fit = fit_fn(d, r)
  assert fit.form == form
  assert fit.alpha == pytest.approx(alpha, abs=1e-10)
  assert fit.beta == pytest.approx(beta, abs=1e-10)
  assert fit.r2 == pytest.approx(1.0, abs=1e-12)
  np.testing.assert_allclose(E.predict(fit, d), r, atol=1e-10)
  assert E.predict(fit, np.array([[0.0]])).shape == (1, 1)


@pytest.mark.parametrize("form,fit_fn", [("bon", E.fit_bon), ("rl", E.fit_rl)])
def test_fit_recovers_coefficients_from_noisy_data(form, fit_fn):
  rng = np.random.default_rng(0)
  alpha, beta = 1.2, 0.4
  d = np.linspace(0.1, 4.0, 400)
  g = d * d if form == "bon" else d * np.log(d)
  r = alpha * d - beta * g + rng.normal(0, 0.05, size=d.size)
  fit = fit_fn(d, r)
  assert fit.alpha == pytest.approx(alpha, abs=0.03)
  assert fit.beta == pytest.approx(beta, abs=0.03)
  assert 0.9 < fit.r2 < 1.0


def test_fit_matches_normal_equations_oracle():
  # Closed-form 2x2 normal equations in float64, solved by Cramer's rule.
  d = np.array([0.5, 1.0, 1.5, 2.5])
  r = np.array([0.3, 0.8, 0.7, 0.2])
  x1, x2 = d, -(d * d)
  a11, a12, a22 = x1 @ x1, x1 @ x2, x2 @ x2
  b1, b2 = x1 @ r, x2 @ r
  det = a11 * a22 - a12 * a12
  alpha, beta = (b1 * a22 - a12 * b2) / det, (a11 * b2 - a12 * b1) / det
  resid = r - (alpha * x1 + beta * x2)
  r2 = 1 - resid @ resid / np.sum((r - r.mean()) ** 2)
  fit = E.fit_bon(d, r)
  assert (fit.alpha, fit.beta, fit.r2) == pytest.approx((alpha, beta, r2), abs=1e-12)


def test_peak_by_hand_and_fit_validation():
  # bon: R = d (2 - 0.5 d) peaks at d = 2, R = 2.
  assert E.peak(E.Fit(2.0, 0.5, 1.0, "bon")) == pytest.approx((2.0, 2.0))
  # rl: R = d (1 - 0.5 log d): d* = exp(1/0.5 - 1) = e, R* = 0.5 e.
  d_star, r_star = E.peak(E.Fit(1.0, 0.5, 1.0, "rl"))
  assert (d_star, r_star) == pytest.approx((math.e, 0.5 * math.e))
  assert float(E.predict(E.Fit(1.0, 0.5, 1.0, "rl"), d_star)) == pytest.approx(r_star)
  assert all(math.isnan(v) for v in E.peak(E.Fit(1.0, -0.1, 1.0, "bon")))
  with pytest.raises(ValueError, match="two distinct"):
    E.fit_bon([0.0, 1.0, 1.0], [0.0, 1.0, 1.0])
  with pytest.raises(ValueError, match="log d = 0"):
    E.fit_rl([0.0, 1.0], [0.0, 1.0])
  with pytest.raises(ValueError, match=">= 0"):
    E.fit_rl([-1.0, 1.0, 2.0], [0.0, 1.0, 2.0])


# ----------------------------------------------------------------------------- perplexity


def test_perplexity_is_token_weighted():
  assert E.perplexity(0.0, 5) == 1.0
  assert E.perplexity(10 * math.log(4.0), 10) == pytest.approx(4.0)
  # Two sequences: nll 2 over 1 token and 0 over 3 tokens -> exp(2 / 4), not mean of e², 1.
  assert E.perplexity(np.array([2.0, 0.0]), np.array([1, 3])) == pytest.approx(math.exp(0.5))
  with pytest.raises(ValueError, match="n_tokens"):
    E.perplexity(1.0, 0)


def test_gold_labels_use_the_annotators_tie_rule():
  """One convention: gold labels tie exactly where noise-free simulated annotators tie."""
  from rlhf_jax.feedback import simulated

  rng = np.random.default_rng(0)
  a = np.round(rng.uniform(-1, 1, 500), 2)
  b = np.round(rng.uniform(-1, 1, 500), 2)
  b[:20] = a[:20]  # exact ties
  for tau in (0.0, 0.05, 0.3):
    sim = simulated.simulate_labels(
      a, b, temperature=1e-9, tie_threshold=tau, flip_prob=0.0, seed=0
    )
    np.testing.assert_array_equal(E.gold_labels(a, b, tau), sim.labels)
  labels = E.gold_labels([0.5, 0.52, 0.4, 0.3], [0.5, 0.5, 0.5, 0.36], 0.05)
  np.testing.assert_array_equal(labels, [2, 2, 1, 1])
  wr = E.win_rate([0.5, 0.52, 0.4, 0.3], [0.5, 0.5, 0.5, 0.36], tie_eps=0.05)
  assert (wr.wins, wr.ties, wr.losses) == (0, 2, 2)
  with pytest.raises(ValueError, match="tie_threshold"):
    E.gold_labels([1.0], [0.0], -0.1)


def test_degenerate_flags_empty_repetitive_and_non_word_responses():
  vocab = {"the", "sun", "is", "warm", "and", "bright", "today", "good", "love"}
  texts = [
    "The sun is warm and bright today.",  # fine
    "",  # empty
    "!!! ...",  # no word
    "good good good love good",  # one word dominates
    "the sun is the sun is warm",  # a repeated trigram
    "the sun xqzt blorf wug is",  # half non-words
    "the sun is warm xqzt",
  ]  # one unknown word of five: fine
  got = E.degenerate(texts, vocab)
  np.testing.assert_array_equal(got, [False, True, True, True, True, True, False])
  # Without a vocabulary only emptiness and repetition count.
  np.testing.assert_array_equal(E.degenerate(texts), [False, True, True, True, True, False, False])
  assert E.words("It's GOOD, isn't it?") == ["it's", "good", "isn't", "it"]
