"""Judge a finished run's evaluation answers again, with any scorer, without sampling anew.

Every round of a pipeline run keeps the answers it was evaluated on
(``round_<r>/eval_answers.jsonl``: each held-out prompt, the starting model's answer
``before`` and the policy's ``after``). A judge added after the run — a new independent judge,
a stricter scorer — can read them::

  python -m rlhf_jax.train.rejudge runs/a0 runs/a1 --judge assistant_independent \
      --out docs/results/assistant/rejudge.md

For each workdir, round and judge: the policy's win rate over the starting model under that
judge (ties — equal scores, or closer than ``--tie-threshold`` — count half; Wilson 95%
interval counting prompts, as the report's), both mean scores and, for the assistant task's
prompts, the win rate and mean-score change per category. With several workdirs, also the
mean win rate over them with a 95% Student-t interval. Nothing in the workdirs is
written; ``--out`` gets the markdown (and the same numbers as JSON beside it, ``.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
from typing import Any, Dict, List, Sequence

import numpy as np

from rlhf_jax import evaluation
from rlhf_jax.data import files
from rlhf_jax.feedback import scorers
from rlhf_jax.train.metrics import markdown_table

__all__ = ["read_answers", "rejudge_answers", "rejudge", "main"]


def read_answers(path: os.PathLike | str) -> List[Dict[str, Any]]:
  """The rows of an ``eval_answers.jsonl``; a row without ``prompt``, ``before`` and
  ``after`` raises ValueError naming the file and line."""
  rows = []
  for loc, row in files.read_jsonl(path):
    if not isinstance(row, dict):
      raise ValueError(f"{loc}: not a JSON object")
    missing = [k for k in ("prompt", "before", "after") if not isinstance(row.get(k), str)]
    if missing:
      raise ValueError(f"{loc}: no text field {', '.join(missing)}")
    rows.append(row)
  if not rows:
    raise ValueError(f"{path}: no answers")
  return rows


def _categories(prompts: Sequence[str]) -> np.ndarray | None:
  """The assistant task's category of every prompt, or None when some prompt is not one."""
  from rlhf_jax.data import assistant_prompts

  cats = []
  for p in prompts:
    rec = assistant_prompts.find_prompt(p)
    if rec is None:
      return None
    cats.append(rec.category)
  return np.asarray(cats)


def rejudge_answers(
  rows: Sequence[Dict[str, Any]], judge, tie_threshold: float = 0.0
) -> Dict[str, Any]:
  """One judge on one round's answers (scores closer than ``tie_threshold`` tie):
  :meth:`rlhf_jax.evaluation.WinRate.fields`, ``mean_before`` / ``mean_after``, ``n`` and,
  for the assistant task, ``per_category: {category: {win_rate, mean_before, mean_after,
  n}}``."""
  prompts = [r["prompt"] for r in rows]
  clusters = np.asarray([r.get("prompt_index", r["prompt"]) for r in rows])
  before = np.asarray(judge(prompts, [r["before"] for r in rows]), np.float64)
  after = np.asarray(judge(prompts, [r["after"] for r in rows]), np.float64)
  wr = evaluation.win_rate(after, before, tie_eps=tie_threshold, clusters=clusters)
  out: Dict[str, Any] = {
    **wr.fields(),
    "mean_before": float(before.mean()),
    "mean_after": float(after.mean()),
    "n": len(rows),
  }
  cats = _categories(prompts)
  if cats is not None:
    out["per_category"] = {}
    for c in dict.fromkeys(cats.tolist()):
      mine = cats == c
      out["per_category"][c] = {
        "win_rate": evaluation.win_rate(after[mine], before[mine], tie_eps=tie_threshold).rate,
        "mean_before": float(before[mine].mean()),
        "mean_after": float(after[mine].mean()),
        "n": int(mine.sum()),
      }
  return out


def _rounds(workdir: pathlib.Path) -> List[pathlib.Path]:
  found = sorted(
    workdir.glob("round_*/eval_answers.jsonl"), key=lambda p: int(p.parent.name.split("_")[1])
  )
  if not found:
    raise FileNotFoundError(f"{workdir}: no evaluated round (round_*/eval_answers.jsonl)")
  return found


def rejudge(
  workdirs: Sequence[os.PathLike | str], judges: Sequence[str], tie_threshold: float = 0.0
) -> Dict[str, Any]:
  """``{judge: {workdir: {round: rejudge_answers(...)}}}`` over every evaluated round."""
  loaded = {}
  for name in judges:
    try:
      loaded[name] = scorers.get_scorer(name)
    except ValueError as e:
      raise ValueError(f"--judge: {e}") from None
  out: Dict[str, Any] = {name: {} for name in judges}
  for w in workdirs:
    w = pathlib.Path(w)
    for path in _rounds(w):
      rows = read_answers(path)
      r = int(path.parent.name.split("_")[1])
      for name, judge in loaded.items():
        out[name].setdefault(str(w), {})[r] = rejudge_answers(rows, judge, tie_threshold)
  return out


def _markdown(result: Dict[str, Any]) -> str:
  lines = []
  for name, runs in result.items():
    lines.append(f"## {name}\n")
    lines.append(
      "Win rate of the policy over the starting model on the held-out answers (ties count "
      "half; 95% Wilson interval counting prompts); mean scores before and after.\n"
    )
    rows = []
    per_round: Dict[int, List[float]] = {}
    for w, rounds in runs.items():
      for r, m in sorted(rounds.items()):
        per_round.setdefault(r, []).append(m["win_rate"])
        rows.append(
          [
            w,
            r,
            f"{m['win_rate']:.3f} [{m['win_ci_low']:.3f}, {m['win_ci_high']:.3f}]",
            f"{m['wins']}/{m['ties']}/{m['losses']}",
            f"{m['mean_before']:.3f}",
            f"{m['mean_after']:.3f}",
          ]
        )
    lines.append(
      markdown_table(
        ["workdir", "round", "win rate [CI]", "wins/ties/losses", "mean before", "mean after"],
        rows,
      )
    )
    for r, rates in sorted(per_round.items()):
      if len(rates) > 1:
        mean, low, high = evaluation.t_interval(rates)
        lines.append(
          f"\nRound {r}, mean over {len(rates)} runs: {mean:.3f} [{low:.3f}, {high:.3f}] "
          "(95% Student-t)."
        )
    cat_rows = []
    for w, rounds in runs.items():
      for r, m in sorted(rounds.items()):
        for c, v in m.get("per_category", {}).items():
          cat_rows.append(
            [
              w,
              r,
              c,
              v["n"],
              f"{v['win_rate']:.3f}",
              f"{v['mean_before']:.3f}",
              f"{v['mean_after']:.3f}",
              f"{v['mean_after'] - v['mean_before']:+.3f}",
            ]
          )
    if cat_rows:
      lines.append("\nPer category:\n")
      lines.append(
        markdown_table(
          ["workdir", "round", "category", "answers", "win rate", "before", "after", "change"],
          cat_rows,
        )
      )
    lines.append("")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(
    prog="python -m rlhf_jax.train.rejudge", description=__doc__.split("\n\n")[0]
  )
  p.add_argument("workdirs", nargs="+", help="finished pipeline runs")
  p.add_argument(
    "--judge",
    action="append",
    required=True,
    help="a built-in scorer name or 'module:function' (repeatable)",
  )
  p.add_argument(
    "--tie-threshold",
    type=float,
    default=0.0,
    help="scores closer than this tie (default 0: equal scores; the report's gold win rate "
    "uses feedback.tie_threshold)",
  )
  p.add_argument("--out", help="write the markdown here (and the numbers to OUT.json)")
  args = p.parse_args(argv)
  try:
    if not args.tie_threshold >= 0:
      raise ValueError(f"--tie-threshold must be >= 0, got {args.tie_threshold}")
    result = rejudge(args.workdirs, args.judge, args.tie_threshold)
  except (ValueError, FileNotFoundError) as e:
    p.error(str(e))
  text = _markdown(result)
  print(text)
  if args.out:
    files.atomic_write_text(args.out, text + "\n")
    files.atomic_write_text(
      os.path.splitext(args.out)[0] + ".json", json.dumps(result, indent=1) + "\n"
    )
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
