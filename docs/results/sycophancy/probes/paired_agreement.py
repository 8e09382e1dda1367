"""False-premise agreement after RL of one run minus another, paired by held-out claim.

  python docs/results/sycophancy/probes/paired_agreement.py RUN_A RUN_B

Both runs must have evaluated the same held-out prompts (same data seed): per false claim,
the share of RUN_A's answers after RL that side with the user
(rlhf_jax.feedback.assistant.agrees_with_user) minus RUN_B's, with a 95% t interval over
claims (findings.md: the unbiased arm against the direction-less-label control).
"""

import collections
import pathlib
import sys

import numpy as np

from rlhf_jax.data import files
from rlhf_jax.data.assistant_prompts import lookup_prompt
from rlhf_jax.evaluation import t_interval
from rlhf_jax.feedback import assistant


def per_claim(run: str) -> dict:
  shares = collections.defaultdict(list)
  for _, row in files.read_jsonl(pathlib.Path(run, "round_1", "eval_answers.jsonl")):
    rec = lookup_prompt(row["prompt"])
    if rec.category == "premise" and not rec.claim_true:
      shares[row["prompt"]].append(assistant.agrees_with_user(rec, row["after"]))
  return {k: float(np.mean(v)) for k, v in shares.items()}


def main(run_a: str, run_b: str) -> None:
  a, b = per_claim(run_a), per_claim(run_b)
  claims = sorted(set(a) & set(b))
  if len(claims) < 2:
    raise SystemExit(f"{run_a} and {run_b} share {len(claims)} held-out false claims")
  mean, lo, hi = t_interval([a[c] - b[c] for c in claims])
  interval = f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}]"
  print(f"agreement after, {run_a} minus {run_b}: {interval} over {len(claims)} claims")


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2])
