r"""PPO, GRPO, RLOO and DPO side by side on the sentiment task (issue 13, item 4).

Each arm is the algorithm's own config file (configs/sentiment.py:pairwise for PPO: two
responses a pair, the labels DPO learns from; configs/grpo.py, configs/rloo.py,
configs/dpo.py), run for every seed from ONE data directory and ONE base
model (built once in <workdir>/shared, or `base_path`), so the arms differ only in their
policy stage. Before any work the runner checks that they compare fairly: the same label
budget (feedback.pairs_per_round x rounds) and, for the RL arms, the same policy samples per
round (ppo.iterations x ppo.batch_size x group_size: 24 x 64 for PPO, 24 x 16 prompts x 4 for
GRPO and RLOO); DPO draws no rollouts and learns from the same labelled pairs. For one seed
the arms sample the same pairs (the sampling batch is the rollouts of an iteration, 64 for
all), so round 1's labels and reward model are computed once and shared (`share_round1`):
the arms differ in their policy stage alone. One round by default (`--config.rounds=0` runs
the arms' own two; round 2's pairs come from each arm's policy, so it trains a reward model
per arm).

Recorded (2026-12-03, 3 seeds, one round, seed 0's base from runs/s0/base/model): see
docs/results/algorithms/README.md and the README's table. Writes docs/results/algorithms/: README.md (gold reward, gold win rate, KL, reward-model
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
    # PPO with two responses a pair, the labels DPO learns from (not the main job's K-wise)
    f"ppo=configs/sentiment.py:pairwise{'_smoke' if smoke else ''}",
    f"grpo=configs/grpo.py{suffix}",
    f"rloo=configs/rloo.py{suffix}",
    f"dpo=configs/dpo.py{suffix}",
  )
  c.seeds = (0, 1) if smoke else (0, 1, 2)
  c.base_path = ""  # "": pretrain one base model in <workdir>/shared/base for every run
  # One round: 4096 labels from the base policy's pairs and one reward model per seed,
  # shared by the four arms (config.share_round1), then each arm's policy stage. Round 2
  # trains a reward model per arm on its own policy's pairs (about three times the machine
  # time of round 1 here); 0 runs the arms' own rounds (2, the sentiment run's).
  c.rounds = 1
  c.share_round1 = True
  c.out_dir = "" if smoke else "docs/results/algorithms"  # "": <workdir>/results
  c.title = "PPO, GRPO, RLOO and DPO on the sentiment task" + (" (smoke)" if smoke else "")
  return c
