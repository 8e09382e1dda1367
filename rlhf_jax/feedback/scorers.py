"""Built-in gold scorers: independent, offline measures of a response.

A scorer is `scorer(prompts: list[str], responses: list[str]) -> np.ndarray float32 [N]` (higher is
better). The prompt is passed for scorers that need it; the built-ins here score the response
text alone. All run on CPU, batch-friendly, and need no download at run time.

* `vader_sentiment`: VADER compound sentiment of the response, in [-1, 1] (`vaderSentiment`).
* `kind_and_clean`: VADER compound minus `weight` × P(offensive). P(offensive) comes from
  `alt-profanity-check` (a linear model shipped in its wheel) when that package is importable,
  and otherwise from the small built-in lexicon in `lexicon_offensiveness`; `offensiveness`
  reports which backend is used.
* `response_length`: number of words in the response.
* `offensiveness`: P(offensive) alone, in [0, 1].
* `assistant_gold`: the assistant task's programmatic checks (`rlhf_jax.feedback.assistant`), in
  [0, 1]; it reads the prompt to know which checks apply.
* `assistant_independent`: the assistant task's independent judge
  (`rlhf_jax.feedback.assistant_independent`): the same behaviours from other evidence, for
  evaluation only, in [0, 1].
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
  "BUILTIN_SCORERS",
  "vader_sentiment",
  "kind_and_clean",
  "make_kind_and_clean",
  "offensiveness",
  "offensiveness_backend",
  "lexicon_offensiveness",
  "response_length",
  "afinn_sentiment",
  "afinn_kindness",
  "assistant_gold",
  "assistant_independent",
  "get_scorer",
]


def _check(prompts: Sequence[str], responses: Sequence[str]) -> None:
  if isinstance(responses, str) or isinstance(prompts, str):
    raise TypeError("scorers take lists of strings, got a single str")
  if len(prompts) != len(responses):
    raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")


@functools.lru_cache(maxsize=1)
def _vader():
  from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

  return SentimentIntensityAnalyzer()


def vader_sentiment(prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
  """VADER compound sentiment of each response. Returns float32 [N] in [-1, 1] (0 for empty or
  neutral text)."""
  _check(prompts, responses)
  analyzer = _vader()
  return np.asarray([analyzer.polarity_scores(r)["compound"] for r in responses], dtype=np.float32)


def response_length(prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
  """Whitespace-separated words in each response. Returns float32 [N]."""
  _check(prompts, responses)
  return np.asarray([len(r.split()) for r in responses], dtype=np.float32)


# Fallback lexicon: profanity and insults (lower case; no slurs listed). Used only when
# alt-profanity-check is not installed. P(offensive) = 1 - 0.5 ** (number of hits), so one hit
# gives 0.5, two 0.75, three 0.875.
_OFFENSIVE_WORDS = frozenset(
  """
    arse arsehole ass asshole bastard bitch bitches bollocks bullshit crap crappy cunt damn dick
    dickhead dumbass fuck fucked fucker fucking goddamn idiot idiots idiotic imbecile jackass jerk
    loser moron morons moronic motherfucker piss pissed prick retard retarded scum scumbag shit
    shitty slut stupid twat wanker whore worthless
    """.split()
)
_WORD = re.compile(r"[a-z']+")


def lexicon_offensiveness(responses: Sequence[str]) -> np.ndarray:
  """Fallback P(offensive) from the built-in word list: `1 - 0.5 ** hits`. float32 [N] in [0, 1)."""
  hits = [
    sum(w.strip("'") in _OFFENSIVE_WORDS for w in _WORD.findall(r.lower())) for r in responses
  ]
  return (1.0 - 0.5 ** np.asarray(hits, dtype=np.float64)).astype(np.float32)


@functools.lru_cache(maxsize=1)
def _profanity_predict_prob() -> Callable | None:
  try:
    from profanity_check import predict_prob
  except Exception:  # not installed, or its scikit-learn pickle does not load
    return None
  return predict_prob


def offensiveness_backend() -> str:
  """`"alt-profanity-check"` when that package loads, else `"lexicon"`."""
  return "alt-profanity-check" if _profanity_predict_prob() is not None else "lexicon"


def offensiveness(
  prompts: Sequence[str], responses: Sequence[str], *, backend: str = "auto"
) -> np.ndarray:
  """P(response is offensive), float32 [N] in [0, 1].

  Args:
    backend: "auto" (alt-profanity-check if installed, else lexicon), "profanity_check" (error if
      missing) or "lexicon".
  """
  _check(prompts, responses)
  if backend not in ("auto", "profanity_check", "lexicon"):
    raise ValueError(f"backend must be 'auto', 'profanity_check' or 'lexicon', got {backend!r}")
  if not responses:
    return np.zeros((0,), np.float32)
  predict = None if backend == "lexicon" else _profanity_predict_prob()
  if predict is None:
    if backend == "profanity_check":
      raise ImportError(
        "backend='profanity_check' needs the package alt-profanity-check "
        "(pip install alt-profanity-check==1.9.1)"
      )
    return lexicon_offensiveness(responses)
  return np.asarray(predict(list(responses)), dtype=np.float32)


def make_kind_and_clean(
  weight: float = 1.0, backend: str = "auto"
) -> Callable[[Sequence[str], Sequence[str]], np.ndarray]:
  """A scorer `vader_compound(response) - weight * offensiveness(response)`, in [-1 - weight, 1]."""

  def kind_and_clean(prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
    return vader_sentiment(prompts, responses) - np.float32(weight) * offensiveness(
      prompts, responses, backend=backend
    )

  kind_and_clean.__name__ = "kind_and_clean"
  return kind_and_clean


def kind_and_clean(prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
  """VADER compound minus P(offensive) (weight 1, backend "auto"). float32 [N] in [-2, 1]."""
  return make_kind_and_clean(1.0, "auto")(prompts, responses)


@functools.lru_cache(maxsize=1)
def _afinn():
  from afinn import Afinn

  return Afinn()


def afinn_sentiment(prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
  """AFINN word-list sentiment squashed to [-1, 1]: `tanh(sum of word valences / 5)`.

  A different judge from VADER on purpose: a plain word sum with no negation, intensifier
  or punctuation rules. float32 [N].
  """
  _check(prompts, responses)
  afinn = _afinn()
  return np.tanh(np.asarray([afinn.score(r) for r in responses], np.float64) / 5.0).astype(
    np.float32
  )


def afinn_kindness(prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
  """AFINN sentiment minus the word-list offensiveness (`lexicon_offensiveness`): a labeller
  that agrees with `kind_and_clean` in spirit but not in its lexicon or its classifier.
  float32 [N] in [-2, 1]."""
  return afinn_sentiment(prompts, responses) - lexicon_offensiveness(responses)


def assistant_gold(prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
  """The assistant task's gold judge: `rlhf_jax.feedback.assistant.assistant_gold` (imported on
  first use). float32 [N] in [0, 1]; raises ValueError on a prompt the task did not generate."""
  from rlhf_jax.feedback import assistant

  return assistant.assistant_gold(prompts, responses)


def assistant_independent(prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
  """The assistant task's independent judge:
  `rlhf_jax.feedback.assistant_independent.assistant_independent` (imported on first use).
  float32 [N] in [0, 1]; raises ValueError on a prompt the task did not generate."""
  from rlhf_jax.feedback import assistant_independent

  return assistant_independent.assistant_independent(prompts, responses)


BUILTIN_SCORERS: dict[str, Callable[[Sequence[str], Sequence[str]], np.ndarray]] = {
  "vader_sentiment": vader_sentiment,
  "afinn_sentiment": afinn_sentiment,
  "afinn_kindness": afinn_kindness,
  "kind_and_clean": kind_and_clean,
  "offensiveness": offensiveness,
  "response_length": response_length,
  "assistant_gold": assistant_gold,
  "assistant_independent": assistant_independent,
}


def get_scorer(name_or_spec: str) -> Callable[[Sequence[str], Sequence[str]], np.ndarray]:
  """A built-in scorer by name (`BUILTIN_SCORERS`) or any `"module:function"`."""
  if name_or_spec in BUILTIN_SCORERS:
    return BUILTIN_SCORERS[name_or_spec]
  if ":" not in name_or_spec:
    raise ValueError(
      f"unknown scorer {name_or_spec!r}: use one of {sorted(BUILTIN_SCORERS)} or 'module:function'"
    )
  from rlhf_jax.feedback.judges import load_callable

  return load_callable(name_or_spec)
