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

import importlib.util
import os


def _sentiment():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sentiment.py")
  spec = importlib.util.spec_from_file_location("_rlhf_jax_sentiment_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


VARIANTS = ("default", "smoke")  # configs/overoptimization.py:<variant>


def get_config(arg=None):
  variant = arg or "default"
  if variant not in VARIANTS:
    raise ValueError(
      f"configs/overoptimization.py: unknown variant {variant!r}; use 'default' or 'smoke'"
    )
  c = _sentiment().get_config(variant)
  c.task = "overoptimization"
  for key in ("rounds", "eval", "targets"):
    del c[key]
  c.label_counts = (256, 1024, 4096)
  c.bon_ns = (1, 2, 4, 8, 16)
  c.num_eval_prompts = 128
  c.ppo_eval_every = 6
  c.ppo.iterations = 24
  c.ppo.init_kl_coef = 0.02
  c.ppo.hparams.adaptive_kl = False
  c.ppo.hparams.epochs = 4
  if variant == "smoke":
    c.label_counts = (32, 128)
    c.bon_ns = (1, 2, 4)
    c.num_eval_prompts = 32
    c.ppo.iterations = 4
    c.ppo_eval_every = 2
  return c
