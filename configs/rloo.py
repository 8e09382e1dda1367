r"""RLOO on the sentiment task: the sentiment run with two responses a pair
(configs/sentiment.py:pairwise) with a critic-free policy stage.

Each round's policy stage is RLOO (Ahmadian et al. 2024): every prompt is sampled
`group_size` times inside the compiled iteration and a response's advantage is its total
reward (score minus the β-weighted per-token KL penalty, as in PPO) minus the mean reward of
the other `group_size - 1` samples of its prompt. No value model; the clipped update, the
token-mean loss and the adaptive KL controller are PPO's. Everything else — data, base model,
simulated labels, the reward model trained each round, evaluation and report — is the
sentiment run's, so the numbers compare with configs/sentiment.py:pairwise (PPO),
configs/grpo.py and configs/dpo.py.

  python -m rlhf_jax.main --config configs/rloo.py --workdir runs/rloo
  python -m rlhf_jax.main --config configs/rloo.py:smoke --workdir runs/rloo_smoke
  python -m rlhf_jax.main --config configs/rloo.py:reinforce_pp --workdir runs/reinforce_pp

Variant `reinforce_pp` (Hu 2025, REINFORCE++): one sample per prompt, the KL-shaped
return-to-go whitened over the batch as the advantage. Policy samples per round equal the
PPO run's (64 rollouts an iteration, 24 iterations). Not tuned; measured side by side by
configs/algorithms.py (docs/results/algorithms/: 3 seeds, round 1, win rate 0.923 [0.885,
0.960] at KL 7.99 — the controller overshoots the 5.5-nat target); the targets are the
sentiment run's.
"""

from rlhf_jax.config_schema import config_module

common = config_module(__file__, "common")


VARIANTS = ("default", "smoke", "reinforce_pp", "reinforce_pp_smoke")


def get_config(arg=None):
  variant = arg or "default"
  if variant not in VARIANTS:
    raise ValueError(f"configs/rloo.py: unknown variant {arg!r}; use one of {VARIANTS}")
  smoke = variant.endswith("smoke")
  c = common.sentiment("smoke" if smoke else "default")
  c.ppo.hparams.update(
    algorithm="rloo",
    group_size=4,  # samples per prompt; the baseline is the mean of the other 3 (>= 2 needed)
    kl_in_loss=False,  # the KL is PPO's per-token reward penalty (kl_estimator k1)
    loss_reduction="token",  # Σ m ℓ / Σ m over the minibatch, as PPO
  )
  # ppo.batch_size counts prompts: 16 x group_size 4 = 64 rollouts an iteration, PPO's 64.
  c.ppo.batch_size = 16
  if variant.startswith("reinforce_pp"):
    # One sample per prompt; advantages are whitened KL-shaped returns-to-go.
    c.ppo.hparams.update(algorithm="reinforce_pp", group_size=1)
    c.ppo.batch_size = 64
  if smoke:
    c.ppo.batch_size = 32 if variant.startswith("reinforce_pp") else 8  # 32 rollouts
  return c
