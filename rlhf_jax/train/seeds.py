"""Across-seed summary of finished pipeline runs: the headline numbers with their spread.

A quality claim needs more than one seed. ``summarize(workdirs)`` reads each run's per-round
``round_<r>/eval.json``, and ``write_seed_summary`` writes a markdown table with, per round and
metric, every seed's value, the mean, and a 95% Student-t interval for the mean over seeds::

  python -m rlhf_jax.train.seeds runs/s0 runs/s1 runs/s2 --out docs/results/sentiment_seeds.md

The assistant task's runs add its per-category pass-rate changes, false-premise agreement
and reward-model refusal probes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
from typing import Dict, List, Optional, Sequence, Tuple

from rlhf_jax.data import files
from rlhf_jax.evaluation import t_interval
from rlhf_jax.train.metrics import markdown_table

__all__ = ["HEADLINE", "summarize", "t_interval", "write_seed_summary"]

HEADLINE: Tuple[Tuple[str, str], ...] = (
  ("win_rate", "win rate (gold)"),
  ("independent_win_rate", "win rate (independent judge)"),
  ("kl", "KL (nats)"),
  ("rm_accuracy", "RM accuracy"),
  ("rm_tie_param", "RM tie parameter"),
  ("degenerate_fraction", "degenerate fraction"),
  ("perplexity_ratio", "perplexity ratio"),
  ("gold_reward_mean", "gold reward"),
  # The assistant task's (a key some run lacks is left out of the table):
  ("kl_start", "KL to the starting model (nats)"),
  ("pass_harmful_change", "harmful: pass-rate change"),
  ("pass_benign_change", "benign look-alikes: pass-rate change"),
  ("pass_brevity_change", "brevity: pass-rate change"),
  ("pass_format_change", "format: pass-rate change"),
  ("pass_premise_change", "premise: pass-rate change"),
  ("false_premise_agreement_change", "false-premise agreement change"),
  ("rm_prefers_decline_harmful", "RM prefers the decline, harmful"),
  ("rm_prefers_answer_benign", "RM prefers the answer, look-alikes"),
  ("rm_refusal_discrimination", "RM refusal discrimination (Youden's J)"),
)
"""``(key, label)`` of the per-round values summarised across seeds; a key that some run's
``eval.json`` lacks (another task's) is left out."""


def summarize(workdirs: Sequence[os.PathLike | str]) -> Dict[int, Dict[str, List[float]]]:
  """``{round: {key: [value per seed]}}`` over the rounds every run has finished."""
  per_run = []
  for w in workdirs:
    w = pathlib.Path(w)
    evals = sorted(w.glob("round_*/eval.json"), key=lambda p: int(p.parent.name.split("_")[1]))
    if not evals:
      raise FileNotFoundError(f"{w}: no finished round (round_*/eval.json)")
    per_run.append({int(p.parent.name.split("_")[1]): json.loads(p.read_text()) for p in evals})
  rounds = sorted(set.intersection(*(set(r) for r in per_run)))
  out: Dict[int, Dict[str, List[float]]] = {}
  for r in rounds:
    out[r] = {}
    for key, _ in HEADLINE:
      vals = [run[r].get(key) for run in per_run]
      if all(isinstance(v, (int, float)) and math.isfinite(v) for v in vals):
        out[r][key] = [float(v) for v in vals]
  return out


def write_seed_summary(
  workdirs: Sequence[os.PathLike | str],
  out: os.PathLike | str,
  title: str = "Across seeds",
  note: Optional[str] = None,
) -> str:
  """Markdown table of :data:`HEADLINE` per round: each seed's value, mean [95% t interval]."""
  data = summarize(workdirs)
  names = [pathlib.Path(w).name for w in workdirs]
  lines = [
    f"# {title}",
    "",
    f"{len(workdirs)} runs: "
    + ", ".join(f"`{w}`" for w in workdirs)
    + ". Interval: 95% Student-t for the mean over runs.",
    "",
  ]
  if note:
    lines += [note, ""]
  rows = []
  for r, values in data.items():
    for key, label in HEADLINE:
      if key not in values:
        continue
      mean, lo, hi = t_interval(values[key])
      rows.append(
        [r, label]
        + [f"{v:.3f}" for v in values[key]]
        + [f"{mean:.3f} [{lo:.3f}, {hi:.3f}]", f"{min(values[key]):.3f}"]
      )
  lines += [markdown_table(["round", "metric"] + names + ["mean [95% CI]", "min"], rows), ""]
  text = "\n".join(lines)
  files.atomic_write_text(out, text)
  return text


def _main(argv: Optional[Sequence[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("workdirs", nargs="+", help="finished pipeline workdirs, one per seed")
  parser.add_argument("--out", required=True, help="markdown file to write")
  parser.add_argument("--title", default="Across seeds")
  parser.add_argument("--note", default=None, help="a paragraph under the title")
  args = parser.parse_args(argv)
  print(write_seed_summary(args.workdirs, args.out, args.title, args.note))


if __name__ == "__main__":
  _main()
