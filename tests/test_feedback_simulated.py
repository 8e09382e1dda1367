"""Simulated annotators: label frequencies follow the model, ties sit exactly below τ, flips happen
at the configured rate, and every draw is reproducible from the recorded seed."""

import numpy as np
import pytest

from rlhf_jax.feedback.judges import JudgeOutput
from rlhf_jax.feedback.simulated import (
  annotate_pairs,
  bradley_terry_prob,
  simulate_labels,
  simulated_annotator,
)


def numeric_scorer(prompts, responses):
  """Gold score = the response parsed as a number."""
  return np.array([float(r) for r in responses])


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def test_bradley_terry_prob():
  np.testing.assert_allclose(
    bradley_terry_prob(np.array([1.0, 0.0, -2.0]), np.zeros(3), 0.5),
    _sigmoid(np.array([2.0, 0.0, -4.0])),
  )
  np.testing.assert_array_equal(
    bradley_terry_prob(np.array([1.0, 0.0, -1.0]), np.zeros(3), 0.0), [1.0, 0.5, 0.0]
  )
  assert bradley_terry_prob(np.array([1e6]), np.array([0.0]), 1e-3)[0] == 1.0


@pytest.mark.parametrize("flip_prob", [0.0, 0.15])
def test_label_frequencies_match_the_formula(flip_prob):
  temperature, n = 0.3, 4000
  for d in (-0.6, -0.2, 0.2, 0.6):
    sim = simulate_labels(
      np.full(n, d), np.zeros(n), temperature=temperature, flip_prob=flip_prob, seed=11
    )
    p = _sigmoid(d / temperature)
    q = (1 - flip_prob) * p + flip_prob * (1 - p)
    freq = np.mean(sim.labels == 0)
    assert abs(freq - q) <= 4 * np.sqrt(q * (1 - q) / n), (d, freq, q)
    assert np.all(sim.labels != 2)
    np.testing.assert_allclose(sim.prob_a, q)


def test_equal_scores_are_a_tie_even_without_a_threshold():
  sim = simulate_labels(
    np.array([0.0, 0.3, 0.2]),
    np.array([0.0, 0.3, 0.1]),
    temperature=0.2,
    tie_threshold=0.0,
    flip_prob=0.3,
    seed=0,
  )
  np.testing.assert_array_equal(sim.labels[:2], [2, 2])
  assert sim.labels[2] != 2


def test_ties_occur_exactly_below_tau():
  diffs = np.array([0.0, 0.05, 0.0999, -0.0999, 0.1, -0.1, 0.1001, 0.5, -0.5])
  sim = simulate_labels(
    diffs, np.zeros_like(diffs), temperature=0.2, tie_threshold=0.1, flip_prob=0.3, seed=0
  )
  np.testing.assert_array_equal(sim.labels == 2, np.abs(diffs) < 0.1)
  np.testing.assert_array_equal(sim.prob_tie, (np.abs(diffs) < 0.1).astype(float))
  assert np.all(sim.prob_a[sim.labels == 2] == 0.0) and not sim.flipped[sim.labels == 2].any()
  # Many random pairs: every label is a tie iff |d| < τ.
  rng = np.random.default_rng(1)
  a, b = rng.uniform(-1, 1, 5000), rng.uniform(-1, 1, 5000)
  many = simulate_labels(a, b, temperature=0.1, tie_threshold=0.25, seed=2)
  np.testing.assert_array_equal(many.labels == 2, np.abs(a - b) < 0.25)


def test_flip_rate_is_honoured():
  n, flip = 20000, 0.2
  rng = np.random.default_rng(3)
  diffs = rng.choice([-1.0, 1.0], size=n)
  sim = simulate_labels(diffs, np.zeros(n), temperature=0.0, flip_prob=flip, seed=4)
  truth = np.where(diffs > 0, 0, 1)
  wrong = sim.labels != truth
  np.testing.assert_array_equal(wrong, sim.flipped)
  assert abs(wrong.mean() - flip) <= 4 * np.sqrt(flip * (1 - flip) / n)
  coin = simulate_labels(np.full(n, 1e-12), np.zeros(n), temperature=1e6, seed=5)
  assert abs(np.mean(coin.labels == 0) - 0.5) <= 4 * np.sqrt(0.25 / n)


def test_seeded_and_validated():
  a, b = np.linspace(-1, 1, 50), np.zeros(50)
  one = simulate_labels(a, b, temperature=0.5, flip_prob=0.1, seed=7)
  np.testing.assert_array_equal(
    one.labels, simulate_labels(a, b, temperature=0.5, flip_prob=0.1, seed=7).labels
  )
  assert not np.array_equal(
    one.labels, simulate_labels(a, b, temperature=0.5, flip_prob=0.1, seed=8).labels
  )
  for kwargs, match in [
    ({"flip_prob": 1.5}, "flip_prob"),
    ({"tie_threshold": -1.0}, "tie_threshold"),
    ({"temperature": -1.0}, "temperature"),
  ]:
    args = {"temperature": 0.5, **kwargs}
    with pytest.raises(ValueError, match=match):
      simulate_labels(a, b, seed=0, **args)
  with pytest.raises(ValueError, match="finite"):
    simulate_labels(np.array([np.nan]), np.array([0.0]), temperature=1.0, seed=0)


def test_annotate_pairs_records_seed_and_reproduces_each_label():
  prompts = [f"p{i}" for i in range(40)]
  a = [str(x) for x in np.linspace(-1, 1, 40)]
  b = ["0.0"] * 40
  recs = annotate_pairs(
    numeric_scorer,
    prompts,
    a,
    b,
    temperature=0.4,
    tie_threshold=0.05,
    flip_prob=0.1,
    seed=123,
    round=2,
    annotator="sim-pop",
    extra_metadata={"policy_step": 10},
  )
  assert len(recs) == 40
  meta = recs[5].metadata
  assert (
    meta["seed"] == 123
    and meta["index"] == 5
    and meta["round"] == 2
    and meta["annotator"] == "sim-pop"
  )
  assert meta["source"] == "simulated:numeric_scorer" and meta["policy_step"] == 10
  assert meta["gold_a"] == float(a[5]) and meta["gold_b"] == 0.0
  sim = simulate_labels(
    np.array([float(x) for x in a]),
    np.zeros(40),
    temperature=0.4,
    tie_threshold=0.05,
    flip_prob=0.1,
    seed=meta["seed"],
  )
  assert [r.label for r in recs] == [("a", "b", "tie")[i] for i in sim.labels]
  with pytest.raises(ValueError, match="lengths differ"):
    annotate_pairs(numeric_scorer, prompts, a[:3], b, temperature=0.4, seed=0)


def test_simulated_annotator_is_a_judge():
  judge = simulated_annotator(numeric_scorer, temperature=0.0, tie_threshold=0.1, seed=0)
  out = judge(["p"] * 3, ["1.0", "0.0", "0.5"], ["0.0", "1.0", "0.55"])
  assert isinstance(out, JudgeOutput)
  assert out.labels.tolist() == [0, 1, 2]
  noisy = simulated_annotator(numeric_scorer, temperature=1.0, seed=0)
  pairs = (["p"] * 200, ["0.1"] * 200, ["0.0"] * 200)
  assert np.array_equal(noisy(*pairs).labels, noisy(*pairs).labels)
  assert not np.array_equal(noisy(*pairs, seed=1).labels, noisy(*pairs, seed=2).labels)

  def bad_scorer(prompts, responses):
    return np.zeros(3)

  with pytest.raises(ValueError, match="scorer returned shape"):
    simulated_annotator(bad_scorer, temperature=1.0)(["p"], ["a"], ["b"])
