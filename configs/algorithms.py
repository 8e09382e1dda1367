r"""PPO, GRPO, RLOO and DPO side by side on the sentiment task (issue 13, item 4).

Each arm is the algorithm's own config file (configs/sentiment.py for PPO, configs/grpo.py,
configs/rloo.py, configs/dpo.py), run for every seed from ONE data directory and ONE base
model (built once in <workdir>/shared, or `base_path`), so the arms differ only in their
policy stage. Before any work the runner checks that they compare fairly: the same label
budget (feedback.pairs_per_round x rounds) and, for the RL arms, the same policy samples per
round (ppo.iterations x ppo.batch_size x group_size: 24 x 64 for PPO, 24 x 16 prompts x 4 for
GRPO and RLOO); DPO draws no rollouts and learns from the same labelled pairs.

Writes docs/results/algorithms/: README.md (gold reward, gold win rate, KL, reward-model
accuracy and wall time per algorithm, mean over seeds with 95% Student-t intervals),
algorithms.png (gold reward and gold win rate against KL) and rows.json.

  python -m rlhf_jax.main --config configs/algorithms.py --workdir runs/algorithms
  python -m rlhf_jax.main --config configs/algorithms.py:smoke --workdir runs/algorithms_smoke
  # reuse a finished run's base model:
  python -m rlhf_jax.main --config configs/algorithms.py --workdir runs/algorithms \
      --config.base_path=runs/sentiment/base/model

Run from the repository root (the arm paths are relative to it). Each run is a resumable
pipeline workdir under <workdir>/runs/<arm>_s<seed>; rerunning skips finished runs.
"""

import ml_collections as mlc

VARIANTS = ("default", "smoke")


def get_config(arg=None):
  variant = arg or "default"
  if variant not in VARIANTS:
    raise ValueError(f"configs/algorithms.py: unknown variant {arg!r}; use one of {VARIANTS}")
  smoke = variant == "smoke"
  c = mlc.ConfigDict()
  c.task = "compare"
  suffix = ":smoke" if smoke else ""
  c.arms = (
    f"ppo=configs/sentiment.py{suffix}",
    f"grpo=configs/grpo.py{suffix}",
    f"rloo=configs/rloo.py{suffix}",
    f"dpo=configs/dpo.py{suffix}",
  )
  c.seeds = (0, 1) if smoke else (0, 1, 2)
  c.base_path = ""  # "": pretrain one base model in <workdir>/shared/base for every run
  c.rounds = 1 if smoke else 0  # 0: the arms' own rounds (equal: all are the sentiment run's)
  c.out_dir = "" if smoke else "docs/results/algorithms"  # "": <workdir>/results
  c.title = "PPO, GRPO, RLOO and DPO on the sentiment task" + (" (smoke)" if smoke else "")
  return c
