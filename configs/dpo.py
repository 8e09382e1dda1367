r"""Online (iterated) DPO on the sentiment task: the sentiment run with two responses a pair
(configs/sentiment.py:pairwise), the policy trained directly on each round's preference
labels.

Each round samples two responses per prompt from the current policy, the simulated
annotators label them (a, b or tie), and the policy stage is DPO (Rafailov et al. 2023) on
THAT round's pairs, starting from the round's policy: round r learns from pairs sampled from
the round r-1 policy. The reference of the implicit reward β (log π - log π_ref) is the
frozen base model in every round — the model each round's KL is measured against, so the
implicit KL regularisation and the reported KL agree (a moving reference would let each round
drift a further β-worth from the last). No rollouts and no value model. The reward model is
still trained each round: evaluation reports its accuracy and the proxy reward.

Ties: the labels include ties (two responses whose gold scores differ by less than
feedback.tie_threshold). The default variant learns from them as DPO with Rao-Kupper ties:
a tie label's likelihood is largest at equal implicit rewards, with θ learned alongside the
policy. `bradley_terry` is plain DPO (a tie is half a win each way); `ipo` is IPO (Azar et
al. 2023), whose squared loss pulls a tie's log-ratio gap to 0 and a decided pair's to
1 / (2β).

  python -m rlhf_jax.main --config configs/dpo.py --workdir runs/dpo
  python -m rlhf_jax.main --config configs/dpo.py:smoke --workdir runs/dpo_smoke
  python -m rlhf_jax.main --config configs/dpo.py:ipo --workdir runs/ipo

Labels per round equal the PPO run's (feedback.pairs_per_round). Not tuned; measured side by
side by configs/algorithms.py (docs/results/algorithms/: 3 seeds, round 1, win rate 0.773
[0.724, 0.822] at KL 4.02, below PPO's 0.893); the targets are the sentiment run's.
"""

from rlhf_jax.config_schema import config_module

common = config_module(__file__, "common")


VARIANTS = ("default", "smoke", "ipo", "ipo_smoke", "bradley_terry", "bradley_terry_smoke")


def get_config(arg=None):
  variant = arg or "default"
  if variant not in VARIANTS:
    raise ValueError(f"configs/dpo.py: unknown variant {arg!r}; use one of {VARIANTS}")
  smoke = variant.endswith("smoke")
  c = common.sentiment("smoke" if smoke else "default")
  # The one field that picks the policy stage's algorithm: "dpo" (the sigmoid loss, ties
  # through dpo.tie_model) or "ipo". Response length, sampling temperature and the stop
  # token still come from ppo.hparams; the other ppo.* settings are unused.
  c.ppo.hparams.update(algorithm="dpo")
  c.dpo = dict(
    beta=0.1,  # implicit reward β (log π - log π_ref): smaller lets the policy move further
    label_smoothing=0.0,  # conservative DPO's ε: the fraction of labels assumed flipped
    tie_model="rao_kupper",  # "bradley_terry" | "rao_kupper" | "davidson"
    tie_param=1.5,  # θ: P(tie | equal implicit rewards) = (θ - 1) / (θ + 1) = 0.2
    learn_tie_param=True,  # θ by gradient, with its own Adam learning rate
    tie_learning_rate=0.05,
    epochs=2,  # passes over the round's pairs
    batch_size=32,  # pairs per step: 4096 pairs x 2 epochs = 256 steps a round
    optimizer=dict(
      name="adamw",
      learning_rate=5e-5,
      anneal=True,
      warmup_steps=10,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      weight_decay=0.0,
      max_grad_norm=1.0,
    ),
  )
  if variant.startswith("ipo"):
    # IPO models ties itself (h² for a tie): no tie model, no label smoothing.
    c.ppo.hparams.update(algorithm="ipo")
    c.dpo.update(tie_model="bradley_terry", learn_tie_param=False)
  if variant.startswith("bradley_terry"):
    c.dpo.update(tie_model="bradley_terry", learn_tie_param=False)
  if smoke:
    c.dpo.batch_size = 16  # 128 pairs a round: 8 steps an epoch
  return c
