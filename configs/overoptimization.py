r"""Reward over-optimisation: proxies trained on 256 / 1024 / 4096 labels, optimised by
best-of-n (n = 1..16) and by PPO with a weak KL penalty; gold (VADER) and proxy reward
against sqrt(KL), with Gao et al.'s functional forms fitted (alpha, beta, R^2).

  python -m rlhf_jax.main --config configs/overoptimization.py --workdir runs/overopt
  # reuse the main job's base model instead of pretraining another one:
  python -m rlhf_jax.main --config configs/overoptimization.py --workdir runs/overopt \
      --config.base.path=runs/sentiment/base/model

Expect the proxy reward to keep rising with KL while gold reward rises less, and for the
smallest label count to flatten or fall; see overoptimization.md and .png in the workdir.
A smoke variant (configs/overoptimization.py:smoke) runs in a few minutes.

Recorded run (docs/results/overoptimization/, 11 minutes on 2 CPU cores with the main job's
base model): at KL 16 the PPO proxy gains are +2.5 / +2.1 / +3.4 for 256 / 1024 / 4096
labels, the gold gains +0.12 / +0.05 / +0.77; the 256-label policy's gold gain then falls
to +0.03 at KL 22 while its proxy keeps rising. Best-of-16 (KL 1.83): gold +0.03 / +0.06 /
+0.30 for proxy +1.8 / +1.6 / +1.8.
"""

from rlhf_jax.config_schema import config_module

common = config_module(__file__, "common")


VARIANTS = ("default", "smoke")  # configs/overoptimization.py:<variant>


def get_config(arg=None):
  variant = arg or "default"
  if variant not in VARIANTS:
    raise ValueError(
      f"configs/overoptimization.py: unknown variant {variant!r}; use 'default' or 'smoke'"
    )
  c = common.sentiment(variant)
  c.task = "overoptimization"  # the trainer (rlhf_jax.train.overoptimization)
  for key in ("rounds", "eval", "targets", "lora"):  # pipeline fields the study has no use for
    del c[key]
  c.label_counts = (256, 1024, 4096)  # labels each proxy reward model is trained on
  c.bon_ns = (1, 2, 4, 8, 16)  # best-of-n sizes
  c.num_eval_prompts = 128  # prompts of every evaluation point
  c.ppo_eval_every = 6  # PPO iterations between evaluation points
  c.ppo.iterations = 24  # PPO iterations per proxy
  c.ppo.init_kl_coef = 0.02  # a weak, fixed KL penalty ...
  c.ppo.hparams.adaptive_kl = False  # ... not adapted
  c.ppo.hparams.epochs = 4  # passes over each rollout batch
  if variant == "smoke":  # minutes on a laptop
    c.label_counts = (32, 128)
    c.bon_ns = (1, 2, 4)
    c.num_eval_prompts = 32
    c.ppo.iterations = 4
    c.ppo_eval_every = 2
  return c
