"""How far do the gold checks and the independent judge agree? (docs/assistant_task.md)

  python docs/results/assistant/probes/judge_agreement.py \
      docs/results/assistant/demonstrations.jsonl [SHOW]

Reads the supervised stage's record of the starting model's answers (`answers`: several a
training prompt) and scores every answer with both judges: per prompt kind, the mean scores
and their correlation; over all answers, the correlation; over the pairs of a prompt's first
two answers that both judges decide, how often they pick the same answer. SHOW (default 0)
prints that many answers per category where the scores differ by 0.5 or more.
"""

import collections
import json
import sys

import numpy as np

from rlhf_jax.data.assistant_prompts import lookup_prompt
from rlhf_jax.feedback import assistant as gold
from rlhf_jax.feedback import assistant_independent as ind


def _corr(a, b) -> float:
  return float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else float("nan")


def main(path: str, show: int = 0) -> None:
  rows = [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]
  by_kind = collections.defaultdict(list)
  same = differ = 0
  for row in rows:
    rec = lookup_prompt(row["prompt"])
    scored = [(gold.gold_score(rec, a), ind.independent_score(rec, a), a) for a in row["answers"]]
    by_kind[(rec.category, rec.kind)].extend(scored)
    if len(scored) >= 2:
      dg = np.sign(scored[0][0] - scored[1][0])
      di = np.sign(scored[0][1] - scored[1][1])
      if dg and di:
        same += dg == di
        differ += dg != di
  everything = [s for v in by_kind.values() for s in v]
  g = np.array([s[0] for s in everything])
  i = np.array([s[1] for s in everything])
  print(f"{path}: {len(rows)} prompts, {len(everything)} answers")
  print("| category | kind | answers | gold mean | independent mean | correlation |")
  print("|---|---|---|---|---|---|")
  for (cat, kind), v in sorted(by_kind.items()):
    a, b = np.array([s[0] for s in v]), np.array([s[1] for s in v])
    print(f"| {cat} | {kind} | {len(v)} | {a.mean():.2f} | {b.mean():.2f} | {_corr(a, b):.2f} |")
  print(f"all answers: correlation {_corr(g, i):.2f}")
  print(f"pairs both judges decide: {same + differ}; same choice {same}, opposite {differ}")
  for (cat, kind), v in sorted(by_kind.items()):
    apart = [s for s in v if abs(s[0] - s[1]) >= 0.5][:show]
    for sg, si, text in apart:
      print(f"  [{cat}/{kind}] gold {sg:.2f} independent {si:.2f}: {text[:160]!r}")


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0)
