r"""A second task: continue sentence openings so that the text is kind and clean.

Gold judge (evaluation only): VADER sentiment minus an offensiveness probability from a
trained classifier (alt-profanity-check), `kind_and_clean`. Labeller: deliberately different
simulated annotators built on AFINN word valences minus a word-list offensiveness score
(`afinn_kindness`) — no negation handling, a different lexicon, no classifier. The report
gives the labeller's agreement with the gold judge (label_agreement_with_gold), so the gap
between what the reward model learns and what is evaluated is visible. Independent second
judge (no label came from it): VADER sentiment alone, `vader_sentiment`.

  python -m rlhf_jax.main --config configs/kind.py --workdir runs/kind
  python -m rlhf_jax.main --config configs/kind.py:smoke --workdir runs/kind_smoke

Everything else is the sentiment run with two responses a pair and 24 PPO iterations
(configs/sentiment.py:pairwise); expect a gold win rate well
above 50% with a smaller margin than the sentiment task, since the labeller is not the gold
judge.

Recorded run (docs/results/kind/, with the sentiment run's base model via
--config.base.path=runs/sentiment/base/model): the labeller agrees with the gold judge on
50% / 63% of pairs (kappa 0.26 / 0.37) in rounds 1 / 2, the reward model orders 58% / 66%
of gold-labelled held-out pairs correctly, and the policy still wins 0.840 [0.790, 0.880]
at KL 7.4, then 0.877 [0.831, 0.912] at KL 5.5 against the reference under the gold judge.
"""

from rlhf_jax.config_schema import config_module

common = config_module(__file__, "common")


VARIANTS = common.SENTIMENT_VARIANTS  # those of configs/sentiment.py


def get_config(arg=None):
  if (arg or "default") not in VARIANTS:
    raise ValueError(f"configs/kind.py: unknown variant {arg!r}; use one of {VARIANTS}")
  c = common.sentiment(arg or "default")
  c.feedback.gold_scorer = "kind_and_clean"  # gold: VADER minus offensiveness (classifier)
  c.feedback.labeller_scorer = "afinn_kindness"  # labeller: AFINN minus a word-list score
  c.feedback.temperature = 0.15  # annotator noise on the AFINN-based score's scale
  # A judge no label came from (the labeller is AFINN-based): VADER sentiment alone.
  c.eval.independent_judges = ("vader_sentiment",)  # scorer names or "module:function"
  c.targets = dict(win_rate=">= 0.7", kl="<= 6")  # checked against the last round
  return c
