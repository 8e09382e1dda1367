"""Simulated human annotators built on an independent (gold) scorer.

For a pair with gold scores g_a, g_b (d = g_a - g_b), an annotator population with temperature T,
tie threshold τ and flip rate f labels

    tie                           if |d| < τ or d = 0              (deterministic)
    a   with probability  q = (1 - f) · σ(d / T) + f · (1 - σ(d / T))   otherwise
    b   with probability  1 - q

i.e. a Bradley-Terry choice σ(d / T) (T = 0: always the higher score)
whose answer is then swapped with probability f (annotator disagreement / mistakes). Draws come
from `numpy.random.default_rng(seed)`: first one uniform per pair for the Bradley-Terry choice,
then one per pair for the flip, so a (seed, pair index) reproduces a label exactly. The seed and
pair index are recorded in every record's metadata.

Biased annotators (optional): given a per-pair preference p_i ∈ {a, b, none} (e.g. "the response
that agrees with the user", `rlhf_jax.feedback.assistant.agreement_preference`) and a bias β, a
third uniform per pair (drawn after the other two, so β = 0 leaves every label as above) decides
whether the annotator ignores the gold scores: with probability β a pair with a preference gets
the preferred label, tie or not; otherwise the label above. Then P(a) = β·[p_i = a] + (1 - β)·q.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from rlhf_jax.data.preferences import PreferenceRecord
from rlhf_jax.feedback.judges import JudgeOutput
from rlhf_jax.labels import LABEL_A, LABEL_B, LABEL_TIE, decode_label

__all__ = [
  "SimulatedLabels",
  "bradley_terry_prob",
  "simulate_labels",
  "simulated_annotator",
  "annotate_pairs",
]


@dataclasses.dataclass(frozen=True)
class SimulatedLabels:
  """Result of `simulate_labels` for N pairs.

  Attributes:
    labels: int32 [N], 0 = a, 1 = b, 2 = tie.
    prob_a: float64 [N], P(label = a) under the model, flips included (0 where tied).
    prob_tie: float64 [N], 1 where |d| < τ else 0.
    flipped: bool [N], whether the Bradley-Terry choice was swapped (False where tied or biased).
    gold_a, gold_b: float64 [N], the scores used.
    biased: bool [N], whether the label is the preferred one instead of the gold-based one (None
      when no preference was given).
  """

  labels: np.ndarray
  prob_a: np.ndarray
  prob_tie: np.ndarray
  flipped: np.ndarray
  gold_a: np.ndarray
  gold_b: np.ndarray
  biased: np.ndarray | None = None

  def judge_output(self) -> JudgeOutput:
    return JudgeOutput(prob_a=self.prob_a, labels=self.labels, prob_tie=self.prob_tie)


def bradley_terry_prob(gold_a: np.ndarray, gold_b: np.ndarray, temperature: float) -> np.ndarray:
  """σ((g_a - g_b) / T) as float64 [N]; for T = 0 the step function (0.5 where g_a = g_b)."""
  d = np.asarray(gold_a, np.float64) - np.asarray(gold_b, np.float64)
  if temperature < 0:
    raise ValueError(f"temperature must be >= 0, got {temperature}")
  if temperature == 0:
    return np.where(d > 0, 1.0, np.where(d < 0, 0.0, 0.5))
  return 0.5 * (1.0 + np.tanh(d / (2.0 * temperature)))  # = σ(d / T), stable for large |d|


def simulate_labels(
  gold_a: np.ndarray,
  gold_b: np.ndarray,
  *,
  temperature: float,
  tie_threshold: float = 0.0,
  flip_prob: float = 0.0,
  seed: int,
  preferred: np.ndarray | None = None,
  bias: float = 0.0,
) -> SimulatedLabels:
  """Sample labels for pairs with gold scores `gold_a`, `gold_b` (float [N] each); see the module
  docstring for the model. Pure function of its arguments.

  Args:
    preferred: optional int [N], the label a biased annotator picks (0 = a, 1 = b, -1 = none).
    bias: probability in [0, 1] that a pair with a preference gets the preferred label.
  """
  gold_a = np.asarray(gold_a, np.float64)
  gold_b = np.asarray(gold_b, np.float64)
  if gold_a.ndim != 1 or gold_a.shape != gold_b.shape:
    raise ValueError(f"gold_a {gold_a.shape} and gold_b {gold_b.shape} must both be [N]")
  if not np.all(np.isfinite(gold_a)) or not np.all(np.isfinite(gold_b)):
    raise ValueError("gold scores must be finite")
  if tie_threshold < 0:
    raise ValueError(f"tie_threshold must be >= 0, got {tie_threshold}")
  if not 0.0 <= flip_prob <= 1.0:
    raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
  if not 0.0 <= bias <= 1.0:
    raise ValueError(f"bias must be in [0, 1], got {bias}")
  if preferred is not None:
    preferred = np.asarray(preferred)
    if preferred.shape != gold_a.shape or not np.all(np.isin(preferred, (-1, 0, 1))):
      raise ValueError(f"preferred must be [N] = {gold_a.shape} with values -1, 0, 1")
  rng = np.random.default_rng(seed)
  n = gold_a.shape[0]
  p = bradley_terry_prob(gold_a, gold_b, temperature)
  choose_a = rng.random(n) < p
  flip = rng.random(n) < flip_prob
  # The one tie convention (rlhf_jax.evaluation.gold_labels): equal scores are a tie too.
  tie = (np.abs(gold_a - gold_b) < tie_threshold) | (gold_a == gold_b)
  says_a = choose_a ^ flip
  labels = np.where(tie, LABEL_TIE, np.where(says_a, LABEL_A, LABEL_B)).astype(np.int32)
  q = (1.0 - flip_prob) * p + flip_prob * (1.0 - p)
  prob_a = np.where(tie, 0.0, q)
  prob_tie = tie.astype(np.float64)
  biased = None
  if preferred is not None:
    has_pref = preferred >= 0
    biased = has_pref & (rng.random(n) < bias)
    labels = np.where(biased, preferred, labels).astype(np.int32)
    prob_a = np.where(has_pref, bias * (preferred == LABEL_A) + (1.0 - bias) * prob_a, prob_a)
    prob_tie = np.where(has_pref, (1.0 - bias) * prob_tie, prob_tie)
  return SimulatedLabels(
    labels=labels,
    prob_a=prob_a,
    prob_tie=prob_tie,
    flipped=flip & ~tie & (True if biased is None else ~biased),
    gold_a=gold_a,
    gold_b=gold_b,
    biased=biased,
  )


def _gold(
  scorer: Callable[[Sequence[str], Sequence[str]], np.ndarray],
  prompts: Sequence[str],
  responses_a: Sequence[str],
  responses_b: Sequence[str],
) -> tuple[np.ndarray, np.ndarray]:
  n = len(prompts)
  if len(responses_a) != n or len(responses_b) != n:
    raise ValueError(
      f"{n} prompts, {len(responses_a)} responses_a, {len(responses_b)} responses_b: lengths differ"
    )
  scores = np.asarray(
    scorer(list(prompts) * 2, list(responses_a) + list(responses_b)), dtype=np.float64
  )
  if scores.shape != (2 * n,):
    raise ValueError(
      f"scorer returned shape {scores.shape} for {2 * n} responses; expected [{2 * n}]"
    )
  return scores[:n], scores[n:]


def _preference(
  preference_fn: Callable[[Sequence[str], Sequence[str], Sequence[str]], np.ndarray] | None,
  prompts: Sequence[str],
  responses_a: Sequence[str],
  responses_b: Sequence[str],
) -> np.ndarray | None:
  if preference_fn is None:
    return None
  pref = np.asarray(preference_fn(list(prompts), list(responses_a), list(responses_b)))
  if pref.shape != (len(prompts),):
    raise ValueError(
      f"preference_fn returned shape {pref.shape} for {len(prompts)} pairs; expected "
      f"[{len(prompts)}] of -1 (none), 0 (a), 1 (b)"
    )
  return pref


def simulated_annotator(
  scorer: Callable[[Sequence[str], Sequence[str]], np.ndarray],
  *,
  temperature: float,
  tie_threshold: float = 0.0,
  flip_prob: float = 0.0,
  seed: int = 0,
  preference_fn: Callable[[Sequence[str], Sequence[str], Sequence[str]], np.ndarray] | None = None,
  bias: float = 0.0,
):
  """A judge (see `rlhf_jax.feedback.judges`) backed by a scorer and the annotator model.

  `preference_fn(prompts, responses_a, responses_b) -> int [N]` (0 = a, 1 = b, -1 = none) and
  `bias` make the annotators biased (module docstring); None (default) means unbiased.

  Returns:
    `judge(prompts, responses_a, responses_b, *, seed=None) -> JudgeOutput`; `seed` overrides the
    default given here (pass a new one per round for fresh noise).
  """

  def judge(
    prompts: Sequence[str],
    responses_a: Sequence[str],
    responses_b: Sequence[str],
    *,
    seed: int | None = None,
  ) -> JudgeOutput:
    gold_a, gold_b = _gold(scorer, prompts, responses_a, responses_b)
    return simulate_labels(
      gold_a,
      gold_b,
      temperature=temperature,
      tie_threshold=tie_threshold,
      flip_prob=flip_prob,
      seed=default_seed if seed is None else seed,
      preferred=_preference(preference_fn, prompts, responses_a, responses_b),
      bias=bias,
    ).judge_output()

  default_seed = seed
  judge.__name__ = f"simulated_{getattr(scorer, '__name__', 'scorer')}"
  return judge


def annotate_pairs(
  scorer: Callable[[Sequence[str], Sequence[str]], np.ndarray],
  prompts: Sequence[str],
  responses_a: Sequence[str],
  responses_b: Sequence[str],
  *,
  temperature: float,
  tie_threshold: float = 0.0,
  flip_prob: float = 0.0,
  seed: int,
  annotator: str = "simulated",
  round: int | None = None,
  extra_metadata: Mapping[str, Any] | None = None,
  preference_fn: Callable[[Sequence[str], Sequence[str], Sequence[str]], np.ndarray] | None = None,
  bias: float = 0.0,
) -> list[PreferenceRecord]:
  """Label pairs with a simulated annotator and return `PreferenceRecord`s.

  Each record's metadata: annotator, source (`"simulated:<scorer name>"`), seed, index (the pair's
  position, which with the seed reproduces its draw), probability (P(label = a) under the model,
  0 for ties), gold_a, gold_b, flipped, temperature, tie_threshold, flip_prob, round (if given),
  with a `preference_fn` also bias and biased (whether the label is the preferred one), plus
  `extra_metadata`.

  Args:
    scorer: `(prompts, responses) -> float [N]`, e.g. `rlhf_jax.feedback.scorers.vader_sentiment`.
    prompts, responses_a, responses_b: lists of N str.
    temperature, tie_threshold, flip_prob, seed: the annotator model (module docstring).
    preference_fn, bias: optional biased annotators (module docstring), e.g.
      `rlhf_jax.feedback.assistant.agreement_preference` for sycophancy.
  Returns:
    list of N PreferenceRecord.
  """
  gold_a, gold_b = _gold(scorer, prompts, responses_a, responses_b)
  sim = simulate_labels(
    gold_a,
    gold_b,
    temperature=temperature,
    tie_threshold=tie_threshold,
    flip_prob=flip_prob,
    seed=seed,
    preferred=_preference(preference_fn, prompts, responses_a, responses_b),
    bias=bias,
  )
  base: dict[str, Any] = {
    "annotator": annotator,
    "source": f"simulated:{getattr(scorer, '__name__', type(scorer).__name__)}",
    "seed": int(seed),
    "temperature": float(temperature),
    "tie_threshold": float(tie_threshold),
    "flip_prob": float(flip_prob),
  }
  if round is not None:
    base["round"] = int(round)
  if preference_fn is not None:
    base["bias"] = float(bias)
  base.update(extra_metadata or {})
  return [
    PreferenceRecord(
      p,
      a,
      b,
      decode_label(sim.labels[i]),
      {
        **base,
        "index": i,
        "probability": float(sim.prob_a[i]),
        "gold_a": float(gold_a[i]),
        "gold_b": float(gold_b[i]),
        "flipped": bool(sim.flipped[i]),
        **({} if sim.biased is None else {"biased": bool(sim.biased[i])}),
      },
    )
    for i, (p, a, b) in enumerate(zip(prompts, responses_a, responses_b))
  ]
